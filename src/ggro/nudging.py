"""Choosing a nudge token from the reward gradient, among the policy's top-k at the insertion position."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from .rewards.base import RewardModel

__all__ = ["NudgeProposal", "propose_nudge"]

# The release scales the current token's score by this instead of excluding it (DESIGN §1, quirk iii).
_CURRENT_TOKEN_SCALE = 1e-10


@dataclass(frozen=True)
class NudgeProposal:
    token_id: int
    """Chosen token; equal to the current token when no candidate is predicted to do better."""
    candidate_ids: list[int]
    scores: list[float]


def propose_nudge(
    reward: RewardModel,
    gradient: torch.Tensor,
    top_k_ids: torch.Tensor,
    current_token: int,
    *,
    baseline: Literal["current", "zero"],
    selection: Literal["greedy", "sample"],
    temperature: float,
    generator: torch.Generator | None = None,
) -> NudgeProposal | None:
    """Score each top-k candidate by its first-order reward change and pick one.

    Returns None when the gradient gives no usable signal (non-finite scores).
    """
    scores = reward.candidate_scores(gradient, top_k_ids).float().cpu()
    ids = top_k_ids.cpu()
    is_current = ids == current_token
    if baseline == "zero":
        scores = torch.where(is_current, scores * _CURRENT_TOKEN_SCALE, scores)
    else:
        current_score = reward.candidate_scores(gradient, torch.tensor([current_token])).float().cpu()[0]
        scores = torch.where(is_current, torch.zeros_like(scores), scores - current_score)
    if not torch.isfinite(scores).all():
        return None
    scaled = scores / temperature
    if selection == "sample":
        probs = torch.softmax(scaled, dim=-1)
        index = int(torch.multinomial(probs, 1, generator=generator)[0])
    else:
        index = int(scaled.argmax())
    return NudgeProposal(token_id=int(ids[index]), candidate_ids=ids.tolist(), scores=scores.tolist())
