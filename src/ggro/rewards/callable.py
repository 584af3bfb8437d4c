"""Any scorer as a reward: a rule, a classifier, an HTTP API — ``fn(prompts, responses) -> scores``.

Such a reward has no gradient, so nudges are proposed by scoring each of the policy's top-k tokens at the
insertion position exactly (the candidate with that token swapped in, the rest unchanged), in one call.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from .base import RewardContext, RewardError, RewardModel, RewardSession, SegmentScore

__all__ = ["CallableReward", "TextScorer"]

TextScorer = Callable[[list[str], list[str]], Sequence[float]]
"""``(prompts, responses) -> one score per pair``; higher is better."""


class CallableReward(RewardModel):
    """Wraps ``fn(prompts, responses) -> scores`` (plain text, higher is better)."""

    differentiable = False

    def __init__(self, fn: TextScorer, *, name: str | None = None, tokenizer: Any = None):
        if not callable(fn):
            raise TypeError(f"CallableReward: fn must be callable, got {type(fn).__name__}")
        self.fn = fn
        self.name = name or str(getattr(fn, "__name__", type(fn).__name__))
        self.tokenizer = tokenizer
        """Only for :meth:`score` outside a decoder (sessions get the policy's tokenizer from the decoder)."""

    def __call__(self, prompts: list[str], responses: list[str]) -> list[float]:
        """Call ``fn`` and check what it returned: one finite-or-not float per pair (NaN/inf are passed
        on; the decoder's ``nonfinite_reward`` policy decides what they mean)."""
        try:
            raw = self.fn(prompts, responses)
        except Exception as exc:
            raise RewardError(f"reward {self.name!r} failed: {exc}") from exc
        try:
            scores = [float(x) for x in raw]
        except (TypeError, ValueError) as exc:
            raise RewardError(
                f"reward {self.name!r}: expected a sequence of {len(prompts)} numbers, got {type(raw).__name__}"
            ) from exc
        if len(scores) != len(prompts):
            raise RewardError(f"reward {self.name!r}: expected {len(prompts)} scores, got {len(scores)}")
        return scores

    def open_session(self, context: RewardContext | None = None) -> RewardSession:
        if context is None:
            if self.tokenizer is None:
                raise RewardError(f"reward {self.name!r}: a text reward needs a tokenizer (or a decoder's context)")
            context = RewardContext(prompt_ids=(), prompt_text="", tokenizer=self.tokenizer)
        return _CallableSession(self, context)

    def score(self, sequences: Sequence[Sequence[int]]) -> list[float]:
        """Scores of whole token sequences decoded as responses to an empty prompt (needs ``tokenizer``)."""
        return self.open_session().score_many(sequences)

    def embedding_gradients(self, ids: Sequence[int], positions: Sequence[int]) -> tuple[float, torch.Tensor]:
        raise RewardError(f"reward {self.name!r} is a plain callable: it has no gradient")

    def candidate_scores(self, gradient: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
        raise RewardError(f"reward {self.name!r} is a plain callable: it has no gradient")


class _CallableSession(RewardSession):
    def __init__(self, rm: CallableReward, context: RewardContext):
        self.rm = rm
        self.context = context
        self.calls = 0
        self.tokens_processed = 0

    def score_many(self, sequences: Sequence[Sequence[int]]) -> list[float]:
        if not sequences:
            return []
        self.calls += 1
        self.tokens_processed += sum(len(s) for s in sequences)
        responses = [self.context.response_text(s) for s in sequences]
        return self.rm([self.context.prompt_text] * len(responses), responses)

    def score_segment(
        self, prefix_ids: Sequence[int], segment_ids: Sequence[int], grad_position: int | None
    ) -> SegmentScore:
        (reward,) = self.score_many([[*prefix_ids, *segment_ids]])
        return SegmentScore(reward=reward, gradient=None)

    def score_sequence(self, ids: Sequence[int]) -> float:
        (reward,) = self.score_many([ids])
        return reward
