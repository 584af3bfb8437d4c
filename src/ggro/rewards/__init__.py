"""Reward models that steer GGRO."""

from .base import RewardContext, RewardError, RewardModel, RewardSession, SegmentScore
from .bridge import MeanPooledEncoderReward, TokenizerBridgeReward, make_reward
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
    "MeanPooledEncoderReward",
    "MeanPooledHeadReward",
    "RewardContext",
    "RewardError",
    "RewardModel",
    "RewardSession",
    "SegmentScore",
    "TokenizerBridgeReward",
    "make_reward",
]
