"""A reward that is a linear head on the mean of a causal backbone's final hidden states over the response.

This is the shape of the embedded default reward (the SmolLM2-135M backbone with a head trained on
human harm scores): mean pooling over the response tokens holds up on partial responses, which GGRO
scores all the time, far better than last-token pooling. The response starts after the last occurrence
of ``response_marker`` (the chat template's assistant header); end-of-turn tokens are not pooled, as the
head never saw them in training.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ._session import CausalPrefixSession
from .base import RewardContext, RewardError, RewardSession, TokenEmbeddingReward

__all__ = ["MeanPooledHeadReward", "response_start"]


def response_start(ids: Sequence[int], marker: Sequence[int]) -> int:
    """Index after the last occurrence of ``marker`` in ``ids`` (0 when absent or empty)."""
    n = len(marker)
    if n == 0:
        return 0
    first = marker[0]
    for i in range(len(ids) - n, -1, -1):
        if ids[i] == first and list(ids[i : i + n]) == list(marker):
            return i + n
    return 0


class MeanPooledHeadReward(TokenEmbeddingReward):
    """``reward = weight · mean(h_t for response tokens t) + bias`` on a decoder-only backbone.

    ``backbone`` is a base transformer returning ``last_hidden_state`` (e.g. ``LlamaModel``; a causal LM's
    ``get_decoder()`` shares the policy's weights). Every call is causal, so the per-sequence session
    keeps the prefix KV cache and the prefix's hidden states: a candidate costs a pass over itself only.
    """

    def __init__(
        self,
        backbone: Any,
        weight: torch.Tensor,
        bias: float | torch.Tensor,
        *,
        response_marker: Sequence[int] = (),
        excluded_ids: Sequence[int] = (),
        name: str = "mean-pooled-head",
    ):
        hidden = backbone.get_input_embeddings().weight.shape[1]
        weight = torch.as_tensor(weight, dtype=torch.float32).reshape(-1)
        if weight.shape[0] != hidden:
            raise ValueError(
                f"reward head: weight has {weight.shape[0]} values but the backbone's hidden size is {hidden}"
            )
        self.backbone = backbone.eval()
        for p in self.backbone.parameters():
            p.requires_grad_(False)
        self._embedding = backbone.get_input_embeddings()
        self.weight = weight.to(self.device)
        self.bias = float(torch.as_tensor(bias, dtype=torch.float32).reshape(-1)[0])
        self.response_marker = [int(x) for x in response_marker]
        self.excluded_ids = frozenset(int(x) for x in excluded_ids)
        self.name = name

    def pooling_mask(self, ids: Sequence[int]) -> torch.Tensor:
        """[len(ids)] float32: 1 where a position is pooled (response token, not end-of-turn)."""
        start = response_start(ids, self.response_marker)
        mask = [1.0 if i >= start and t not in self.excluded_ids else 0.0 for i, t in enumerate(ids)]
        return torch.tensor(mask, dtype=torch.float32, device=self.device)

    def head(self, pooled_sum: torch.Tensor, count: float) -> torch.Tensor:
        """Reward [1] from the sum of pooled hidden states and their count (bias alone when none)."""
        mean = pooled_sum / max(count, 1.0)
        return (mean @ self.weight + self.bias).reshape(1)

    def open_session(self, context: RewardContext | None = None) -> RewardSession:
        return _PooledSession(self)

    def reads_policy_states(self, policy: Any) -> bool:
        # The head reads the final hidden states of its backbone; when that backbone is the policy's own
        # transformer, the policy computed them already while decoding.
        get_decoder = getattr(policy, "get_decoder", None)
        return callable(get_decoder) and get_decoder() is self.backbone

    def reward_from_states(self, ids: Sequence[int], states: torch.Tensor) -> float | None:
        pool = self.pooling_mask(ids)
        given = states.shape[0]
        if bool(pool[given:].any()):
            return None
        return float(self.head(pool[:given] @ states.to(self.weight.device).float(), float(pool.sum()))[0])

    differentiates_states = True

    def terms_from_states(self, ids: Sequence[int], states: torch.Tensor) -> torch.Tensor:
        pool = self.pooling_mask(ids)
        if states.shape[0] != pool.shape[0]:
            raise RewardError(f"reward model {self.name!r}: {states.shape[0]} states for {pool.shape[0]} tokens")
        return self.head(pool @ states.to(self.weight.device).float(), float(pool.sum()))

    def _hidden(self, **kwargs: Any) -> torch.Tensor:
        try:
            out = self.backbone(**kwargs)
        except Exception as exc:
            raise RewardError(f"reward model {self.name!r} failed: {exc}") from exc
        return out.last_hidden_state.float()

    def score(self, sequences: Sequence[Sequence[int]]) -> list[float]:
        """Batched rewards of whole sequences (left padding + attention mask), no gradients."""
        rows = [list(s) for s in sequences]
        if not rows or any(not r for r in rows):
            raise ValueError("score: every sequence needs at least one token")
        width = max(len(r) for r in rows)
        ids = torch.tensor([[0] * (width - len(r)) + r for r in rows], device=self.device)
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        with torch.no_grad():
            hidden = self._hidden(input_ids=ids, attention_mask=mask, position_ids=positions)
        rewards = []
        for b, r in enumerate(rows):
            pool = self.pooling_mask(r)
            h = hidden[b, width - len(r) :]
            rewards.append(float(self.head(pool @ h, float(pool.sum()))[0]))
        return rewards

    def embedding_gradients(self, ids: Sequence[int], positions: Sequence[int]) -> tuple[float, torch.Tensor]:
        with torch.no_grad():
            embeds = self.embed(ids)
        embeds.requires_grad_(True)
        with torch.enable_grad():
            hidden = self._hidden(inputs_embeds=embeds)[0]
            pool = self.pooling_mask(ids)
            reward = self.head(pool @ hidden, float(pool.sum()))[0]
            (grad,) = torch.autograd.grad(reward, embeds)
        return float(reward.detach()), grad[0, list(positions)].float()


class _PooledSession(CausalPrefixSession):
    """Keeps, beside the prefix KV cache, the prefix's final hidden states (float32) for pooling."""

    def __init__(self, rm: MeanPooledHeadReward):
        super().__init__(name=rm.name, model=rm.backbone, embed=rm.embed, use_prefix_cache=True)
        self.rm = rm
        self.prefix_hidden = torch.zeros(0, rm.weight.shape[0], device=rm.device)

    def score_batch(self, sequences: Sequence[Sequence[int]]) -> list[float]:
        return self.rm.score(sequences)

    def _call(self, embeds: torch.Tensor, cache: Any, past: int, **extra: Any) -> Any:
        return self._call_model(embeds, cache, past, **extra)

    def _prefix_extended(self, output: Any, start: int, count: int) -> None:
        fed = output.last_hidden_state[0, :count].detach().float()
        self.prefix_hidden = torch.cat([self.prefix_hidden[:start], fed])

    def _prefix_cropped(self, length: int) -> None:
        self.prefix_hidden = self.prefix_hidden[:length]

    def _continuation_rewards(
        self, output: Any, prefix_ids: Sequence[int], continuations: list[list[int]]
    ) -> torch.Tensor | None:
        hidden = output.last_hidden_state.float()  # [n, width, hidden]; padding rows are never pooled
        prefix = self.prefix_hidden[: len(prefix_ids)]
        rewards = []
        for row, continuation in zip(hidden, continuations, strict=True):
            pool = self.rm.pooling_mask([*prefix_ids, *continuation])
            total = pool[len(prefix_ids) :] @ row[: len(continuation)] + pool[: len(prefix_ids)] @ prefix
            rewards.append(self.rm.head(total, float(pool.sum())))
        return torch.cat(rewards)

    def _reward(self, output: Any, ids: Sequence[int], start: int) -> torch.Tensor:
        fed = output.last_hidden_state[0].float()
        pool = self.rm.pooling_mask(ids)
        total = pool[start:] @ fed
        if start:
            total = total + pool[:start] @ self.prefix_hidden[:start]
        return self.rm.head(total, float(pool.sum()))
