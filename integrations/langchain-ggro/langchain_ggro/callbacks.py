"""The `ggro_nudge` custom callback event: how it reaches a run's handlers, and a handler that collects it.

Each nudge the decoder tries becomes one ``on_custom_event(name="ggro_nudge", data=...)`` on the handlers
of the LLM or chat-model run it belongs to (``data`` is :class:`ggro.NudgeEvent` as a plain dict; its
``run_id`` is that run's). It shows up in ``astream_events(version="v2")`` as an ``on_custom_event``.

Delivery goes through a callback manager rebuilt from the run manager's handlers: run managers have no
custom-event method of their own, and ``dispatch_custom_event`` needs an enclosing chain. LangChain's chat
streaming calls ``_stream`` without a run manager, so there nudges ride on each chunk's
``generation_info["ggro_nudges"]`` and a per-call relay handler turns them into events.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any, TypeVar
from uuid import UUID

from ggro import GGROEvent, NudgeEvent
from langchain_core.callbacks import (
    AsyncCallbackHandler,
    AsyncCallbackManager,
    AsyncCallbackManagerForLLMRun,
    BaseCallbackHandler,
    CallbackManager,
    CallbackManagerForLLMRun,
)
from langchain_core.outputs import ChatGenerationChunk, GenerationChunk

__all__ = ["NUDGES_KEY", "NUDGE_EVENT", "GGRONudgeCollector", "nudge_payload"]

NUDGE_EVENT = "ggro_nudge"
"""Name of the custom callback event sent once per nudge."""

NUDGES_KEY = "ggro_nudges"
"""Key of the nudge list in ``generation_info`` / ``response_metadata``."""


def nudge_payload(event: NudgeEvent) -> dict[str, Any]:
    """The event's data: every field of :class:`ggro.NudgeEvent` as JSON values."""
    return event.model_dump(mode="json")


_Manager = TypeVar("_Manager", CallbackManager, AsyncCallbackManager)


def _manager_of(run_manager: CallbackManagerForLLMRun | AsyncCallbackManagerForLLMRun, cls: type[_Manager]) -> _Manager:
    """A callback manager over the run's handlers, parented to the run (run managers cannot send custom events)."""
    return cls(
        handlers=run_manager.handlers,
        inheritable_handlers=run_manager.inheritable_handlers,
        parent_run_id=run_manager.run_id,
        tags=run_manager.tags,
        inheritable_tags=run_manager.inheritable_tags,
        metadata=run_manager.metadata,
        inheritable_metadata=run_manager.inheritable_metadata,
    )


def nudge_sender(run_managers: Sequence[CallbackManagerForLLMRun | None]) -> Callable[[GGROEvent], None]:
    """A function that sends a nudge of batch row ``i`` to the handlers of ``run_managers[i]`` (the last one
    when there are fewer managers than rows, as when LangChain passes one manager for a whole batch). It
    ignores other events, so it serves as the decoder's listener as it is."""
    managers = [(_manager_of(rm, CallbackManager), rm.run_id) if rm is not None else None for rm in run_managers]

    def send(event: GGROEvent) -> None:
        if not managers or event.kind != "nudge":
            return
        target = managers[min(event.sequence_index, len(managers) - 1)]
        if target is not None:
            manager, run_id = target
            manager.on_custom_event(NUDGE_EVENT, nudge_payload(event), run_id=run_id)

    return send


async def asend_nudge(run_managers: Sequence[AsyncCallbackManagerForLLMRun | None], event: NudgeEvent) -> None:
    """Async counterpart of :func:`nudge_sender` for one event."""
    if not run_managers:
        return
    run_manager = run_managers[min(event.sequence_index, len(run_managers) - 1)]
    if run_manager is not None:
        await _manager_of(run_manager, AsyncCallbackManager).on_custom_event(
            NUDGE_EVENT, nudge_payload(event), run_id=run_manager.run_id
        )


def _chunk_nudges(chunk: GenerationChunk | ChatGenerationChunk | None) -> list[dict[str, Any]]:
    info = getattr(chunk, "generation_info", None) or {}
    nudges = info.get(NUDGES_KEY) or []
    return list(nudges)


class StreamNudgeRelay(BaseCallbackHandler):
    """Per-call handler for chat streaming: sends the nudges carried by each streamed chunk as
    ``ggro_nudge`` events to the run's other handlers."""

    run_inline = True

    def __init__(self, manager: CallbackManager) -> None:
        self._manager = manager

    def on_llm_new_token(
        self,
        token: str | list[str | dict[str, Any]],
        *,
        chunk: GenerationChunk | ChatGenerationChunk | None = None,
        run_id: UUID,
        **kwargs: Any,
    ) -> None:
        for payload in _chunk_nudges(chunk):
            self._manager.on_custom_event(NUDGE_EVENT, payload, run_id=run_id)


class AsyncStreamNudgeRelay(AsyncCallbackHandler):
    """Async :class:`StreamNudgeRelay` (for ``astream`` and ``astream_events``)."""

    run_inline = True

    def __init__(self, manager: AsyncCallbackManager) -> None:
        self._manager = manager

    async def on_llm_new_token(
        self,
        token: str | list[str | dict[str, Any]],
        *,
        chunk: GenerationChunk | ChatGenerationChunk | None = None,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        **kwargs: Any,
    ) -> None:
        for payload in _chunk_nudges(chunk):
            await self._manager.on_custom_event(NUDGE_EVENT, payload, run_id=run_id)


class GGRONudgeCollector(BaseCallbackHandler):
    """Collects ``ggro_nudge`` events, per run. Thread-safe; pass it in ``callbacks=[...]`` or a config.

    ``on_nudge(run_id, data)``, if given, is called for each event as it arrives (to print or log nudges).
    """

    run_inline = True

    def __init__(self, on_nudge: Callable[[UUID, dict[str, Any]], None] | None = None) -> None:
        self._lock = threading.Lock()
        self._events: list[tuple[UUID, dict[str, Any]]] = []
        self._on_nudge = on_nudge

    def on_custom_event(
        self,
        name: str,
        data: Any,
        *,
        run_id: UUID,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if name != NUDGE_EVENT:
            return
        with self._lock:
            self._events.append((run_id, data))
        if self._on_nudge is not None:
            self._on_nudge(run_id, data)

    @property
    def events(self) -> list[dict[str, Any]]:
        """Every nudge received, in arrival order."""
        with self._lock:
            return [data for _, data in self._events]

    @property
    def by_run(self) -> dict[UUID, list[dict[str, Any]]]:
        """Nudges grouped by the run (LLM or chat-model call) they belong to."""
        grouped: dict[UUID, list[dict[str, Any]]] = defaultdict(list)
        with self._lock:
            for run_id, data in self._events:
                grouped[run_id].append(data)
        return dict(grouped)

    def clear(self) -> None:
        with self._lock:
            self._events.clear()
