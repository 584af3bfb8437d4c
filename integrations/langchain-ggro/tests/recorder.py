"""A callback handler that records, per run, the `ggro_nudge` events and what the run returned."""

from __future__ import annotations

import threading
from collections import defaultdict
from typing import Any
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.outputs import ChatGeneration, LLMResult

from langchain_ggro import NUDGE_EVENT, NUDGES_KEY


class RunRecorder(BaseCallbackHandler):
    run_inline = True

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.nudge_events: dict[UUID, list[dict[str, Any]]] = defaultdict(list)
        self.result_nudges: dict[UUID, list[dict[str, Any]]] = {}
        self.errors: dict[UUID, BaseException] = {}
        self.tokens: dict[UUID, list[str]] = defaultdict(list)

    def on_custom_event(self, name: str, data: Any, *, run_id: UUID, **kwargs: Any) -> None:
        if name == NUDGE_EVENT:
            with self.lock:
                self.nudge_events[run_id].append(data)

    def on_llm_new_token(self, token: str, *, run_id: UUID, **kwargs: Any) -> None:
        with self.lock:
            self.tokens[run_id].append(token)

    def on_llm_end(self, response: LLMResult, *, run_id: UUID, **kwargs: Any) -> None:
        generation = response.generations[0][0]
        if isinstance(generation, ChatGeneration):
            info = generation.message.response_metadata
        else:
            info = generation.generation_info or {}
        with self.lock:
            self.result_nudges[run_id] = list(info.get(NUDGES_KEY, []))

    def on_llm_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        with self.lock:
            self.errors[run_id] = error

    def assert_events_match_results(self, runs: int) -> int:
        """Every finished run received exactly the nudges its result lists, in order. Returns the total."""
        assert len(self.result_nudges) == runs, self.result_nudges.keys()
        total = 0
        for run_id, nudges in self.result_nudges.items():
            assert self.nudge_events.get(run_id, []) == nudges, run_id
            total += len(nudges)
        assert set(self.nudge_events) <= set(self.result_nudges)
        assert total > 0, "the tiny models always nudge: zero events means none were delivered"
        return total
