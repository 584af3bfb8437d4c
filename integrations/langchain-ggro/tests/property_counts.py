"""Inputs tried by the property-based tests, per kind and outcome; `conftest.py` reports them at the end."""

from __future__ import annotations

from collections import Counter, defaultdict

PROPERTY_COUNTS: defaultdict[str, Counter[str]] = defaultdict(Counter)


def summary() -> str | None:
    """'property inputs tried: kind=N (a outcome, ...); ...', or None when no property test ran."""
    if not PROPERTY_COUNTS:
        return None
    parts = []
    for kind, counts in PROPERTY_COUNTS.items():
        outcomes = ", ".join(f"{n} {outcome}" for outcome, n in sorted(counts.items()) if outcome != "tried")
        parts.append(f"{kind}={counts['tried']} ({outcomes})")
    return "property inputs tried: " + "; ".join(parts)
