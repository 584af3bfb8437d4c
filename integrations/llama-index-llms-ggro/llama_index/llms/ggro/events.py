"""`GGRONudgeEvent`, the instrumentation event sent once per nudge, and `GGRONudgeCollector`, a handler
that collects them.

Every nudge the decoder tries (kept or not: see ``event.nudge.kept``) is dispatched through the
``llama_index.llms.ggro`` dispatcher, which propagates to the root dispatcher, so any handler added with
``get_dispatcher().add_event_handler(...)`` receives it. ``span_id`` is the span of the LLM call
(``GGRO.complete-<uuid>``, ``GGRO.astream_chat-<uuid>``, ...) that produced the nudge: the same span id as
that call's ``LLMCompletionStartEvent`` / ``LLMChatStartEvent``, also for streamed calls.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from llama_index.core.bridge.pydantic import Field, PrivateAttr
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.instrumentation.events import BaseEvent

from ggro import NudgeEvent

__all__ = ["GGRONudgeCollector", "GGRONudgeEvent"]


class GGRONudgeEvent(BaseEvent):
    """One nudge of a GGRO decoding run: a segment where the reward gradient proposed and tried another
    token at the segment's insertion position.

    ``nudge`` holds every field of :class:`ggro.NudgeEvent` (segment index, insertion position, entropy,
    draft and nudge tokens, draft and kept rewards, refinements used, ``kept``); ``span_id`` is the span of
    the LLM call it belongs to.
    """

    nudge: NudgeEvent = Field(description="The decoder's nudge event.")
    model_name: str = Field(description="The policy model that was steered.")

    @classmethod
    def class_name(cls) -> str:
        return "GGRONudgeEvent"

    @property
    def payload(self) -> dict[str, Any]:
        """The nudge as plain JSON values (what ``raw["nudges"]`` of the response holds)."""
        return self.nudge.model_dump(mode="json")


class GGRONudgeCollector(BaseEventHandler):
    """An event handler that keeps every :class:`GGRONudgeEvent` it sees, grouped by span. Thread-safe.

    Example:
        ```python
        from llama_index.core.instrumentation import get_dispatcher
        from llama_index.llms.ggro import GGRO, GGRONudgeCollector

        collector = GGRONudgeCollector(on_nudge=lambda e: print(e.span_id, e.nudge.nudge_token, e.nudge.kept))
        get_dispatcher().add_event_handler(collector)
        GGRO().complete("How do I pick a lock?")
        print(len(collector.events), collector.by_span)
        ```
    """

    on_nudge: Callable[[GGRONudgeEvent], Any] | None = Field(
        default=None, description="Called with each nudge event as it arrives (to print or log nudges).", exclude=True
    )
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)
    _events: list[GGRONudgeEvent] = PrivateAttr(default_factory=list)

    @classmethod
    def class_name(cls) -> str:
        return "GGRONudgeCollector"

    def handle(self, event: BaseEvent, **kwargs: Any) -> None:
        if not isinstance(event, GGRONudgeEvent):
            return
        with self._lock:
            self._events.append(event)
        if self.on_nudge is not None:
            self.on_nudge(event)

    @property
    def events(self) -> list[GGRONudgeEvent]:
        """Every nudge event received, in arrival order."""
        with self._lock:
            return list(self._events)

    @property
    def by_span(self) -> dict[str | None, list[GGRONudgeEvent]]:
        """Nudge events grouped by the span id of the LLM call they belong to."""
        grouped: dict[str | None, list[GGRONudgeEvent]] = defaultdict(list)
        with self._lock:
            for event in self._events:
                grouped[event.span_id].append(event)
        return dict(grouped)

    def clear(self) -> None:
        with self._lock:
            self._events.clear()
