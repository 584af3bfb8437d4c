"""Reward models that steer GGRO."""

from .base import RewardError, RewardModel, RewardSession, SegmentScore
from .hf import HFRewardModel
from .pooled import MeanPooledHeadReward

__all__ = ["HFRewardModel", "MeanPooledHeadReward", "RewardError", "RewardModel", "RewardSession", "SegmentScore"]
