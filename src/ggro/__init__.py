"""GGRO: Gradient-Guided Reward Optimization for inference-time alignment of local HF causal LMs."""

from .config import GGROConfig
from .decoder import GGRODecoder
from .events import GGROEvent, GGROResult, NudgeEvent, SegmentEvent, Timing, Usage
from .rewards import (
    CallableReward,
    CompositeReward,
    HFRewardModel,
    LMJudgeReward,
    MeanPooledHeadReward,
    RewardError,
    RewardModel,
)

__all__ = [
    "CallableReward",
    "CompositeReward",
    "GGROConfig",
    "GGRODecoder",
    "GGROEvent",
    "GGROResult",
    "HFRewardModel",
    "LMJudgeReward",
    "MeanPooledHeadReward",
    "NudgeEvent",
    "RewardError",
    "RewardModel",
    "SegmentEvent",
    "Timing",
    "Usage",
]
__version__ = "0.1.0"
