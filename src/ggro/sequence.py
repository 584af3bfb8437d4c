"""One sequence's segment loop, as a coroutine for the scheduler: prefill the prompt, then per segment refine
it, accept the kept candidate (resyncing the policy cache to the new context), stream its text and report it,
until the response is done; then assemble the result.

The policy's KV cache of prompt + accepted text is reused by every refinement (roll back to the insertion
position, never re-prefill); a reward model keeps its own prefix cache per sequence (see ``rewards.hf``), unless
it is fused (a head on the policy's transformer: rewards from the policy's states, gradients through its cache).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator
from typing import Literal, NamedTuple

import torch

from ._batch import Answer, FeedRequest, Request, Rollback, feed
from .config import GGROConfig
from .constraints import Constraint
from .detokenize import StreamedText
from .events import GGROEvent, GGROResult, NudgeEvent, SegmentEvent, Timing, Usage
from .refinement import Candidate, DecoderParts, Refinement, SegmentPlan, SegmentRefiner, allowed_entropy, finite
from .rewards.base import RewardContext
from .rewards.guard import RewardGuard
from .scheduler import PassCount, SequenceCoroutine
from .segments import common_prefix_length

__all__ = ["run_sequence"]

_Feeds = Generator[Request, Answer, torch.Tensor]


class _Accepted(NamedTuple):
    """The kept candidate appended: the new context, whether the response is done, and whether ``new_ids`` is
    the context plus the kept tokens as generated (``unchanged``: retokenising changed nothing)."""

    kept: Candidate
    new_ids: list[int]
    done: bool
    unchanged: bool


def run_sequence(
    parts: DecoderParts,
    index: int,
    prompt_ids: list[int],
    context: RewardContext,
    cfg: GGROConfig,
    emit: Callable[[GGROEvent], None],
    count: PassCount,
    started: float,
    constraint: Constraint | None = None,
) -> SequenceCoroutine[GGROResult]:
    """Decode prompt ``index`` of a call; ``count`` is filled by the scheduler, ``started`` is the call's start;
    ``constraint``: the grammar the response must follow."""
    seq = _Sequence(parts, index, prompt_ids, context, cfg, started, constraint)
    next_logits = yield from seq.open()
    while True:
        plan = SegmentPlan(
            start=len(seq.ids), offset=seq.next_offset(), start_logits=next_logits, context_states=seq.states
        )
        failed_before = seq.guard.broken
        outcome = yield from seq.refiner.refine(plan, seq.ids, seq.steps())
        segment_error = str(seq.guard.error) if seq.guard.broken and not failed_before else None
        accepted = seq.accept(plan.candidates[outcome.kept_index])
        if not accepted.done:
            next_logits = yield from seq.resync(plan, accepted)
            seq.extend_states(plan, accepted.kept)
        seq.ids = accepted.new_ids
        for event in seq.report(plan, outcome, accepted, segment_error):
            emit(event)
        if accepted.done:
            seq.score_final(accepted)
            return seq.result(count)


class _Sequence:
    """The state of one sequence between segments, and the steps of its loop."""

    def __init__(
        self,
        parts: DecoderParts,
        index: int,
        prompt_ids: list[int],
        context: RewardContext,
        cfg: GGROConfig,
        started: float,
        constraint: Constraint | None = None,
    ) -> None:
        self.parts = parts
        self.index = index
        self.prompt_ids = prompt_ids
        self.cfg = cfg
        self.started = started
        self.guard = RewardGuard(parts.reward.name, cfg.reward_timeout, fallback=cfg.reward_failure == "fallback")
        self.session = parts.reward.open_session(context)
        generator = torch.Generator().manual_seed(cfg.seed) if cfg.seed is not None else None
        self.response_start = len(prompt_ids)
        self.budget_end = self.response_start + cfg.max_new_tokens
        if parts.context_window is not None:
            self.budget_end = min(self.budget_end, parts.context_window)
        grammar = None
        if constraint is not None:
            assert parts.grammar is not None, "a constrained call needs the decoder's grammar vocabulary"
            grammar = constraint.start(parts.grammar)
        self.constraint = grammar
        self.refiner = SegmentRefiner(
            parts, cfg, self.budget_end, self.session, generator, self.guard, self.response_start, grammar
        )
        self.ids = list(prompt_ids)
        self.segments: list[SegmentEvent] = []
        self.nudges: list[NudgeEvent] = []
        self.nudges_kept = 0
        self.first_segment_time: float | None = None
        self.finish: Literal["stop", "length", "stop_sequence"] = "length"
        self.streamed = StreamedText()
        self.final_reward: float | None = None
        self.states: torch.Tensor | None = None
        """Under a fused reward: the policy's final hidden states of ``ids``."""

    # ------------------------------------------------------------------ the policy
    def open(self) -> _Feeds:
        """Prefill the prompt; returns the logits the first segment starts from."""
        if self.cfg.retokenize_between_segments:
            self.ids = self.parts.text.retokenize(self.ids)
        request = FeedRequest(self.ids, hidden=self.refiner.fused)
        out = yield from feed(request)
        self.states = request.states
        return out[-1]

    def extend_states(self, plan: SegmentPlan, kept: Candidate) -> None:
        """The context's states once ``kept`` is appended (its states were read while it was decoded)."""
        if self.refiner.fused:
            assert plan.context_states is not None and kept.states is not None
            assert kept.states.shape[0] == len(kept.tokens), "a continued segment has every token fed"
            self.states = torch.cat([plan.context_states, kept.states])

    def next_offset(self) -> int:
        return self.cfg.first_insertion_offset if not self.segments else 0

    def steps(self) -> int:
        """Candidates the next segment may try: one once ``max_nudges`` nudges were kept."""
        allow_nudges = self.cfg.max_nudges is None or self.nudges_kept < self.cfg.max_nudges
        return self.cfg.refinement_steps if allow_nudges else 1

    def accept(self, kept: Candidate) -> _Accepted:
        """The context with the kept candidate appended, and whether the response is done with it."""
        cfg = self.cfg
        finished = kept.end in ("eos", "stop_sequence")
        new_ids = self.ids + kept.tokens
        if cfg.retokenize_between_segments:
            new_ids = self.parts.text.retokenize(new_ids)
        body = new_ids[:-1] if new_ids and new_ids[-1] in self.parts.eos_token_ids else new_ids
        if finished:
            self.finish = "stop_sequence" if kept.end == "stop_sequence" else "stop"
        done = finished or len(body) - self.response_start >= cfg.max_new_tokens or len(body) >= self.budget_end
        return _Accepted(kept, new_ids, done, new_ids == self.ids + kept.tokens)

    def resync(self, plan: SegmentPlan, accepted: _Accepted) -> _Feeds:
        """Make the policy cache hold exactly the new context, feeding only what differs; returns the logits
        the next segment starts from."""
        kept, new_ids = accepted.kept, accepted.new_ids
        fed = plan.start + len(plan.cached)
        common = min(common_prefix_length(self.ids + plan.cached, new_ids), fed)
        next_logits: torch.Tensor | None = None
        if common < len(new_ids) or kept.tail_logits is None or not accepted.unchanged:
            common = min(common, len(new_ids) - 1)  # re-feed at least one token to get its logits
            yield Rollback(common)
            out = yield from feed(FeedRequest(new_ids[common:]))
            next_logits = out[-1]
        if accepted.unchanged and kept.tail_logits is not None:
            next_logits = kept.tail_logits  # the logits the candidate itself ended on
        assert next_logits is not None
        return next_logits

    # ------------------------------------------------------------------ what the caller sees
    def report(
        self, plan: SegmentPlan, outcome: Refinement, accepted: _Accepted, segment_error: str | None
    ) -> list[GGROEvent]:
        """The accepted segment's events (its nudge, if any, first), recorded for the result."""
        if self.first_segment_time is None:
            self.first_segment_time = time.perf_counter() - self.started
        text = self.parts.text.response_text(self.ids[self.response_start :], self.cfg.stop_sequences)
        delta = self.streamed.advance(text, self.cfg.stop_sequences, final=accepted.done)
        events: list[GGROEvent] = []
        nudge = self._nudge_event(plan, outcome.kept_index)
        if nudge is not None:
            self.nudges.append(nudge)
            self.nudges_kept += int(nudge.kept)
            events.append(nudge)
        segment = self._segment_event(plan, outcome, accepted, delta, segment_error)
        self.segments.append(segment)
        events.append(segment)
        return events

    def _segment_event(
        self, plan: SegmentPlan, outcome: Refinement, accepted: _Accepted, delta: str, error: str | None
    ) -> SegmentEvent:
        kept_index = outcome.kept_index
        candidates = plan.candidates
        return SegmentEvent(
            sequence_index=self.index,
            segment_index=len(self.segments),
            start_position=plan.start - self.response_start,
            token_ids=list(accepted.kept.tokens),
            text=delta,
            insertion_position=(plan.start - self.response_start + plan.offset)
            if plan.insertion_logits is not None
            else None,
            entropy_at_end=accepted.kept.end_entropy,
            candidate_rewards=[c.reward if c.reward is not None and finite(c.reward) else None for c in candidates],
            candidate_reward_terms=[c.reward_terms or {} for c in candidates]
            if any(c.reward_terms for c in candidates)
            else [],
            kept_refinement=kept_index,
            nudged=kept_index > 0,
            stopped_on_repeat=outcome.stopped_on_repeat,
            reward_fallback=outcome.fallback,
            stopped_early=outcome.stopped_early,
            reward_error=error,
            finished=accepted.done,
        )

    def _nudge_event(self, plan: SegmentPlan, kept_index: int) -> NudgeEvent | None:
        if len(plan.candidates) < 2 or plan.insertion_logits is None:
            return None
        draft = plan.candidates[0]
        shown = plan.candidates[kept_index] if kept_index > 0 else plan.candidates[1]
        draft_tok = draft.tokens[plan.offset]
        nudge_tok = shown.tokens[plan.offset]
        kept_reward = plan.candidates[kept_index].reward
        return NudgeEvent(
            sequence_index=self.index,
            segment_index=len(self.segments),
            insertion_position=plan.start - self.response_start + plan.offset,
            entropy=allowed_entropy(plan.insertion_logits, self.cfg.entropy_probability_floor),
            draft_token_id=draft_tok,
            draft_token=self.parts.text.decode([draft_tok]),
            nudge_token_id=nudge_tok,
            nudge_token=self.parts.text.decode([nudge_tok]),
            draft_reward=_or_nan(draft.reward),
            kept_reward=_or_nan(kept_reward),
            refinements_used=len(plan.candidates),
            kept_refinement=kept_index,
            kept=kept_index > 0,
            landed_in=plan.landed_in or "text",
        )

    # ------------------------------------------------------------------ the end
    def score_final(self, accepted: _Accepted) -> None:
        """Reward of the finished response. Without quirks it is the kept candidate's own reward; None once the
        reward has failed (under reward_failure='fallback')."""
        if self.guard.broken:
            return
        ids = self.ids
        scored = ids
        if self.cfg.final_reward_before_eos:
            while len(scored) > 1 and scored[-1] in self.parts.eos_token_ids:
                scored = scored[:-1]
        kept = accepted.kept
        if accepted.unchanged and scored is ids and kept.reward is not None:
            self.final_reward = kept.reward if finite(kept.reward) else None
            return
        value = self.guard.attempt(self.session.score_sequence, scored)
        self.final_reward = value if value is not None and finite(value) else None

    def result(self, count: PassCount) -> GGROResult:
        work = self.refiner.gradient_work
        backward = self.session.backward_seconds
        if work.calls:
            backward = (backward or 0.0) + work.backward_seconds
        response_ids = self.ids[self.response_start :]
        if response_ids and response_ids[-1] in self.parts.eos_token_ids:
            response_ids = response_ids[:-1]
        if self.finish == "stop_sequence":
            response_ids = self.parts.text.cut_ids_at_stop(response_ids, self.streamed.text)
        return GGROResult(
            text=self.streamed.text,
            token_ids=response_ids,
            prompt_token_ids=list(self.prompt_ids),
            finish_reason=self.finish,
            segments=self.segments,
            nudges=self.nudges,
            final_reward=self.final_reward,
            usage=Usage(
                prompt_tokens=len(self.prompt_ids),
                completion_tokens=len(response_ids),
                policy_forward_passes=count.forward_passes,
                policy_tokens_processed=count.tokens_processed,
                reward_calls=self.session.calls + work.calls,
                reward_tokens_processed=self.session.tokens_processed + work.tokens,
            ),
            timing=Timing(
                seconds=time.perf_counter() - self.started,
                first_segment_seconds=self.first_segment_time,
                constraint_seconds=self.constraint.seconds if self.constraint is not None else None,
                policy_seconds=count.seconds,
                reward_seconds=self.guard.seconds + work.seconds,
                reward_backward_seconds=backward,
            ),
            reward_error=str(self.guard.error) if self.guard.error is not None else None,
        )


def _or_nan(x: float | None) -> float:
    return float("nan") if x is None else x
