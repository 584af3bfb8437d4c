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
from typing import Any

import torch

__all__ = ["RewardContext", "RewardError", "RewardModel", "RewardSession", "SegmentScore", "TokenEmbeddingReward"]


class RewardError(RuntimeError):
    """The reward model failed or returned something unusable (wrong shape, raised, ...)."""


@dataclass(frozen=True)
class RewardContext:
    """What the decoder tells a session about the sequence it will score."""

    prompt_ids: tuple[int, ...]
    """The prompt as the policy saw it (chat template applied), in policy token ids."""
    prompt_text: str
    """The user's prompt as plain text (the last user message for a chat), for text-level rewards."""
    tokenizer: Any
    """The policy's tokenizer: text-level rewards decode responses with it."""

    def response_text(self, ids: Sequence[int]) -> str:
        """The response part of a full sequence ``ids`` (prompt + response) as text."""
        n = len(self.prompt_ids)
        response = list(ids[n:]) if list(ids[:n]) == list(self.prompt_ids) else list(ids)
        return str(self.tokenizer.decode(response, skip_special_tokens=True))


@dataclass(frozen=True)
class SegmentScore:
    reward: float
    """Reward of prefix + segment (may be non-finite; the decoder decides what that means)."""
    gradient: torch.Tensor | None
    """dr/de at the requested position, float32 [hidden], or None when not requested. The decoder treats
    it as opaque: only the same reward's :meth:`RewardModel.candidate_scores` reads it (a composite may
    concatenate its terms' gradients, a cross-tokenizer bridge may keep its own embedding space)."""
    terms: dict[str, float] | None = None
    """For rewards made of several terms (e.g. a weighted sum): each term's value, by name."""


class RewardSession(ABC):
    """Per-sequence scoring state (e.g. a KV cache of the accepted prefix). Used by one sequence only."""

    calls: int = 0
    tokens_processed: int = 0
    backward_seconds: float | None = None
    """Seconds of the backward passes that gave gradients (None: this session does not measure them)."""

    @abstractmethod
    def score_segment(
        self, prefix_ids: Sequence[int], segment_ids: Sequence[int], grad_position: int | None
    ) -> SegmentScore:
        """Reward of ``prefix_ids + segment_ids`` (pooled at its last token), with dr/de at
        ``grad_position`` (an index into ``segment_ids``) when it is not None."""

    @abstractmethod
    def score_sequence(self, ids: Sequence[int]) -> float:
        """Reward of a whole sequence, no gradient."""

    def score_many(self, sequences: Sequence[Sequence[int]]) -> list[float]:
        """Rewards of several whole sequences of this session's prompt, no gradient (the exact,
        gradient-free nudge proposal scores one variant per top-k token this way)."""
        return [self.score_sequence(s) for s in sequences]

    def score_continuations(self, prefix_ids: Sequence[int], continuations: Sequence[Sequence[int]]) -> list[float]:
        """The reward of ``prefix_ids + c`` for each continuation ``c``, no gradient: Best-of-N's samples after
        one prompt, or ARGS's candidate next tokens after one context. Sessions that keep a prefix cache
        score them in one batched pass over the continuations only."""
        return [self.score_sequence([*prefix_ids, *c]) for c in continuations]

    def score_continuation_segments(
        self, prefix_ids: Sequence[int], continuations: Sequence[Sequence[int]]
    ) -> list[SegmentScore]:
        """:meth:`score_continuations` as scores without gradient; a reward made of terms also reports each
        term's value (parallel refinement scores its branches this way)."""
        return [SegmentScore(reward=v, gradient=None) for v in self.score_continuations(prefix_ids, continuations)]


class RewardModel(ABC):
    """A reward over the policy's token sequences.

    ``differentiable`` rewards give dr/de at the insertion position and nudges are proposed by the
    first-order score E[v]·dr/de; the others (plain callables, APIs) are asked for the exact reward of
    each top-k variant instead (:meth:`RewardSession.score_many`).
    """

    name: str = "reward"
    differentiable: bool = True

    @abstractmethod
    def open_session(self, context: RewardContext | None = None) -> RewardSession:
        """Fresh per-sequence state (``context``: the prompt, when the caller knows it)."""

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

    def reads_policy_states(self, policy: Any) -> bool:
        """Whether this reward is a function of ``policy``'s own final hidden states (a head on the policy's
        transformer). The decoder then reads candidates' rewards with :meth:`reward_from_states` from the states
        it computed while decoding them, instead of a second forward pass."""
        return False

    def reward_from_states(self, ids: Sequence[int], states: torch.Tensor) -> float | None:
        """The reward of ``ids`` from the policy's final hidden states of its first ``len(states)`` positions
        (float32 [n, hidden], n <= len(ids)); None when it needs a state it was not given (the decoder then
        feeds the rest and asks again). Only called when :meth:`reads_policy_states` said yes."""
        raise NotImplementedError(f"reward model {self.name!r} does not read the policy's states")

    def score_from_states(self, ids: Sequence[int], states: torch.Tensor) -> SegmentScore | None:
        """:meth:`reward_from_states` as a :class:`SegmentScore` (no gradient); a reward made of terms adds each
        term's value."""
        value = self.reward_from_states(ids, states)
        return None if value is None else SegmentScore(reward=value, gradient=None)

    differentiates_states: bool = False
    """Whether :meth:`terms_from_states` gives the reward as a differentiable function of the policy's states:
    the decoder then takes nudge gradients through the policy's own cache (one pass over the candidate from the
    insertion position) instead of the reward session's."""

    def terms_from_states(self, ids: Sequence[int], states: torch.Tensor) -> torch.Tensor:
        """The reward's terms [T] (one for a plain reward) of ``ids`` from the policy's final hidden states of
        every position (float32 [len(ids), hidden]), differentiably. Only called when
        :attr:`differentiates_states`."""
        raise NotImplementedError(f"reward model {self.name!r} does not differentiate the policy's states")

    def score_from_term_gradients(self, values: Sequence[float], gradients: torch.Tensor) -> SegmentScore:
        """The score from :meth:`terms_from_states`' values and each one's gradient with respect to the embedding
        at the insertion position (float32 [T, hidden])."""
        if len(values) != 1 or gradients.shape[0] != 1:
            raise RewardError(f"reward model {self.name!r}: expected one term, got {len(values)}")
        return SegmentScore(reward=float(values[0]), gradient=gradients[0])


class TokenEmbeddingReward(RewardModel):
    """A reward that reads token ids through its input-embedding matrix (``_embedding``, set by the subclass):
    it embeds ids, scores candidates as E[v]·gradient, and refuses a policy vocabulary its matrix lacks."""

    _embedding: Any  # the model's input-embedding module (get_input_embeddings())
    _reads: str = "its embedding"
    _vocabulary_hint: str = "the exact gradient path needs the policy's tokenizer"

    @property
    def device(self) -> torch.device:
        device: torch.device = self._embedding.weight.device
        return device

    def embed(self, ids: Sequence[int]) -> torch.Tensor:
        """Input embeddings [1, len(ids), hidden] of ``ids``."""
        embeds: torch.Tensor = self._embedding(torch.tensor([list(ids)], device=self.device))
        return embeds

    def candidate_scores(self, gradient: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
        rows = self._embedding.weight[token_ids.to(self.device)].float()
        return rows @ gradient.to(rows.device).float()

    def check_vocabulary(self, policy_vocab_size: int) -> None:
        rows = self._embedding.weight.shape[0]
        if rows < policy_vocab_size:
            raise ValueError(
                f"reward model {self.name!r}: {self._reads} has {rows} rows but the policy's vocabulary has "
                f"{policy_vocab_size} tokens; {self._vocabulary_hint}"
            )
