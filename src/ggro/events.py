"""What a GGRO run reports: one event per accepted segment, one per nudge, and the final result."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["GGROEvent", "GGROResult", "Listener", "NudgeEvent", "SegmentEvent", "Timing", "Usage"]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class NudgeEvent(_Frozen):
    """A segment in which the reward gradient proposed and tried at least one nudge token.

    ``kept`` says whether a nudged candidate won over the unnudged draft (the paper's "nudge").
    Positions count response tokens from 0.
    """

    kind: Literal["nudge"] = "nudge"
    sequence_index: int = Field(description="Index of the prompt in the batch.")
    segment_index: int
    insertion_position: int = Field(description="Response-token position where the nudge token was forced.")
    entropy: float = Field(description="Policy next-token entropy (nats) at the insertion position.")
    draft_token_id: int
    draft_token: str
    nudge_token_id: int = Field(
        description="Token at the insertion position of the kept candidate, or of the "
        "first nudged candidate when the draft was kept."
    )
    nudge_token: str
    draft_reward: float
    kept_reward: float
    refinements_used: int = Field(description="Candidates evaluated in this segment, the draft included.")
    kept_refinement: int
    kept: bool
    landed_in: Literal["text", "value", "syntax"] = Field(
        default="text",
        description="Where the nudge landed: plain text, a free-text string value of a structured output (a tool "
        "call's argument, a JSON field), or, only with steer_structure=True, its syntax (keys, names, enums, "
        "numbers, punctuation).",
    )


class SegmentEvent(_Frozen):
    """A segment that was accepted into the response."""

    kind: Literal["segment"] = "segment"
    sequence_index: int
    segment_index: int
    start_position: int = Field(description="Response-token position of the segment's first token.")
    token_ids: list[int]
    text: str
    insertion_position: int | None = Field(
        description="Where a nudge would be forced; None when the segment was too short to hold it."
    )
    entropy_at_end: float | None = Field(
        description="Entropy that ended the segment; None when EOS, a stop sequence or the budget ended it."
    )
    candidate_rewards: list[float | None] = Field(description="Reward of each candidate (None: not finite).")
    candidate_reward_terms: list[dict[str, float]] = Field(
        default_factory=list,
        description="For rewards made of terms (CompositeReward): each candidate's term values by name; "
        "empty for single rewards.",
    )
    kept_refinement: int
    nudged: bool
    stopped_on_repeat: bool
    reward_fallback: bool = Field(
        False,
        description="The reward could not rank this segment's candidates (a non-finite reward, or the reward model "
        "failed or timed out earlier or here under reward_failure='fallback'): the best candidate with a usable "
        "reward stands, else the draft.",
    )
    stopped_early: bool = Field(
        False,
        description="early_exit_gain ended the refinement: the best proposal's predicted gain was positive but "
        "below the threshold.",
    )
    reward_error: str | None = Field(
        None, description="The reward model's failure in this segment (reward_failure='fallback'), else None."
    )
    finished: bool = Field(description="The response ends with this segment.")


GGROEvent = NudgeEvent | SegmentEvent
Listener = Callable[[GGROEvent], None]


class Usage(_Frozen):
    prompt_tokens: int
    completion_tokens: int
    policy_forward_passes: int = Field(description="Forward calls on the policy (a batched call counts once).")
    policy_tokens_processed: int = Field(description="Tokens fed through the policy, prefill included.")
    reward_calls: int = Field(description="Reward-model forward passes (with or without gradient).")
    reward_tokens_processed: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class Timing(_Frozen):
    seconds: float = Field(
        description="Wall-clock seconds from the call's start until this response was done (in a batched call, "
        "the whole batch's time for the last response to finish)."
    )
    first_segment_seconds: float | None = Field(description="Seconds until the first segment was accepted.")
    constraint_seconds: float | None = Field(
        default=None,
        description="Seconds spent in the grammar (masks, keeping the structure closable) under a constraint.",
    )
    policy_seconds: float | None = Field(
        default=None,
        description="Seconds of the policy forward passes this response took part in (in a batched call, "
        "each pass counts whole for every response it fed).",
    )
    reward_seconds: float | None = Field(
        default=None, description="Seconds in the reward model's calls for this response, backward passes included."
    )
    reward_backward_seconds: float | None = Field(
        default=None,
        description="Of reward_seconds, the seconds of the backward passes that gave nudge gradients (None when "
        "the reward does not report them).",
    )


class GGROResult(_Frozen):
    """One decoded response."""

    text: str
    token_ids: list[int] = Field(description="Response token ids (an end-of-turn token is not included).")
    prompt_token_ids: list[int]
    finish_reason: Literal["stop", "length", "stop_sequence"]
    segments: list[SegmentEvent]
    nudges: list[NudgeEvent] = Field(description="One event per segment where a nudge was tried; see `kept`.")
    final_reward: float | None
    usage: Usage
    timing: Timing
    reward_error: str | None = Field(
        None,
        description="Under reward_failure='fallback': the reward model's failure that stopped steering this "
        "response (the text before it was steered, the rest is greedy); None when the reward never failed.",
    )

    @property
    def num_nudges(self) -> int:
        """Segments whose kept candidate is a nudged one (the paper's count)."""
        return sum(1 for n in self.nudges if n.kept)

    def summary(self) -> dict[str, Any]:
        """What steering did to this response, as plain JSON values (for framework metadata and logs)."""
        return {
            "segments": len(self.segments),
            "nudges_tried": len(self.nudges),
            "nudges_kept": self.num_nudges,
            "reward_fallbacks": sum(1 for s in self.segments if s.reward_fallback),
            "reward_error": self.reward_error,
            "final_reward": self.final_reward,
            "policy_forward_passes": self.usage.policy_forward_passes,
            "reward_calls": self.usage.reward_calls,
            "seconds": round(self.timing.seconds, 4),
        }

    @property
    def events(self) -> list[GGROEvent]:
        """Segment and nudge events in the order they were delivered."""
        out: list[GGROEvent] = []
        by_segment = {n.segment_index: n for n in self.nudges}
        for seg in self.segments:
            if seg.segment_index in by_segment:
                out.append(by_segment[seg.segment_index])
            out.append(seg)
        return out
