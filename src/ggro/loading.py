"""Load policies and rewards by id/path, or the embedded defaults when none is named."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from .rewards.hf import HFRewardModel

__all__ = ["DEFAULT_REWARD", "load_policy", "load_reward"]

DEFAULT_REWARD = "reference-head"
"""The embedded reward for now: the SmolLM2-135M backbone with the reference fixtures' seeded random linear
head. It is NOT a trained reward model (a trained head replaces it later); it makes GGRO run end to end."""


def load_policy(
    policy: str | Path | None = None,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    attn_implementation: str | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A causal LM and its tokenizer: by hub id or local path, or the embedded SmolLM2-135M-Instruct."""
    if policy is None:
        from .assets import load_default_policy

        return load_default_policy(dtype=dtype, device=device, attn_implementation=attn_implementation)
    tokenizer = AutoTokenizer.from_pretrained(str(policy))
    extra = {"attn_implementation": attn_implementation} if attn_implementation else {}
    model: Any = AutoModelForCausalLM.from_pretrained(str(policy), dtype=dtype, **extra)
    model = model.to(device).eval()
    if tokenizer.pad_token_id is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def load_reward(
    reward: str | Path | None = None, *, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
) -> HFRewardModel:
    """A sequence-classification reward model by hub id or local path, or the embedded default."""
    if reward is None or str(reward) == DEFAULT_REWARD:
        from .assets import load_reference_reward_model

        model, _ = load_reference_reward_model(dtype=dtype, device=device)
        return HFRewardModel(model, name="smollm2-135m + seeded random head (reference fixtures' RM, untrained)")
    return HFRewardModel.from_pretrained(reward, dtype=dtype, device=device)
