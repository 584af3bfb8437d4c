"""The reward-model interface the decoder consumes.

A reward model scores token sequences and, for gradient-guided nudging, returns dr/de: the gradient of
the reward with respect to the input embedding at one chosen position. The decoder turns that into
candidate scores with :meth:`RewardModel.candidate_scores` (E[v] . dr/de for a few token ids v), so no
[length x vocab] tensor is ever built.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = ["RewardError", "RewardModel", "RewardSession", "SegmentScore"]


class RewardError(RuntimeError):
    """The reward model failed or returned something unusable (wrong shape, raised, ...)."""


@dataclass(frozen=True)
class SegmentScore:
    reward: float
    """Reward of prefix + segment (may be non-finite; the decoder decides what that means)."""
    gradient: torch.Tensor | None
    """dr/de at the requested position, float32 [hidden], or None when not requested."""


class RewardSession(ABC):
    """Per-sequence scoring state (e.g. a KV cache of the accepted prefix). Used by one sequence only."""

    calls: int = 0
    tokens_processed: int = 0

    @abstractmethod
    def score_segment(
        self, prefix_ids: Sequence[int], segment_ids: Sequence[int], grad_position: int | None
    ) -> SegmentScore:
        """Reward of ``prefix_ids + segment_ids`` (pooled at its last token), with dr/de at
        ``grad_position`` (an index into ``segment_ids``) when it is not None."""

    @abstractmethod
    def score_sequence(self, ids: Sequence[int]) -> float:
        """Reward of a whole sequence, no gradient."""


class RewardModel(ABC):
    """A differentiable reward that shares the policy's vocabulary."""

    name: str = "reward"

    @abstractmethod
    def open_session(self) -> RewardSession:
        """Fresh per-sequence state."""

    @abstractmethod
    def score(self, sequences: Sequence[Sequence[int]]) -> list[float]:
        """Rewards of whole token sequences, scored as one batch without gradients."""

    @abstractmethod
    def embedding_gradients(self, ids: Sequence[int], positions: Sequence[int]) -> tuple[float, torch.Tensor]:
        """Reward of ``ids`` and dr/de at each of ``positions``: float32 [len(positions), hidden]."""

    @abstractmethod
    def candidate_scores(self, gradient: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
        """First-order reward sensitivity E[v] . gradient for each v in ``token_ids`` (float32)."""

    def check_vocabulary(self, policy_vocab_size: int) -> None:  # noqa: B027 - optional hook
        """Raise ValueError when the reward cannot read the policy's token ids."""
