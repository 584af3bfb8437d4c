"""Any Hugging Face ``AutoModelForSequenceClassification`` reward model with the policy's vocabulary.

This is the exact gradient path: the policy's token ids index the RM's embedding matrix directly. For
causal (decoder-only) RMs the KV cache of the accepted prefix is kept per sequence, so scoring a
candidate costs a forward + backward over the segment only.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForSequenceClassification, PreTrainedModel

from ._session import CausalPrefixSession
from .base import RewardContext, RewardError, RewardSession, TokenEmbeddingReward

__all__ = ["HFRewardModel"]


def _drop_inputs_embeds_pooling_warning(record: logging.LogRecord) -> bool:
    # We always feed inputs_embeds (for the gradient) unpadded or left-padded and want the last position,
    # which is exactly what transformers warns it will pool; the warning would only alarm users.
    return "will not detect padding tokens in `inputs_embeds`" not in record.getMessage()


logging.getLogger("transformers.modeling_layers").addFilter(_drop_inputs_embeds_pooling_warning)


class HFRewardModel(TokenEmbeddingReward):
    """Wraps a sequence-classification model with one output (the reward)."""

    def __init__(self, model: PreTrainedModel, *, name: str | None = None, use_prefix_cache: bool | None = None):
        num_labels = getattr(model.config, "num_labels", 1)
        if num_labels != 1:
            raise ValueError(f"reward model: num_labels must be 1 (a scalar reward), got {num_labels}")
        self.model = model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.name = name or getattr(model.config, "_name_or_path", "") or type(model).__name__
        self._embedding = self.model.get_input_embeddings()
        is_decoder = not getattr(model.config, "is_encoder_decoder", False) and getattr(
            model.config, "is_decoder", True
        )
        # Decoder-only architectures (Llama, GPT-2, Qwen, ...) attend causally, so a prefix cache is exact.
        causal = is_decoder and hasattr(model.config, "num_hidden_layers") and not hasattr(model, "bert")
        self.causal = causal
        self.use_prefix_cache = causal if use_prefix_cache is None else use_prefix_cache

    @classmethod
    def from_pretrained(
        cls,
        model_id_or_path: str | Path,
        *,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
        **kwargs: Any,
    ) -> HFRewardModel:
        """Load a reward model by hub id or local path."""
        model = AutoModelForSequenceClassification.from_pretrained(
            str(model_id_or_path), num_labels=1, dtype=dtype, **kwargs
        ).to(device)
        if model.config.pad_token_id is None:
            # Pooling of batched inputs needs a pad id; a single sequence is pooled at its last token anyway.
            model.config.pad_token_id = model.config.eos_token_id if isinstance(model.config.eos_token_id, int) else 0
        return cls(model, name=str(model_id_or_path))

    def open_session(self, context: RewardContext | None = None) -> RewardSession:
        return _HFSession(self)

    def score(self, sequences: Sequence[Sequence[int]]) -> list[float]:
        """Batched rewards. A causal RM pools at its last token, so rows are left-padded; an encoder (BERT-like)
        pools its first token, so rows are right-padded; the attention mask hides the padding either way."""
        rows = [list(s) for s in sequences]
        if not rows or any(not r for r in rows):
            raise ValueError("score: every sequence needs at least one token")
        width = max(len(r) for r in rows)
        pad = 0

        def padded(row: list[int], fill: int, value: int | None = None) -> list[int]:
            body = row if value is None else [value] * len(row)
            return [fill] * (width - len(row)) + body if self.causal else body + [fill] * (width - len(row))

        ids = torch.tensor([padded(r, pad) for r in rows], device=self.device)
        mask = torch.tensor([padded(r, 0, 1) for r in rows], device=self.device)
        kwargs: dict[str, Any] = {"inputs_embeds": self._embedding(ids), "attention_mask": mask}
        if self.causal:
            kwargs["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0)
        with torch.no_grad():
            try:
                out = self.model(**kwargs)
            except Exception as exc:
                raise RewardError(f"reward model {self.name!r} failed: {exc}") from exc
        return [float(x) for x in self.pooled_reward(out.logits).float().cpu()]

    def score_texts(self, texts: Sequence[str], tokenizer: Any) -> list[float]:
        """Rewards of texts, tokenised without added special tokens (the policy's tokenizer)."""
        return self.score([tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts])

    def embedding_gradients(self, ids: Sequence[int], positions: Sequence[int]) -> tuple[float, torch.Tensor]:
        with torch.no_grad():
            embeds = self.embed(ids)
        embeds.requires_grad_(True)
        mask = torch.ones(1, embeds.shape[1], dtype=torch.long, device=self.device)
        with torch.enable_grad():
            try:
                out = self.model(inputs_embeds=embeds, attention_mask=mask)
            except Exception as exc:
                raise RewardError(f"reward model {self.name!r} failed: {exc}") from exc
            reward = self.pooled_reward(out.logits)[0]
            (grad,) = torch.autograd.grad(reward, embeds)
        return float(reward.detach().float()), grad[0, list(positions)].float()

    def pooled_reward(self, logits: torch.Tensor) -> torch.Tensor:
        """[batch] reward from the model's pooled logits, checking the shape."""
        if logits.dim() != 2 or logits.shape[-1] != 1:
            raise RewardError(
                f"reward model {self.name!r}: expected logits of shape [batch, 1], got {tuple(logits.shape)}"
            )
        return logits[:, 0]


class _HFSession(CausalPrefixSession):
    """The model pools its own logits at the last fed position: that is the reward."""

    def __init__(self, rm: HFRewardModel):
        super().__init__(name=rm.name, model=rm.model, embed=rm.embed, use_prefix_cache=rm.use_prefix_cache)
        self.rm = rm

    def score_batch(self, sequences: Sequence[Sequence[int]]) -> list[float]:
        return self.rm.score(sequences)

    def _call(self, embeds: torch.Tensor, cache: Any, past: int, **extra: Any) -> Any:
        return self._call_model(embeds, cache, past, **extra)

    def _reward(self, output: Any, ids: Sequence[int], start: int) -> torch.Tensor:
        return self.rm.pooled_reward(output.logits)

    def _continuation_rewards(
        self, output: Any, prefix_ids: Sequence[int], continuations: list[list[int]]
    ) -> torch.Tensor | None:
        return self.rm.pooled_reward(output.logits)

    def _batches_continuations(self, continuations: list[list[int]]) -> bool:
        # The model pools its own logits at the last position it was fed: right only without padding.
        return len({len(c) for c in continuations}) == 1
