"""Entropy segmentation: where a segment ends and why."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

__all__ = ["common_prefix_length", "token_entropy"]


def token_entropy(logits: torch.Tensor, probability_floor: float = 1e-9) -> float:
    """Entropy (nats) of softmax(logits) at temperature 1, probabilities clamped below at
    ``probability_floor`` as the release does. ``logits`` is one row [vocab]."""
    probs = torch.softmax(logits.float(), dim=-1)
    if probability_floor > 0:
        probs = probs.clamp_min(probability_floor)
    return float(-(probs * probs.log()).sum())


def common_prefix_length(a: Sequence[Any], b: Sequence[Any]) -> int:
    """Length of the longest common prefix (token ids or text): how much of a cache stays valid."""
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i
