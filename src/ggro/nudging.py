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
    gains: list[float]
    """Each candidate's predicted reward change over the current token (first-order for gradients, exact for
    rewards without them); the current token's is 0, a non-finite one -inf."""

    @property
    def gain(self) -> float:
        """The chosen token's predicted reward change (0 when it is the current token)."""
        return self.gains[self.candidate_ids.index(self.token_id)] if self.token_id in self.candidate_ids else 0.0

    def alternatives(
        self,
        count: int,
        *,
        min_gain: float | None,
        selection: Literal["greedy", "sample"],
        temperature: float,
        generator: torch.Generator | None = None,
    ) -> list[int]:
        """Up to ``count`` tokens other than the current one predicted to gain (more than 0, and at least
        ``min_gain`` when given), best first; ``sample`` draws them without replacement from
        softmax(gain / temperature) instead (parallel refinement's proposals)."""
        floor = 0.0 if min_gain is None else min_gain
        gains = torch.tensor(self.gains, dtype=torch.float64)
        eligible = [i for i, g in enumerate(self.gains) if g > 0.0 and g >= floor]
        if not eligible or count < 1:
            return []
        if selection == "sample" and len(eligible) > count:
            chosen = gains[eligible]
            probs = torch.softmax((chosen - chosen.max()) / temperature, dim=-1)
            picks = torch.multinomial(probs, count, replacement=False, generator=generator).tolist()
            return [self.candidate_ids[eligible[j]] for j in picks]
        eligible.sort(key=lambda i: -self.gains[i])
        return [self.candidate_ids[i] for i in eligible[:count]]


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
    gains = torch.where(is_current, torch.zeros_like(scores), scores - current_score)
    gains = torch.where(torch.isfinite(gains), gains, torch.full_like(gains, float("-inf")))
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
    return NudgeProposal(
        token_id=int(ids[index]), candidate_ids=ids.tolist(), scores=scores.tolist(), gains=gains.tolist()
    )
