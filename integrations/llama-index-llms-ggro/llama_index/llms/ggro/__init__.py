"""GGRO (gradient-guided reward optimisation) as a LlamaIndex LLM, with an instrumentation event per nudge."""

from llama_index.llms.ggro.base import GGRO
from llama_index.llms.ggro.events import GGRONudgeCollector, GGRONudgeEvent

__all__ = ["GGRO", "GGRONudgeCollector", "GGRONudgeEvent"]
