"""Load policies and rewards by name, id or path, or the embedded defaults when none is named.

:func:`load_policy` (from :mod:`ggro.assets`): an embedded policy by name, or any causal LM by hub id or path.

A reward whose tokenizer has another vocabulary than the policy's (the embedded SmolLM2 harm reward under
Qwen2.5-Coder, any RM under a user's policy of another family) is read through
:class:`~ggro.rewards.bridge.TokenizerBridgeReward` (:func:`~ggro.rewards.bridge.make_reward`); with the same
vocabulary it reads the policy's ids directly (the exact path).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from .assets import DEFAULT_POLICY, embedded_policy_name, load_policy
from .rewards.base import RewardModel
from .rewards.bridge import make_reward
from .rewards.hf import HFRewardModel

__all__ = [
    "DEFAULT_REWARD",
    "REFERENCE_REWARD",
    "is_default_policy",
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


def is_default_policy(policy: str | Path | None) -> bool:
    """Whether ``policy`` names the embedded default policy (None or ``"smollm2-135m-instruct"``), whose
    transformer the embedded reward shares."""
    return embedded_policy_name(policy) == DEFAULT_POLICY.name


def _default_reward(
    backbone_of: PreTrainedModel | None, dtype: torch.dtype, device: str | torch.device
) -> tuple[RewardModel, PreTrainedTokenizerBase]:
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
    reward = MeanPooledHeadReward(
        backbone,
        head.weight,
        head.bias,
        response_marker=tokenizer(_ASSISTANT_HEADER, add_special_tokens=False)["input_ids"],
        excluded_ids=[tokenizer.eos_token_id],
        name="smollm2-135m harm head (trained on pyrit human harm scores)",
    )
    return reward, tokenizer


def load_default_reward(
    *,
    backbone_of: PreTrainedModel | None = None,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> RewardModel:
    """The embedded trained reward (on SmolLM2's vocabulary). ``backbone_of``: the embedded default policy,
    whose transformer the reward then shares (one copy of the weights in memory) instead of loading its own."""
    return _default_reward(backbone_of, dtype, device)[0]


def _reward_tokenizer(reward: str | Path) -> PreTrainedTokenizerBase | None:
    """The tokenizer saved with a reward model, or None when it has none (the vocabulary check then decides)."""
    try:
        tokenizer: PreTrainedTokenizerBase = AutoTokenizer.from_pretrained(str(reward))
    except (OSError, ValueError, TypeError):
        return None
    return tokenizer


def load_reward(
    reward: str | Path | None = None,
    *,
    backbone_of: PreTrainedModel | None = None,
    policy_tokenizer: PreTrainedTokenizerBase | None = None,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> RewardModel:
    """A reward by name: None or ``"smollm2-harm-head"`` (the embedded trained reward), ``"reference-head"``
    (the reference fixtures' untrained one), or the hub id / local path of a sequence-classification RM.

    ``policy_tokenizer``: the policy's tokenizer. When the reward's tokenizer has another vocabulary, the
    reward comes wrapped in a :class:`~ggro.rewards.bridge.TokenizerBridgeReward` that reads the policy's ids
    through text; with the same vocabulary (or without ``policy_tokenizer``) it is returned as is."""
    rm: RewardModel
    rm_tokenizer: PreTrainedTokenizerBase | None
    if reward is None or str(reward) == DEFAULT_REWARD:
        rm, rm_tokenizer = _default_reward(backbone_of, dtype, device)
    elif str(reward) == REFERENCE_REWARD:
        from .assets import load_reference_reward_model

        model, rm_tokenizer = load_reference_reward_model(dtype=dtype, device=device)
        rm = HFRewardModel(model, name="smollm2-135m + seeded random head (reference fixtures' RM, untrained)")
    else:
        rm = HFRewardModel.from_pretrained(reward, dtype=dtype, device=device)
        rm_tokenizer = _reward_tokenizer(reward) if policy_tokenizer is not None else None
    if policy_tokenizer is None or rm_tokenizer is None:
        return rm
    return make_reward(rm, rm_tokenizer, policy_tokenizer)
