"""GGRO: Gradient-Guided Reward Optimization for inference-time alignment of local HF causal LMs."""

from ._aio import AsyncDecoding, Decoding
from .adapters import shared_decoder
from .config import GGROConfig, GGROOptions
from .decoder import GGRODecoder, PromptInput
from .events import GGROEvent, GGROResult, Listener, NudgeEvent, SegmentEvent, Timing, Usage
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
    "AsyncDecoding",
    "CallableReward",
    "CompositeReward",
    "Decoding",
    "GGROConfig",
    "GGRODecoder",
    "GGROEvent",
    "GGROOptions",
    "GGROResult",
    "HFRewardModel",
    "LMJudgeReward",
    "Listener",
    "MeanPooledHeadReward",
    "NudgeEvent",
    "PromptInput",
    "RewardError",
    "RewardModel",
    "SegmentEvent",
    "Timing",
    "Usage",
    "shared_decoder",
]
__version__ = "0.1.0"
