"""Run many sequences' decoding coroutines together, batching their policy forward passes.

Each sequence is a generator that yields a :class:`FeedRequest` (tokens to feed, answered with their logits)
or a :class:`Rollback` (answered with None) and returns its result. The scheduler advances every sequence
until it waits on a forward pass, runs one pass for all of them (:class:`PolicyBatch`), and repeats; a finished
sequence leaves the batch. Events the sequences emit are yielded between passes, untouched.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import torch
from transformers import PreTrainedModel

from ._batch import FeedRequest, PolicyBatch, Rollback

__all__ = ["Outbox", "PassCount", "SequenceCoroutine", "run_batched"]

E = TypeVar("E")
R = TypeVar("R")

SequenceCoroutine = Generator[FeedRequest | Rollback, torch.Tensor | None, R]


@dataclass
class PassCount:
    """The policy work done for one sequence (its share of the batched passes), for its usage report."""

    forward_passes: int = 0
    tokens_processed: int = 0


class Outbox(Generic[E]):
    """Where sequences put their events: the listener sees each at once, the caller when the scheduler yields."""

    def __init__(self, listener: Callable[[E], object] | None = None) -> None:
        self._listener = listener
        self._queue: deque[E] = deque()

    def put(self, event: E) -> None:
        if self._listener is not None:
            self._listener(event)
        self._queue.append(event)

    def drain(self) -> Iterator[E]:
        while self._queue:
            yield self._queue.popleft()


def run_batched(
    model: PreTrainedModel,
    sequences: Sequence[SequenceCoroutine[R]],
    counts: Sequence[PassCount],
    outbox: Outbox[E],
    *,
    pad_token_id: int = 0,
) -> Generator[E, None, list[R]]:
    """Drive ``sequences`` to their ends; yields the events they put in ``outbox`` and returns their results in
    order. ``counts[i]`` accumulates the passes that fed sequence ``i``. Closing this generator closes them all."""
    batch = PolicyBatch(model, len(sequences), pad_token_id=pad_token_id)
    row_of = list(range(len(sequences)))
    pending: dict[int, FeedRequest] = {}
    results: list[R | None] = [None] * len(sequences)

    def advance(i: int, value: torch.Tensor | None) -> None:
        try:
            request = sequences[i].send(value)
            while isinstance(request, Rollback):
                batch.rollback(row_of[i], request.length)
                request = sequences[i].send(None)
            pending[i] = request
        except StopIteration as stop:
            results[i] = stop.value

    try:
        with torch.inference_mode(False):  # sequences may take gradients (of a reward) between passes
            for i in range(len(sequences)):
                advance(i, None)
            yield from outbox.drain()
            while pending:
                active = sorted(pending)
                if len(active) < len(batch.rows):
                    batch.drop_rows([row_of[i] for i in active])
                    for new_row, i in enumerate(active):
                        row_of[i] = new_row
                requests = {row_of[i]: pending[i] for i in active}
                logits = batch.step(requests)
                pending.clear()
                for i in active:
                    counts[i].forward_passes += 1
                    counts[i].tokens_processed += len(requests[row_of[i]].tokens)
                    advance(i, logits[row_of[i]])
                yield from outbox.drain()
    finally:
        for s in sequences:
            s.close()
    return [r for r in results if r is not None]
