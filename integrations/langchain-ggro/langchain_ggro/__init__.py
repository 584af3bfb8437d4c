"""LangChain integration for GGRO: `GGROLLM` (text completion) and `ChatGGRO` (chat), with a `ggro_nudge`
callback event for every nudge and a handler that collects them."""

from langchain_ggro.callbacks import NUDGE_EVENT, NUDGES_KEY, GGRONudgeCollector
from langchain_ggro.chat_models import ChatGGRO
from langchain_ggro.llms import GGROLLM

__all__ = ["GGROLLM", "NUDGES_KEY", "NUDGE_EVENT", "ChatGGRO", "GGRONudgeCollector"]
__version__ = "0.1.0"
