"""Reward models that steer GGRO."""

from .base import RewardContext, RewardError, RewardModel, RewardSession, SegmentScore
from .callable import CallableReward
from .composite import CompositeReward
from .hf import HFRewardModel
from .judge import LMJudgeReward
from .pooled import MeanPooledHeadReward

__all__ = [
    "CallableReward",
    "CompositeReward",
    "HFRewardModel",
    "LMJudgeReward",
    "MeanPooledHeadReward",
    "RewardContext",
    "RewardError",
    "RewardModel",
    "RewardSession",
    "SegmentScore",
]
