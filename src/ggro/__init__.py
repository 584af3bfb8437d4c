"""GGRO: Gradient-Guided Reward Optimization for inference-time alignment of local HF causal LMs."""

from ._aio import AsyncDecoding, Decoding
from .adapters import (
    EMBEDDED_MODEL_NAME,
    GGROAdapter,
    StreamChunk,
    astream_chunks,
    merge_config,
    shared_decoder,
    stream_chunks,
    token_usage,
)
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
    "EMBEDDED_MODEL_NAME",
    "AsyncDecoding",
    "CallableReward",
    "CompositeReward",
    "Decoding",
    "GGROAdapter",
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
    "StreamChunk",
    "Timing",
    "Usage",
    "astream_chunks",
    "merge_config",
    "shared_decoder",
    "stream_chunks",
    "token_usage",
]
__version__ = "0.1.0"
