"""Load policies and rewards by id/path, or the embedded defaults when none is named."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from .rewards.base import RewardModel
from .rewards.hf import HFRewardModel

__all__ = [
    "DEFAULT_REWARD",
    "REFERENCE_REWARD",
    "load_default_reward",
    "load_policy",
    "load_reward",
]

DEFAULT_REWARD = "smollm2-harm-head"
"""The embedded reward: the SmolLM2-135M backbone with a linear head on the mean of its final hidden states
over the response, trained on human harm scores (``ggro.lab.train_head``; provenance beside the head)."""

REFERENCE_REWARD = "reference-head"
"""The reference fixtures' reward: the SmolLM2-135M backbone with a seeded *random* head (untrained); the
reference preset, ``ggro reference-check`` and ``ggro bench`` use it to match the authors' release."""

_ASSISTANT_HEADER = "<|im_start|>assistant\n"


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


def load_default_reward(
    *,
    backbone_of: PreTrainedModel | None = None,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> RewardModel:
    """The embedded trained reward. ``backbone_of``: the embedded policy, whose transformer the reward then
    shares (one copy of the weights in memory) instead of loading its own."""
    from transformers import AutoModel

    from .assets import default_policy_path
    from .rewards.heads import GUIDANCE_HEAD_NAME, load_head
    from .rewards.pooled import MeanPooledHeadReward

    path = default_policy_path()
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    if backbone_of is not None:
        backbone: Any = backbone_of.get_decoder()
    else:
        backbone = AutoModel.from_pretrained(str(path), dtype=dtype).to(device)
    head = load_head(GUIDANCE_HEAD_NAME)
    return MeanPooledHeadReward(
        backbone,
        head.weight,
        head.bias,
        response_marker=tokenizer(_ASSISTANT_HEADER, add_special_tokens=False)["input_ids"],
        excluded_ids=[tokenizer.eos_token_id],
        name="smollm2-135m harm head (trained on pyrit human harm scores)",
    )


def load_reward(
    reward: str | Path | None = None,
    *,
    backbone_of: PreTrainedModel | None = None,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> RewardModel:
    """A reward by name: None or ``"smollm2-harm-head"`` (the embedded trained reward), ``"reference-head"``
    (the reference fixtures' untrained one), or the hub id / local path of a sequence-classification RM."""
    if reward is None or str(reward) == DEFAULT_REWARD:
        return load_default_reward(backbone_of=backbone_of, dtype=dtype, device=device)
    if str(reward) == REFERENCE_REWARD:
        from .assets import load_reference_reward_model

        model, _ = load_reference_reward_model(dtype=dtype, device=device)
        return HFRewardModel(model, name="smollm2-135m + seeded random head (reference fixtures' RM, untrained)")
    return HFRewardModel.from_pretrained(reward, dtype=dtype, device=device)

