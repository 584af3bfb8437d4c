"""Reward models that steer GGRO."""

from .base import RewardContext, RewardError, RewardModel, RewardSession, SegmentScore
from .callable import CallableReward
from .hf import HFRewardModel
from .pooled import MeanPooledHeadReward

__all__ = [
    "CallableReward",
    "HFRewardModel",
    "MeanPooledHeadReward",
    "RewardContext",
    "RewardError",
    "RewardModel",
    "RewardSession",
    "SegmentScore",
]
