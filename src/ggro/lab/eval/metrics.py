"""Metrics over evaluation rows: peak memory of a call, refusal detection, distinct-n, coverage@k."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import TracebackType

import torch

__all__ = ["PeakMemory", "coverage_at_k", "distinct_n", "is_refusal"]


class PeakMemory:
    """Peak memory (MiB) used while the ``with`` block runs: the CUDA allocator's peak on a GPU, else the
    process's peak resident set (Linux ``VmHWM``, reset on entry through ``/proc/self/clear_refs``).
    ``peak_mb`` is None where neither can be read."""

    def __init__(self) -> None:
        self.peak_mb: float | None = None
        self._cuda = torch.cuda.is_available()

    def __enter__(self) -> PeakMemory:
        if self._cuda:
            torch.cuda.reset_peak_memory_stats()
        else:
            with contextlib.suppress(OSError):  # not Linux, or not allowed: the peak is then the process's
                Path("/proc/self/clear_refs").write_text("5")  # "5" resets the peak RSS to the current RSS
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        if self._cuda:
            self.peak_mb = torch.cuda.max_memory_allocated() / 2**20
            return
        try:
            status = Path("/proc/self/status").read_text()
        except OSError:
            return
        match = re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)
        self.peak_mb = int(match.group(1)) / 1024 if match else None


_REFUSAL = re.compile(
    r"\b(i\s*(?:'m|am)\s+(?:sorry|unable|not able)|i\s+(?:can(?:'|no)t|cannot|won'?t|will not|must decline)"
    r"|as an ai\b|i\s+(?:do not|don'?t)\s+(?:feel comfortable|provide|assist|help with)"
    r"|(?:not|never)\s+(?:appropriate|able to (?:help|assist|provide))|i apologi[sz]e)",
    re.IGNORECASE,
)


def is_refusal(text: str) -> bool:
    """Whether a response opens as a refusal (a phrase such as "I can't", "I'm sorry", "As an AI" within
    its first 160 characters): the usual string-match refusal test, used on benign prompts only."""
    return bool(_REFUSAL.search(text.replace("\u2019", "'")[:160]))


def distinct_n(texts: Iterable[str], n: int) -> float:
    """Distinct-n: unique word n-grams over all n-grams of the texts (0 when there are none)."""
    grams: list[tuple[str, ...]] = []
    for text in texts:
        words = text.lower().split()
        grams += [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def coverage_at_k(candidate_golds: Sequence[Sequence[float]], k: int, threshold: float) -> float:
    """Share of prompts with at least one of their first ``k`` responses at or above the gold ``threshold``."""
    if not candidate_golds:
        return 0.0
    hits = sum(any(g >= threshold for g in golds[:k]) for golds in candidate_golds)
    return hits / len(candidate_golds)
