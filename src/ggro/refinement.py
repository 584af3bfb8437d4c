"""One segment of GGRO: the greedy draft, then nudged refinements (score -> propose -> regenerate), and which
candidate is kept.

Candidates are generated as coroutines for the scheduler (:mod:`ggro.scheduler`): they yield policy forward
passes (``FeedRequest``) and roll-backs to the insertion position, never a re-prefill. Earlier candidates of the
segment serve as free speculative drafts for the later ones.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

import torch

from ._batch import FeedRequest, Rollback
from .config import GGROConfig
from .constraints import ConstraintState, GrammarVocabulary
from .detokenize import Detokenizer
from .nudging import NudgeProposal, choose_nudge, propose_nudge
from .rewards.base import RewardError, RewardModel, RewardSession, SegmentScore
from .rewards.guard import RewardGuard
from .segments import token_entropy
from .structure import Position

__all__ = [
    "Candidate",
    "DecoderParts",
    "EndReason",
    "Refinement",
    "SegmentPlan",
    "SegmentRefiner",
    "allowed_entropy",
    "finite",
]

EndReason = Literal["entropy", "eos", "length", "stop_sequence"]
_MAX_SPECULATION = 16
# A position-aligned guess (no n-gram anchor) is right less often; a short one wastes less when wrong.
_MAX_ALIGNED_SPECULATION = 4


@dataclass(frozen=True)
class DecoderParts:
    """What one sequence's decoding reads from its decoder: the models' fixed facts, never per-call state."""

    reward: RewardModel
    eos_token_ids: frozenset[int]
    text: Detokenizer
    context_window: int | None
    grammar: GrammarVocabulary | None = None
    """The grammar engine's view of the tokenizer; built by the decoder for a constrained call."""


@dataclass
class Candidate:
    tokens: list[int]
    end: EndReason
    tail_logits: torch.Tensor | None  # logits after the last token, when entropy ended the candidate
    end_entropy: float | None
    nudge_token: int | None
    reward: float | None = None
    reward_terms: dict[str, float] | None = None
    proposal: NudgeProposal | None = None


@dataclass
class SegmentPlan:
    """Everything fixed for one segment: where it starts, where a nudge goes, what the policy said there."""

    start: int  # absolute length of the context
    offset: int
    start_logits: torch.Tensor
    insertion_logits: torch.Tensor | None = None
    candidates: list[Candidate] = field(default_factory=list)
    cached: list[int] = field(default_factory=list)
    """Tokens after ``start`` that the policy cache holds (those of the last generated candidate)."""
    region: Position | None = None
    """Under a constraint, the text run or free-text value the insertion position lies in (None: syntax)."""
    landed_in: Literal["text", "value", "syntax"] | None = None
    """Where a nudge at the insertion position lands, once checked (None: not checked; no constraint: text)."""


class Refinement(NamedTuple):
    """How a segment's refinement ended: the kept candidate, and why it stopped early (``fallback``: the reward
    was unusable, non-finite or failed under reward_failure='fallback')."""

    kept_index: int
    stopped_on_repeat: bool = False
    fallback: bool = False


_Steps = Generator[FeedRequest | Rollback, torch.Tensor | None, Refinement]


class SegmentRefiner:
    """Refines the segments of one sequence: it holds that sequence's reward session, failure guard and
    sampling generator, which every segment shares."""

    def __init__(
        self,
        parts: DecoderParts,
        cfg: GGROConfig,
        budget_end: int,
        session: RewardSession,
        generator: torch.Generator | None,
        guard: RewardGuard,
        response_start: int = 0,
        constraint: ConstraintState | None = None,
    ) -> None:
        self.parts = parts
        self.response_start = response_start
        self.constraint = constraint
        self.reward = parts.reward
        self.cfg = cfg
        self.budget_end = budget_end
        self.session = session
        self.generator = generator
        self.guard = guard

    def refine(self, plan: SegmentPlan, ids: list[int], steps: int) -> _Steps:
        """Draft, then up to ``steps - 1`` nudged refinements; every candidate lands in ``plan.candidates``."""
        best_index, best_reward = 0, float("-inf")
        forced: int | None = None
        for r in range(steps):
            if r > 0:
                yield Rollback(plan.start + plan.offset)
            cand = yield from self._candidate(plan, ids, forced)
            # A candidate's last token is fed only when entropy ended it (its logits open the next segment).
            plan.cached = cand.tokens if cand.end == "entropy" else cand.tokens[:-1]
            if any(c.tokens == cand.tokens for c in plan.candidates):
                return Refinement(best_index, stopped_on_repeat=True)
            plan.candidates.append(cand)
            if self.guard.broken:  # the reward failed earlier in this response: the draft stands, unscored
                return Refinement(best_index, fallback=True)
            wants_proposal = r < steps - 1 and len(cand.tokens) > plan.offset
            score = self._score(cand, ids, plan.offset if wants_proposal and self.reward.differentiable else None)
            if score is None:
                return Refinement(best_index, fallback=True)
            if score.reward > best_reward:
                best_index, best_reward = len(plan.candidates) - 1, score.reward
            if not wants_proposal:
                # Too short to nudge before the last step: the release regenerates this same draft, then stops
                # on repeat.
                return Refinement(best_index, stopped_on_repeat=len(cand.tokens) <= plan.offset and r < steps - 1)
            if not self._steerable_insertion(plan, ids, cand):
                return Refinement(best_index)  # structure there: no nudge may land on it
            cand.proposal = self._propose(plan, ids, cand, score)
            if cand.proposal is None:
                return Refinement(best_index, fallback=True)
            if cand.proposal.token_id == cand.tokens[plan.offset]:
                return Refinement(best_index, stopped_on_repeat=True)  # forcing it reproduces this candidate
            forced = cand.proposal.token_id
        return Refinement(best_index)

    def _steerable_insertion(self, plan: SegmentPlan, ids: list[int], cand: Candidate) -> bool:
        """Whether a nudge may go at the insertion position (always, unless a constraint's structure is there
        and ``steer_structure`` is off); records where it lies on the plan."""
        if self.constraint is None:
            return True
        if plan.landed_in is None:
            prefix = [*ids[self.response_start :], *cand.tokens[: plan.offset]]
            region = self.constraint.steerable(prefix)
            # The draft's own token must belong there too: replacing a call's opening tag or a string's
            # closing quote with text would land the nudge on structure.
            if region is not None and self.constraint.stays_in_region(prefix, region, cand.tokens[plan.offset]):
                plan.region = region
            plan.landed_in = plan.region.kind if plan.region is not None else "syntax"
        return plan.region is not None or self.cfg.steer_structure

    def _score(self, cand: Candidate, ids: list[int], grad_at: int | None) -> SegmentScore | None:
        """The candidate's reward (and gradient at ``grad_at``), recorded on it; None when it is unusable."""
        score = self.guard.attempt(self.session.score_segment, ids, cand.tokens, grad_at)
        if score is None:  # the reward failed under reward_failure='fallback'
            return None
        cand.reward = score.reward
        cand.reward_terms = score.terms
        if not finite(score.reward):
            if self.cfg.nonfinite_reward == "raise":
                raise RewardError(
                    f"reward model {self.reward.name!r} returned a non-finite reward ({score.reward}) for a candidate"
                )
            return None  # a broken score gives no usable gradient either: the best finite candidate stands
        return score

    def _propose(self, plan: SegmentPlan, ids: list[int], cand: Candidate, score: SegmentScore) -> NudgeProposal | None:
        """The token to force at the insertion position next, among the policy's top k there: from the reward
        gradient, or (no gradient) by scoring each variant exactly. None: no usable proposal."""
        cfg = self.cfg
        assert plan.insertion_logits is not None
        top_k = torch.topk(plan.insertion_logits, min(cfg.nudge_top_k, plan.insertion_logits.shape[-1])).indices
        current = cand.tokens[plan.offset]
        if self.constraint is not None:
            top_k = self._grammar_candidates(plan, ids, cand, top_k)
        if self.reward.differentiable:
            if score.gradient is None:
                raise RewardError(f"reward model {self.reward.name!r} returned no gradient for a finite reward")
            if not torch.isfinite(score.gradient).all():
                if cfg.nonfinite_reward == "raise":
                    raise RewardError(f"reward model {self.reward.name!r} returned a non-finite gradient")
                return None
            return propose_nudge(
                self.reward,
                score.gradient,
                top_k,
                current,
                baseline=cfg.nudge_score_baseline,
                selection=cfg.nudge_selection,
                temperature=cfg.nudge_temperature,
                generator=self.generator,
            )
        head, tail = cand.tokens[: plan.offset], cand.tokens[plan.offset + 1 :]
        scores = self.guard.attempt(self.session.score_many, [[*ids, *head, v, *tail] for v in top_k.tolist()])
        if scores is None:
            return None
        return choose_nudge(
            torch.tensor(scores, dtype=torch.float32),
            top_k,
            current,
            score.reward,
            baseline=cfg.nudge_score_baseline,
            selection=cfg.nudge_selection,
            temperature=cfg.nudge_temperature,
            generator=self.generator,
        )

    def _grammar_candidates(
        self, plan: SegmentPlan, ids: list[int], cand: Candidate, top_k: torch.Tensor
    ) -> torch.Tensor:
        """The top-k the grammar allows at the insertion position (its logits are masked there) and, unless
        ``steer_structure``, that keep the response in the same text run or string value."""
        assert plan.insertion_logits is not None and self.constraint is not None
        current = cand.tokens[plan.offset]
        allowed = [int(v) for v in top_k.tolist() if torch.isfinite(plan.insertion_logits[v]) or v == current]
        if plan.region is not None and not self.cfg.steer_structure:
            prefix = [*ids[self.response_start :], *cand.tokens[: plan.offset]]
            region = plan.region
            allowed = [v for v in allowed if v == current or self.constraint.stays_in_region(prefix, region, v)]
        return torch.tensor(allowed, dtype=top_k.dtype)

    def _candidate(
        self, plan: SegmentPlan, ids: list[int], forced: int | None
    ) -> Generator[FeedRequest | Rollback, torch.Tensor | None, Candidate]:
        """Greedy continuation from the segment start (or, for refinements, from the insertion position
        with ``forced`` there) until EOS, the budget, a stop sequence or high entropy ends it."""
        stops = self.cfg.stop_sequences
        if forced is None:
            gen: list[int] = []
            logits = plan.start_logits
        else:
            assert plan.insertion_logits is not None
            gen = list(plan.candidates[0].tokens[: plan.offset])
            logits = plan.insertion_logits
        previous = plan.candidates
        tail_text_ids = ids[-8:]
        while True:
            tok, end, entropy = self._decide(plan, ids, gen, logits, forced)
            if end == "entropy":
                return Candidate(gen, "entropy", logits, entropy, forced)
            gen.append(tok)
            if end is None and stops and self.parts.text.hits_stop(tail_text_ids + gen, stops):
                end = "stop_sequence"
            if end is not None:
                return Candidate(gen, end, None, None, forced)
            draft = _speculation(gen, previous, plan, self.budget_end) if self.cfg.speculative_refinement else []
            out = yield FeedRequest([tok, *draft], all_logits=bool(draft))
            assert out is not None
            logits = out[0]
            accepted = 0
            while accepted < len(draft):
                nxt, nxt_end, _ = self._decide(plan, ids, gen, logits, forced)
                if nxt_end is not None or nxt != draft[accepted]:
                    break
                gen.append(nxt)
                accepted += 1
                logits = out[accepted]
                if stops and self.parts.text.hits_stop(tail_text_ids + gen, stops):
                    break
            if accepted < len(draft):
                yield Rollback(plan.start + len(gen))
            if stops and accepted and self.parts.text.hits_stop(tail_text_ids + gen, stops):
                return Candidate(gen, "stop_sequence", None, None, forced)

    def _decide(
        self, plan: SegmentPlan, ids: list[int], gen: list[int], logits: torch.Tensor, forced: int | None
    ) -> tuple[int, EndReason | None, float | None]:
        """The next token and whether it ends the candidate (the release's order: EOS, budget, entropy).
        Under a constraint the logits are masked first, and near the budget's end the token is the next one
        of the structure's closing; a segment then never ends on structure it may not steer."""
        cfg = self.cfg
        n = len(gen)
        constraint = self.constraint
        closing = False
        if constraint is not None:
            constraint.sync([*ids[self.response_start :], *gen])
            logits = constraint.mask(logits)
        if n == plan.offset and plan.insertion_logits is None and forced is None:
            plan.insertion_logits = logits
        tok = forced if (forced is not None and n == plan.offset) else int(torch.argmax(logits))
        if constraint is not None:
            chosen = constraint.within_budget(tok, self.budget_end - (plan.start + n))
            closing, tok = chosen != tok, chosen
        if tok in self.parts.eos_token_ids:
            return tok, "eos", None
        if plan.start + n + 1 >= self.budget_end:
            return tok, "length", None
        if n + 1 >= cfg.min_segment_tokens and not closing:
            floor = cfg.entropy_probability_floor
            entropy = token_entropy(logits, floor) if constraint is None else allowed_entropy(logits, floor)
            if entropy >= cfg.entropy_threshold and self._may_end_segment(ids, gen):
                return tok, "entropy", entropy
        return tok, None, None

    def _may_end_segment(self, ids: list[int], gen: list[int]) -> bool:
        """A segment ends on high entropy only where its successor may nudge (always, unconstrained)."""
        if self.constraint is None or self.cfg.steer_structure:
            return True
        return self.constraint.steerable([*ids[self.response_start :], *gen]) is not None


def _speculation(gen: list[int], previous: list[Candidate], plan: SegmentPlan, budget_end: int) -> list[int]:
    """Guess the continuation from earlier candidates of this segment: the latest place where an
    earlier candidate has our last two tokens (or last one), else the same position in the last one."""
    room = budget_end - (plan.start + len(gen)) - 1
    limit = min(_MAX_SPECULATION, room)
    if limit <= 0 or not previous:
        return []
    for width in (2, 1):
        if len(gen) < width:
            continue
        key = gen[-width:]
        for cand in reversed(previous):
            toks = cand.tokens
            for j in range(len(toks) - 1, width - 2, -1):
                if toks[j - width + 1 : j + 1] == key and j + 1 < len(toks):
                    return toks[j + 1 : j + 1 + limit]
    aligned = previous[-1].tokens[len(gen) : len(gen) + min(limit, _MAX_ALIGNED_SPECULATION)]
    return aligned


def allowed_entropy(logits: torch.Tensor, probability_floor: float) -> float:
    """Entropy of the next-token distribution over the tokens a constraint allows (its masked logits are
    -inf); without a mask, :func:`~ggro.segments.token_entropy` itself."""
    allowed = torch.isfinite(logits)
    if bool(allowed.all()):
        return token_entropy(logits, probability_floor)
    return token_entropy(logits[allowed], probability_floor)


def finite(x: float) -> bool:
    return x == x and x not in (float("inf"), float("-inf"))
