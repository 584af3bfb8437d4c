"""Reward-model calls under the decoder's failure policy: every failure becomes a :class:`RewardError`, and a
call that takes longer than ``reward_timeout`` seconds is abandoned with a :class:`RewardTimeoutError`.

A thread cannot be stopped from outside, so a late call keeps running in a daemon thread until the model
returns; its session is never used again (the guard is ``broken`` after any failure), so the late result
touches nothing the decoder still reads.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from .base import RewardError

__all__ = ["RewardGuard", "RewardTimeoutError"]

T = TypeVar("T")


class RewardTimeoutError(RewardError):
    """A reward-model call took longer than ``reward_timeout``."""


class RewardGuard:
    """Runs one sequence's reward calls under the failure policy; remembers the first failure."""

    def __init__(self, name: str, timeout: float | None, fallback: bool = False):
        self.name = name
        self.timeout = timeout
        self.fallback = fallback
        self.error: RewardError | None = None
        self.seconds = 0.0
        """Seconds spent in the calls made through this guard."""

    @property
    def broken(self) -> bool:
        """A call failed: the session may be half-updated (or still in use by a late call)."""
        return self.error is not None

    def attempt(self, fn: Callable[..., T], *args: Any) -> T | None:
        """``fn(*args)``; on a failure, None under the fallback policy, else the :class:`RewardError`."""
        try:
            return self.call(fn, *args)
        except RewardError:
            if not self.fallback:
                raise
            return None

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        if self.broken:
            raise RuntimeError("RewardGuard: the session failed before; it must not be used again")
        started = time.perf_counter()
        try:
            return fn(*args) if self.timeout is None else self._call_with_timeout(fn, *args)
        except RewardError as error:
            self.error = error
            raise
        except Exception as error:  # the RM is user code: name it, keep the original as the cause
            self.error = RewardError(f"reward model {self.name!r} failed: {type(error).__name__}: {error}")
            raise self.error from error
        finally:
            self.seconds += time.perf_counter() - started

    def _call_with_timeout(self, fn: Callable[..., T], *args: Any) -> T:
        outcome: list[Any] = []

        def run() -> None:
            try:
                outcome.append((True, fn(*args)))
            except BaseException as error:  # handed to the caller's thread below
                outcome.append((False, error))

        worker = threading.Thread(target=run, name=f"ggro-reward-{self.name}", daemon=True)
        worker.start()
        worker.join(self.timeout)
        if worker.is_alive() or not outcome:
            raise RewardTimeoutError(
                f"reward model {self.name!r} took longer than reward_timeout={self.timeout} s; the call was abandoned"
            )
        ok, value = outcome[0]
        if not ok:
            raise value
        return value
