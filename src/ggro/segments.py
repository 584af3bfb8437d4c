"""Entropy segmentation: where a segment ends and why."""

from __future__ import annotations

import torch

__all__ = ["token_entropy"]


def token_entropy(logits: torch.Tensor, probability_floor: float = 1e-9) -> float:
    """Entropy (nats) of softmax(logits) at temperature 1, probabilities clamped below at
    ``probability_floor`` as the release does. ``logits`` is one row [vocab]."""
    probs = torch.softmax(logits.float(), dim=-1)
    if probability_floor > 0:
        probs = probs.clamp_min(probability_floor)
    return float(-(probs * probs.log()).sum())
