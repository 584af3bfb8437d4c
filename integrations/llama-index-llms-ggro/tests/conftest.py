from __future__ import annotations

import os

# Everything is local: make any accidental hub access fail fast instead of hanging.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# One intra-op thread unless told otherwise: on a small machine shared with other jobs, two OpenMP threads
# made a tiny-model call take 0.5-21 s instead of a steady 0.15 s (the real models lose ~10% at most).
os.environ.setdefault("OMP_NUM_THREADS", "1")

import threading
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from llama_index.core.bridge.pydantic import PrivateAttr
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.instrumentation.events import BaseEvent
from llama_index.llms.ggro import GGRONudgeCollector

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


class EventRecorder(BaseEventHandler):
    """Every instrumentation event, in order (to find each call's start/end events and span ids)."""

    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)
    _events: list[BaseEvent] = PrivateAttr(default_factory=list)

    def handle(self, event: BaseEvent, **kwargs: Any) -> None:
        with self._lock:
            self._events.append(event)

    def of(self, *names: str) -> list[Any]:
        with self._lock:
            return [e for e in self._events if e.class_name() in names]

    def clear(self) -> None:
        with self._lock:
            self._events.clear()


@pytest.fixture
def recorder() -> Iterator[EventRecorder]:
    root = get_dispatcher()
    handler = EventRecorder()
    root.add_event_handler(handler)
    yield handler
    root.event_handlers.remove(handler)


@pytest.fixture
def collector() -> Iterator[GGRONudgeCollector]:
    """The package's example handler, attached to the root dispatcher for one test."""
    root = get_dispatcher()
    handler = GGRONudgeCollector()
    root.add_event_handler(handler)
    yield handler
    root.event_handlers.remove(handler)


def check_calls(
    recorder: EventRecorder, collector: GGRONudgeCollector, method: str, expected_calls: int
) -> list[dict[str, Any]]:
    """Each LLM call's nudge events are exactly its result's nudges and carry its span id. Returns the
    calls' raw responses."""
    starts, ends = recorder.of("LLMChatStartEvent"), recorder.of("LLMChatEndEvent")
    assert len(starts) == len(ends) == expected_calls
    by_span = collector.by_span
    assert set(by_span) <= {s.span_id for s in starts}  # no nudge outside an LLM call
    raws = []
    for start, end in zip(starts, ends, strict=True):
        assert start.span_id.startswith(f"GGRO.{method}-") and end.span_id == start.span_id
        raw = end.response.raw
        assert [e.payload for e in by_span.get(start.span_id, [])] == raw["nudges"]
        raws.append(raw)
    return raws
