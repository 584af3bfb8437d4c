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

from ._batch import Answer, FeedRequest, Fork, GradientFeed, Join, Request, Rollback, feed, feed_branches, gradient
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
    reward_reads_states: bool = False
    """The reward is a head on the policy's own transformer (:meth:`RewardModel.reads_policy_states`)."""


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
    states: torch.Tensor | None = None
    """Under a fused reward: the policy's final hidden states of the candidate's fed tokens, from the segment
    start (float32 [fed, hidden]; the last token is fed only when entropy ended the candidate or the reward
    asked for its state)."""


@dataclass
class SegmentPlan:
    """Everything fixed for one segment: where it starts, where a nudge goes, what the policy said there."""

    start: int  # absolute length of the context
    offset: int
    start_logits: torch.Tensor
    context_states: torch.Tensor | None = None
    """Under a fused reward: the policy's final hidden states of the context (float32 [start, hidden])."""
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
    stopped_early: bool = False
    """``early_exit_gain`` ended it: the best proposal's predicted gain was positive but below the threshold."""


_Steps = Generator[Request, Answer, Refinement]


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
        # Re-tokenised joins may change the context's ids, so its states would no longer match them.
        self.fused = cfg.fused_reward and parts.reward_reads_states and not cfg.retokenize_between_segments
        self.fused_gradients = self.fused and parts.reward.differentiates_states
        self.gradient_work = _GradientWork()
        """The gradients taken through the policy's cache (the session counts its own calls)."""

    def refine(self, plan: SegmentPlan, ids: list[int], steps: int) -> _Steps:
        """Draft, then up to ``steps - 1`` nudged refinements; every candidate lands in ``plan.candidates``."""
        if self.cfg.refinement == "parallel":
            return (yield from self._refine_parallel(plan, ids, steps))
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
            grad_at = plan.offset if wants_proposal and self.reward.differentiable else None
            score = yield from self._score(plan, cand, ids, grad_at)
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
            if self.cfg.early_exit_gain is not None and cand.proposal.gain < self.cfg.early_exit_gain:
                return Refinement(best_index, stopped_early=True)
            forced = cand.proposal.token_id
        return Refinement(best_index)

    def _refine_parallel(self, plan: SegmentPlan, ids: list[int], steps: int) -> _Steps:
        """Draft; one gradient from it ranks the top-k; the best ``steps - 1`` alternatives predicted to gain are
        decoded together from the insertion position as branch rows over the shared prefix; the best-rewarded
        candidate is kept (the draft on ties)."""
        draft = yield from self._candidate(plan, ids, None)
        plan.cached = draft.tokens if draft.end == "entropy" else draft.tokens[:-1]
        plan.candidates.append(draft)
        if self.guard.broken:
            return Refinement(0, fallback=True)
        wants_proposal = steps > 1 and len(draft.tokens) > plan.offset
        grad_at = plan.offset if wants_proposal and self.reward.differentiable else None
        score = yield from self._score(plan, draft, ids, grad_at)
        if score is None:
            return Refinement(0, fallback=True)
        if not wants_proposal:
            return Refinement(0, stopped_on_repeat=len(draft.tokens) <= plan.offset and steps > 1)
        if not self._steerable_insertion(plan, ids, draft):
            return Refinement(0)
        draft.proposal = self._propose(plan, ids, draft, score)
        if draft.proposal is None:
            return Refinement(0, fallback=True)
        cfg = self.cfg
        tokens = draft.proposal.alternatives(
            steps - 1,
            min_gain=cfg.early_exit_gain,
            selection=cfg.nudge_selection,
            temperature=cfg.nudge_temperature,
            generator=self.generator,
        )
        if not tokens:
            improves = any(g > 0.0 for g in draft.proposal.gains)
            return Refinement(0, stopped_on_repeat=not improves, stopped_early=improves)
        branches = yield from self._decode_branches(plan, ids, tokens)
        plan.candidates.extend(b.candidate for b in branches)
        if not (yield from self._score_branches(plan, ids, [b.candidate for b in branches])):
            yield Join()
            return Refinement(0, fallback=True)
        best_index, best_reward = 0, score.reward
        for index, cand in enumerate(plan.candidates[1:], start=1):
            if cand.reward is not None and finite(cand.reward) and cand.reward > best_reward:
                best_index, best_reward = index, cand.reward
        if best_index == 0:
            yield Join()
        else:  # the winning branch's row becomes the sequence's own: its cache holds what it fed
            winner = branches[best_index - 1]
            yield Join(keep=best_index - 1)
            plan.cached = winner.candidate.tokens[: winner.fed]
        return Refinement(best_index)

    def _decode_branches(
        self, plan: SegmentPlan, ids: list[int], tokens: list[int]
    ) -> Generator[Request, Answer, list[_Branch]]:
        """Greedy continuations with each of ``tokens`` forced at the insertion position, decoded in lockstep
        as branch rows (one policy pass per step for all of them, one token per branch); each ends as a
        refinement would. The rows stay until the caller joins them."""
        assert plan.insertion_logits is not None
        draft = plan.candidates[0]
        head_states = draft.states[: plan.offset] if draft.states is not None else None
        yield Fork(len(tokens), plan.start + plan.offset)
        head = list(draft.tokens[: plan.offset])
        branches = [_Branch(list(head), plan.insertion_logits, token, fed=len(head)) for token in tokens]
        for branch in branches:
            self._branch_step(plan, ids, branch, head_states)
        while any(b.feed for b in branches):
            requests = [FeedRequest(b.feed, hidden=self.fused) if b.feed else None for b in branches]
            outs = yield from feed_branches(requests)
            for branch, request, out in zip(branches, requests, outs, strict=True):
                if request is None:
                    continue
                assert out is not None
                if request.states is not None:
                    branch.states.append(request.states)
                branch.fed += 1
                branch.feed = []
                if branch.done is None:
                    branch.logits = out[0]
                    self._branch_step(plan, ids, branch, head_states)
        if self.fused:
            head_rows = [head_states] if head_states is not None else []
            for branch in branches:
                branch.candidate.states = torch.cat([*head_rows, *branch.states])
        return branches

    def _branch_step(
        self, plan: SegmentPlan, ids: list[int], branch: _Branch, head_states: torch.Tensor | None
    ) -> None:
        """Decide the branch's next token: it ends the branch, or is fed next pass (``_candidate``'s rules)."""
        tok, end, entropy = self._decide(plan, ids, branch.gen, branch.logits, branch.forced)
        if end == "entropy":
            branch.done = Candidate(branch.gen, "entropy", branch.logits, entropy, branch.forced)
            return
        branch.gen.append(tok)
        stops = self.cfg.stop_sequences
        if end is None and stops and self.parts.text.hits_stop(ids[-8:] + branch.gen, stops):
            end = "stop_sequence"
        if end is None:
            # No speculation here: a branch's guesses from the draft are rarely right (99 of 1186 on the bench),
            # and the widest row sets every row's width in a batched pass.
            branch.feed = [tok]
            return
        branch.done = Candidate(branch.gen, end, None, None, branch.forced)
        if self.fused and not self.guard.broken:  # the reward may need the last token's state: ending fed none
            assert plan.context_states is not None
            fed = torch.cat([plan.context_states, *([head_states] if head_states is not None else []), *branch.states])
            if self.guard.attempt(self.reward.reward_from_states, [*ids, *branch.gen], fed) is None:
                branch.feed = [tok]

    def _score_branches(
        self, plan: SegmentPlan, ids: list[int], branches: list[Candidate]
    ) -> Generator[Request, Answer, bool]:
        """Each branch's reward (recorded on it): read from its states under a fused reward, else one batched
        call over the branches on the context's cached prefix. False when the reward failed (fallback)."""
        if self.guard.broken:
            return False
        if self.fused:
            for cand in branches:
                if (yield from self._score(plan, cand, ids, None)) is None and self.guard.broken:
                    return False
            return True
        scores = self.guard.attempt(self.session.score_continuation_segments, ids, [c.tokens for c in branches])
        if scores is None:
            return False
        for cand, score in zip(branches, scores, strict=True):
            cand.reward, cand.reward_terms = score.reward, score.terms
            if not finite(score.reward) and self.cfg.nonfinite_reward == "raise":
                raise RewardError(
                    f"reward model {self.reward.name!r} returned a non-finite reward ({score.reward}) for a candidate"
                )
        return True

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

    def _score(
        self, plan: SegmentPlan, cand: Candidate, ids: list[int], grad_at: int | None
    ) -> Generator[Request, Answer, SegmentScore | None]:
        """The candidate's reward (and gradient at ``grad_at``), recorded on it; None when it is unusable. Under
        a fused reward, a reward without gradient is read from the candidate's states."""
        if grad_at is None and self.fused:
            score = yield from self._score_from_states(plan, cand, ids)
        elif grad_at is not None and self.fused_gradients:
            score = yield from self._gradient_from_states(plan, cand, ids, grad_at)
        else:
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

    def _gradient_from_states(
        self, plan: SegmentPlan, cand: Candidate, ids: list[int], grad_at: int
    ) -> Generator[Request, Answer, SegmentScore | None]:
        """The candidate's score with its gradient at ``grad_at``, taken through the policy's own cache: one pass
        with gradients over the candidate from the insertion position (shared with other sequences waiting on
        one); the states before that position were read while decoding. None: the reward failed (fallback)."""
        assert plan.context_states is not None and cand.states is not None
        full = [*ids, *cand.tokens]
        before = torch.cat([plan.context_states, cand.states[:grad_at]])
        reward = self.reward

        def objective(states: torch.Tensor) -> torch.Tensor:
            return reward.terms_from_states(full, torch.cat([before, states]))

        request = yield from gradient(GradientFeed(plan.start + grad_at, cand.tokens[grad_at:], objective))
        self.gradient_work.add(request)
        return self.guard.attempt(_gradient_answer, reward, request)

    def _score_from_states(
        self, plan: SegmentPlan, cand: Candidate, ids: list[int]
    ) -> Generator[Request, Answer, SegmentScore | None]:
        """The fused score of the candidate (its reward and any terms); when it needs the state of a token the
        candidate did not feed (its last, when EOS, a stop sequence or the budget ended it), that token is fed
        first. None: the reward failed (fallback)."""
        assert plan.context_states is not None and cand.states is not None
        full = [*ids, *cand.tokens]
        value = self.guard.attempt(self.reward.score_from_states, full, torch.cat([plan.context_states, cand.states]))
        if value is None and not self.guard.broken:
            missing = cand.tokens[cand.states.shape[0] :]
            # Only the candidate the policy's own row holds can be fed on (branches feed their last token
            # themselves).
            assert plan.cached == cand.tokens[: len(plan.cached)], "a fused reward fed a candidate the row lacks"
            if not missing:
                raise RewardError(f"reward model {self.reward.name!r} read no reward from a whole sequence's states")
            request = FeedRequest(missing, hidden=True)
            yield from feed(request)
            assert request.states is not None
            cand.states = torch.cat([cand.states, request.states])
            plan.cached = list(cand.tokens)  # the policy's cache now holds the whole candidate
            states = torch.cat([plan.context_states, cand.states])
            value = self.guard.attempt(self.reward.score_from_states, full, states)
            if value is None and not self.guard.broken:
                raise RewardError(f"reward model {self.reward.name!r} read no reward from a whole sequence's states")
        return value

    def _candidate(
        self, plan: SegmentPlan, ids: list[int], forced: int | None
    ) -> Generator[Request, Answer, Candidate]:
        """Greedy continuation from the segment start (or, for refinements, from the insertion position
        with ``forced`` there) until EOS, the budget, a stop sequence or high entropy ends it."""
        stops = self.cfg.stop_sequences
        states: list[torch.Tensor] = []
        if forced is None:
            gen: list[int] = []
            logits = plan.start_logits
        else:
            assert plan.insertion_logits is not None
            gen = list(plan.candidates[0].tokens[: plan.offset])
            logits = plan.insertion_logits
            head_states = plan.candidates[0].states
            if head_states is not None:
                states.append(head_states[: plan.offset])

        def done(end: EndReason, tail: torch.Tensor | None, entropy: float | None) -> Candidate:
            fed = None
            if self.fused:
                assert plan.context_states is not None
                fed = torch.cat(states) if states else plan.context_states[:0]
            return Candidate(gen, end, tail, entropy, forced, states=fed)

        previous = plan.candidates
        tail_text_ids = ids[-8:]
        while True:
            tok, end, entropy = self._decide(plan, ids, gen, logits, forced)
            if end == "entropy":
                return done("entropy", logits, entropy)
            gen.append(tok)
            if end is None and stops and self.parts.text.hits_stop(tail_text_ids + gen, stops):
                end = "stop_sequence"
            if end is not None:
                return done(end, None, None)
            draft = _speculation(gen, previous, plan, self.budget_end) if self.cfg.speculative_refinement else []
            request = FeedRequest([tok, *draft], all_logits=bool(draft), hidden=self.fused)
            out = yield from feed(request)
            accepted, stopped = self._accept_guess(plan, ids, gen, out, draft, forced)
            logits = out[accepted]
            if request.states is not None:
                states.append(request.states[: 1 + accepted])
            if accepted < len(draft):
                yield Rollback(plan.start + len(gen))
            if stopped:
                return done("stop_sequence", None, None)

    def _accept_guess(
        self, plan: SegmentPlan, ids: list[int], gen: list[int], out: torch.Tensor, guess: list[int], forced: int | None
    ) -> tuple[int, bool]:
        """Append to ``gen`` the longest run of the speculated ``guess`` that greedy decoding agrees with
        (``out[j]``: the logits before ``guess[j]``, from the pass that fed the token before it and the guess).
        Returns how many were accepted and whether a stop sequence ended the run."""
        stops = self.cfg.stop_sequences
        accepted = 0
        while accepted < len(guess):
            nxt, nxt_end, _ = self._decide(plan, ids, gen, out[accepted], forced)
            if nxt_end is not None or nxt != guess[accepted]:
                break
            gen.append(nxt)
            accepted += 1
            if stops and self.parts.text.hits_stop(ids[-8:] + gen, stops):
                return accepted, True
        return accepted, False

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


@dataclass
class _GradientWork:
    """Gradients taken through the policy's cache, for the usage and timing report."""

    calls: int = 0
    tokens: int = 0
    seconds: float = 0.0
    backward_seconds: float = 0.0

    def add(self, request: GradientFeed) -> None:
        self.calls += 1
        self.tokens += len(request.tokens)
        self.seconds += request.seconds
        self.backward_seconds += request.backward_seconds


def _gradient_answer(reward: RewardModel, request: GradientFeed) -> SegmentScore:
    """The score a gradient request was answered with (its objective's error raised, for the guard)."""
    if request.error is not None:
        raise request.error
    assert request.values is not None and request.gradients is not None
    return reward.score_from_term_gradients(request.values, request.gradients)


@dataclass
class _Branch:
    """One parallel refinement while it is decoded: its tokens so far, the logits it continues from, the nudge
    token forced at the insertion position, what to feed next pass and, once it ended, its candidate."""

    gen: list[int]
    logits: torch.Tensor
    forced: int
    fed: int = 0
    """Tokens of ``gen`` the branch row's cache holds."""
    feed: list[int] = field(default_factory=list)
    states: list[torch.Tensor] = field(default_factory=list)
    done: Candidate | None = None

    @property
    def candidate(self) -> Candidate:
        assert self.done is not None, "the branch has not ended"
        return self.done


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
