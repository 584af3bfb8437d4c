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
    "QWEN_GUIDANCE_POLICY",
    "QWEN_GUIDANCE_REWARD",
    "REFERENCE_REWARD",
    "is_default_policy",
    "load_default_reward",
    "load_policy",
    "load_qwen_guidance_reward",
    "load_reward",
    "reward_shares_policy",
]

DEFAULT_REWARD = "smollm2-harm-head"
"""The embedded reward: the SmolLM2-135M backbone with a linear head on the mean of its final hidden states
over the response, trained on human harm scores (``ggro.lab.train_head``; provenance beside the head)."""

REFERENCE_REWARD = "reference-head"
"""The reference fixtures' reward: the SmolLM2-135M backbone with a seeded *random* head (untrained); the
reference preset, ``ggro reference-check`` and ``ggro bench`` use it to match the authors' release."""

QWEN_GUIDANCE_REWARD = "qwen-guidance"
"""The guidance reward of the Qwen2.5-Coder-0.5B-Instruct policy: a :class:`~ggro.rewards.composite.CompositeReward`
of a harm term and a helpfulness term, two linear heads on the mean of the policy's final hidden states over the
response, sharing ONE backbone (the policy's own transformer when it is given as ``backbone_of``). Trained by
``ggro.lab.train_guidance``; provenance, held-out figures and the terms' weights beside the heads."""

QWEN_GUIDANCE_POLICY = "qwen2.5-coder-0.5b-instruct"
"""The embedded policy whose features the ``qwen-guidance`` heads read."""

_ASSISTANT_HEADER = "<|im_start|>assistant\n"


def is_default_policy(policy: str | Path | None) -> bool:
    """Whether ``policy`` names the embedded default policy (None or ``"smollm2-135m-instruct"``), whose
    transformer the embedded reward shares."""
    return embedded_policy_name(policy) == DEFAULT_POLICY.name


def reward_shares_policy(policy: str | Path | None, reward: object) -> bool:
    """Whether the reward named ``reward`` reads the transformer of the policy named ``policy``, so that the
    policy's model should be passed to :func:`load_reward` as ``backbone_of`` (one copy of the weights): the
    embedded harm reward with the default policy, ``qwen-guidance`` with Qwen2.5-Coder-0.5B-Instruct."""
    if reward is None or (isinstance(reward, str | Path) and str(reward) == DEFAULT_REWARD):
        return is_default_policy(policy)
    if isinstance(reward, str | Path) and str(reward) == QWEN_GUIDANCE_REWARD:
        return embedded_policy_name(policy) == QWEN_GUIDANCE_POLICY
    return False


def _is_model_from(model: PreTrainedModel, path: Path) -> bool:
    """Whether ``model`` was loaded from the checkpoint directory ``path`` (as :func:`load_policy` does)."""
    source = getattr(model, "name_or_path", None) or getattr(getattr(model, "config", None), "_name_or_path", "")
    try:
        return bool(source) and Path(str(source)).resolve() == path.resolve()
    except OSError:
        return False


def _qwen_guidance_reward(
    backbone_of: PreTrainedModel | None, dtype: torch.dtype, device: str | torch.device
) -> tuple[RewardModel, PreTrainedTokenizerBase]:
    from transformers import AutoModel

    from .assets import embedded_policy, embedded_policy_path
    from .rewards.composite import CompositeReward
    from .rewards.heads import QWEN_HARM_HEAD_NAME, QWEN_HELP_HEAD_NAME, load_head
    from .rewards.pooled import MeanPooledHeadReward

    policy = embedded_policy(QWEN_GUIDANCE_POLICY)
    path = embedded_policy_path(QWEN_GUIDANCE_POLICY)
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    if backbone_of is not None and _is_model_from(backbone_of, path):
        backbone: Any = backbone_of.get_decoder()
    else:  # not the Qwen 0.5B policy (or none given): the reward loads its own copy of the transformer
        backbone = AutoModel.from_pretrained(str(path), dtype=dtype).to(device)
    harm, helpful = load_head(QWEN_HARM_HEAD_NAME), load_head(QWEN_HELP_HEAD_NAME)
    weights = harm.meta.get("composite_weights", {})
    marker = tokenizer(_ASSISTANT_HEADER, add_special_tokens=False)["input_ids"]
    excluded = sorted({policy.eos_token_id, policy.pad_token_id, *policy.generation_eos_token_ids})
    terms: list[tuple[str, float, RewardModel]] = []
    for term, head, weight in (
        ("harm", harm, float(weights.get("w_harm", 1.0))),
        ("help", helpful, float(weights.get("w_help", 1.0))),
    ):
        reward = MeanPooledHeadReward(
            backbone,
            head.weight,
            head.bias,
            response_marker=marker,
            excluded_ids=excluded,
            name=f"qwen2.5-coder-0.5b {term} head",
        )
        terms.append((term, weight, reward))
    return CompositeReward(terms, name="qwen-guidance (harm + helpfulness heads on Qwen2.5-Coder-0.5B)"), tokenizer


def load_qwen_guidance_reward(
    *,
    backbone_of: PreTrainedModel | None = None,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> RewardModel:
    """The ``qwen-guidance`` reward (on Qwen2.5's vocabulary). ``backbone_of``: the Qwen2.5-Coder-0.5B-Instruct
    policy as :func:`load_policy` loads it, whose transformer both terms then share; any other model (or None)
    gets the reward its own copy."""
    return _qwen_guidance_reward(backbone_of, dtype, device)[0]


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
    """A reward by name: None or ``"smollm2-harm-head"`` (the embedded trained reward), ``"qwen-guidance"`` (the
    Qwen2.5-Coder-0.5B policy's harm + helpfulness reward), ``"reference-head"`` (the reference fixtures' untrained
    one), or the hub id / local path of a sequence-classification RM.

    ``policy_tokenizer``: the policy's tokenizer. When the reward's tokenizer has another vocabulary, the
    reward comes wrapped in a :class:`~ggro.rewards.bridge.TokenizerBridgeReward` that reads the policy's ids
    through text; with the same vocabulary (or without ``policy_tokenizer``) it is returned as is."""
    rm: RewardModel
    rm_tokenizer: PreTrainedTokenizerBase | None
    if reward is None or str(reward) == DEFAULT_REWARD:
        rm, rm_tokenizer = _default_reward(backbone_of, dtype, device)
    elif str(reward) == QWEN_GUIDANCE_REWARD:
        rm, rm_tokenizer = _qwen_guidance_reward(backbone_of, dtype, device)
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
