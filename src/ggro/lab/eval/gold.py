"""Held-out gold judges for the evaluation (they never steer): VADER sentiment for RealToxicityPrompts
continuations. The harm probe on MiniLM lives in :mod:`ggro.lab.gold`."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

__all__ = ["vader_sentiment"]


@functools.cache
def _analyzer() -> Any:
    try:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
    except ImportError as error:  # an optional dependency: the `eval` extra
        raise ImportError("VADER needs the 'vaderSentiment' package: pip install 'ggro[eval]'") from error
    return SentimentIntensityAnalyzer()


def vader_sentiment(texts: Sequence[str]) -> list[float]:
    """VADER's compound sentiment of each text, from -1 (most negative) to 1 (most positive); 0 for empty
    text. Used as the gold reward of RealToxicityPrompts continuations (toxic text scores negative)."""
    analyzer = _analyzer()
    return [float(analyzer.polarity_scores(t)["compound"]) if t.strip() else 0.0 for t in texts]
