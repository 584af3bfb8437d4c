"""Choosing a nudge token among the policy's top-k at the insertion position: by the reward gradient, or by
the exact reward of each variant for rewards without gradients."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from .rewards.base import RewardModel

__all__ = ["NudgeProposal", "choose_nudge", "propose_nudge"]

# The release scales the current token's score by this instead of excluding it (the 'zero' baseline; README,
# Presets, point 3).
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
    """Score each top-k candidate by its first-order reward change E[v]·dr/de and pick one.

    Returns None when the gradient gives no usable signal (non-finite scores).
    """
    scores = reward.candidate_scores(gradient, top_k_ids).float().cpu()
    if not torch.isfinite(scores).all():
        return None
    current = 0.0
    if baseline == "current":
        current = float(reward.candidate_scores(gradient, torch.tensor([current_token])).float().cpu()[0])
    return choose_nudge(
        scores,
        top_k_ids,
        current_token,
        current,
        baseline=baseline,
        selection=selection,
        temperature=temperature,
        generator=generator,
    )


def choose_nudge(
    scores: torch.Tensor,
    top_k_ids: torch.Tensor,
    current_token: int,
    current_score: float,
    *,
    baseline: Literal["current", "zero"],
    selection: Literal["greedy", "sample"],
    temperature: float,
    generator: torch.Generator | None = None,
) -> NudgeProposal | None:
    """Pick among the top-k by ``scores`` (first-order or exact rewards): ``current`` compares each with
    ``current_score`` (the current token scores 0), ``zero`` is the release's raw scoring. A non-finite
    score never wins; None when no score is finite."""
    scores = scores.float().cpu()
    ids = top_k_ids.cpu()
    is_current = ids == current_token
    if baseline == "zero":
        scores = torch.where(is_current, scores * _CURRENT_TOKEN_SCALE, scores)
    else:
        scores = torch.where(is_current, torch.zeros_like(scores), scores - current_score)
    finite = torch.isfinite(scores)
    if not finite.any():
        return None
    scores = torch.where(finite, scores, torch.full_like(scores, float("-inf")))
    # Shift by the best score and divide in float64: a tiny temperature must not overflow to inf/nan.
    scaled = (scores.double() - scores[finite].max().double()) / temperature
    if selection == "sample":
        probs = torch.softmax(scaled, dim=-1)
        index = int(torch.multinomial(probs, 1, generator=generator)[0])
    else:
        index = int(scaled.argmax())
    return NudgeProposal(token_id=int(ids[index]), candidate_ids=ids.tolist(), scores=scores.tolist())
