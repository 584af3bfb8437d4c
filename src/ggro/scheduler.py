"""Run many sequences' decoding coroutines together, batching their policy forward passes.

Each sequence is a generator that yields a :class:`FeedRequest` (tokens to feed, answered with their logits)
or a :class:`Rollback` (answered with None) and returns its result. The scheduler advances every sequence
until it waits on a forward pass, runs one pass for all of them (:class:`PolicyBatch`; the sequences' first
requests, their prompts, decide which share a cache row), and repeats; a finished sequence leaves the batch.
Sequences waiting on a reward gradient from the policy's transformer (:class:`GradientFeed`) are answered
together in one pass with gradients, once a few wait or the oldest has waited a few passes
(:data:`GRADIENT_GATHER`, :data:`GRADIENT_WAIT_PASSES`). Events the sequences emit are yielded between passes,
untouched.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import torch
from transformers import PreTrainedModel

from ._batch import Answer, BranchFeed, FeedRequest, Fork, GradientFeed, PolicyBatch, Request, Rollback, shared_homes

__all__ = ["Outbox", "PassCount", "SequenceCoroutine", "run_batched"]

E = TypeVar("E")
R = TypeVar("R")

SequenceCoroutine = Generator[Request, Answer, R]

GRADIENT_GATHER = 2
"""Gradient requests take their pass (a forward and backward of their own) once this many wait (or see
:data:`GRADIENT_WAIT_PASSES`)."""
GRADIENT_WAIT_PASSES = 2
"""Gradient requests take their pass once the oldest has let this many feed passes go by (or see
:data:`GRADIENT_GATHER`), or at once when nothing else waits on a pass. A gradient pass costs about
a feed pass whether it serves one request or several, and every other sequence waits through it; a request that
waits a pass or two for company costs its own sequence those passes only. Bench traces (SmolLM2-135M, 8
prompts, 48 new tokens, sequences sharing a cache row; one run each, same tokens in all): gradients at once 74
gradient passes, 36.0 s; wait 2, gather 2: 49 passes, 27.7 s; wait 1, gather 2: 56, 28.6 s; wait 2, gather 3:
44, 31.0 s; wait 3, gather 4: 40, 30.7 s (the feed passes grow as requests wait longer)."""


@dataclass
class PassCount:
    """The policy work done for one sequence (its share of the batched passes), for its usage report."""

    forward_passes: int = 0
    tokens_processed: int = 0
    seconds: float = 0.0


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
    new_tokens: int = 0,
) -> Generator[E, None, list[R]]:
    """Drive ``sequences`` to their ends; yields the events they put in ``outbox`` and returns their results in
    order. ``counts[i]`` accumulates the passes that fed sequence ``i``. ``new_tokens``: how many tokens a
    sequence may add to its prompt (it decides, with the prompts, which sequences share a cache row). Closing
    this generator closes them all."""
    # The owner of each batch row: (sequence, branch), branch -1 for the sequence's own row.
    owners: list[tuple[int, int]] = []
    pending: dict[int, FeedRequest | BranchFeed | GradientFeed] = {}
    results: list[R | None] = [None] * len(sequences)
    # Passes a gradient request has let go by (it waits for others to share its pass).
    gradient_waits: dict[int, int] = {}

    def row(i: int, branch: int = -1) -> int:
        return owners.index((i, branch))

    def keep_rows(keep: list[int]) -> None:
        nonlocal owners
        if len(keep) < len(owners):
            batch.drop_rows(keep)
            owners = [owners[r] for r in keep]

    def advance(i: int, value: Answer) -> None:
        try:
            settle(i, sequences[i].send(value))
        except StopIteration as stop:
            results[i] = stop.value

    def settle(i: int, request: Request) -> None:
        """Carry out ``request`` and the cache operations after it, up to one that waits on a pass."""
        try:
            while not isinstance(request, FeedRequest | BranchFeed | GradientFeed):
                if isinstance(request, Rollback):
                    branch = -1 if request.branch is None else request.branch
                    batch.rollback(row(i, branch), request.length)
                elif isinstance(request, Fork):
                    new_rows = batch.fork(row(i), request.count, request.length)
                    owners.extend((i, b) for b in range(len(new_rows)))
                else:  # Join
                    if request.keep is not None:
                        batch.adopt_row(row(i), row(i, request.keep))
                    keep_rows([r for r, (s, b) in enumerate(owners) if s != i or b < 0])
                request = sequences[i].send(None)
            pending[i] = request
        except StopIteration as stop:
            results[i] = stop.value

    try:
        with torch.inference_mode(False):  # sequences may take gradients (of a reward) between passes
            # Each sequence's first request (its prompt) decides which sequences share a cache row.
            first: dict[int, Request] = {}
            for i in range(len(sequences)):
                try:
                    first[i] = next(sequences[i])
                except StopIteration as stop:
                    results[i] = stop.value
            lengths = [len(r.tokens) if isinstance(r, FeedRequest) else 0 for r in first.values()]
            owners = [(i, -1) for i in first]
            homes = shared_homes(model, lengths, new_tokens)
            batch = PolicyBatch(model, len(owners), pad_token_id=pad_token_id, homes=homes)
            for i, request in first.items():
                settle(i, request)
            yield from outbox.drain()
            while pending:
                keep_rows([r for r, (s, _) in enumerate(owners) if s in pending])  # finished sequences leave
                gradients = {i: r for i, r in pending.items() if isinstance(r, GradientFeed)}
                waiting = {i: r for i, r in pending.items() if not isinstance(r, GradientFeed)}
                for i in gradients:
                    gradient_waits[i] = gradient_waits.get(i, -1) + 1
                if gradients and (
                    not waiting
                    or len(gradients) >= GRADIENT_GATHER
                    or max(gradient_waits[i] for i in gradients) >= GRADIENT_WAIT_PASSES
                ):
                    # Before the feed pass: the sequences then join it with what they feed next.
                    batch.gradient_pass({row(i): r for i, r in gradients.items()})
                    for i in sorted(gradients):
                        del pending[i], gradient_waits[i]
                        advance(i, None)
                    yield from outbox.drain()
                    continue
                feeds: dict[int, FeedRequest] = {}
                for i, request in waiting.items():
                    if isinstance(request, FeedRequest):
                        feeds[row(i)] = request
                    else:
                        feeds.update((row(i, b), r) for b, r in enumerate(request.requests) if r is not None)
                started = time.perf_counter()
                logits = batch.step(feeds)
                elapsed = time.perf_counter() - started
                # Every answer is taken before any sequence advances: a fork or join moves rows.
                answers: dict[int, Answer] = {}
                for i, request in waiting.items():
                    count = counts[i]
                    count.seconds += elapsed
                    count.forward_passes += 1
                    if isinstance(request, FeedRequest):
                        count.tokens_processed += len(request.tokens)
                        answers[i] = logits[row(i)]
                    else:
                        count.tokens_processed += sum(len(r.tokens) for r in request.requests if r is not None)
                        answers[i] = [logits.get(row(i, b)) for b in range(len(request.requests))]
                for i in answers:  # the gradient requests still waiting stay
                    del pending[i]
                for i in sorted(answers):
                    advance(i, answers[i])
                yield from outbox.drain()
    finally:
        for s in sequences:
            s.close()
    return [r for r in results if r is not None]
