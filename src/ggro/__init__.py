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
from .constraints import Constraint
from .decoder import GGRODecoder, PromptInput
from .events import GGROEvent, GGROResult, Listener, NudgeEvent, SegmentEvent, Timing, Usage
from .prompting import count_prompt_tokens, template_supports_tools, truncate_messages
from .rewards import (
    CallableReward,
    CompositeReward,
    HFRewardModel,
    LMJudgeReward,
    MeanPooledHeadReward,
    RewardError,
    RewardModel,
)
from .structured import ChatCall, normalize_tool_choice, prepare_chat_call
from .tools import (
    InvalidToolCall,
    ParsedResponse,
    ToolCall,
    ToolCallChunk,
    ToolCallParser,
    ToolCallStream,
    normalize_tools,
    parse_tool_calls,
)

__all__ = [
    "EMBEDDED_MODEL_NAME",
    "AsyncDecoding",
    "CallableReward",
    "ChatCall",
    "CompositeReward",
    "Constraint",
    "Decoding",
    "GGROAdapter",
    "GGROConfig",
    "GGRODecoder",
    "GGROEvent",
    "GGROOptions",
    "GGROResult",
    "HFRewardModel",
    "InvalidToolCall",
    "LMJudgeReward",
    "Listener",
    "MeanPooledHeadReward",
    "NudgeEvent",
    "ParsedResponse",
    "PromptInput",
    "RewardError",
    "RewardModel",
    "SegmentEvent",
    "StreamChunk",
    "Timing",
    "ToolCall",
    "ToolCallChunk",
    "ToolCallParser",
    "ToolCallStream",
    "Usage",
    "astream_chunks",
    "count_prompt_tokens",
    "merge_config",
    "normalize_tool_choice",
    "normalize_tools",
    "parse_tool_calls",
    "prepare_chat_call",
    "shared_decoder",
    "stream_chunks",
    "template_supports_tools",
    "token_usage",
    "truncate_messages",
]
__version__ = "0.1.0"
