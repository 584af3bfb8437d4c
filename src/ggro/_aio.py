"""Iterating a decoding run and keeping its results: in the caller's thread (:class:`Decoding`), or in a
worker thread so the event loop never blocks (:class:`AsyncDecoding`)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Generator
from typing import Any

from .events import GGROEvent, GGROResult

__all__ = ["AsyncDecoding", "Decoding"]

_EVENT, _DONE, _ERROR = "event", "done", "error"


class Decoding:
    """``for event in run`` yields the segment and nudge events of ``GGRODecoder.stream(...)``; ``run.results``
    holds one result per prompt once the loop has ended. ``close()`` ends the run early."""

    def __init__(self, stream: Generator[GGROEvent, None, list[GGROResult]]) -> None:
        self._stream = stream
        self.results: list[GGROResult] | None = None

    def __iter__(self) -> Generator[GGROEvent, None, None]:
        self.results = yield from self._stream

    def close(self) -> None:
        self._stream.close()


class AsyncDecoding:
    """``async for event in run`` yields segment and nudge events as the worker thread produces them;
    ``run.results`` holds one result per prompt once the iteration has ended.

    Leaving the loop early (``break``, an exception, task cancellation) asks the worker to stop: it closes
    the decoding run at the next event boundary, so at most the segment in progress is computed in vain.
    The decoder keeps no per-call state, so the next call is unaffected either way.
    """

    def __init__(self, stream: Generator[GGROEvent, None, list[GGROResult]]) -> None:
        self._stream = stream
        self._started = False
        self.results: list[GGROResult] | None = None

    def __aiter__(self) -> AsyncIterator[GGROEvent]:
        if self._started:
            raise RuntimeError("an AsyncDecoding can be iterated only once")
        self._started = True
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[GGROEvent]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        stop = threading.Event()

        def post(kind: str, value: Any) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, (kind, value))
            except RuntimeError:  # the loop has closed: nobody is listening any more
                stop.set()

        def work() -> None:
            run = Decoding(self._stream)
            try:
                for event in run:
                    if stop.is_set():
                        return
                    post(_EVENT, event)
                post(_DONE, run.results)
            except BaseException as error:  # handed to the awaiting side, which re-raises it
                post(_ERROR, error)
            finally:
                run.close()

        worker = threading.Thread(target=work, name="ggro-decode", daemon=True)
        worker.start()
        try:
            while True:
                kind, value = await queue.get()
                if kind == _EVENT:
                    yield value
                elif kind == _DONE:
                    self.results = value
                    return
                else:
                    raise value
        finally:
            stop.set()
