"""Reward models that steer GGRO."""

from .base import RewardError, RewardModel, RewardSession, SegmentScore
from .hf import HFRewardModel

__all__ = ["HFRewardModel", "RewardError", "RewardModel", "RewardSession", "SegmentScore"]
