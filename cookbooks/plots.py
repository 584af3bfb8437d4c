"""Plot the policy's entropy along GGRO responses, with the nudges marked (shared by the cookbooks)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: cookbooks run headless
import matplotlib.pyplot as plt
from matplotlib.ticker import MaxNLocator


@dataclass
class EntropyTrace:
    """One response: entropy before each token, and the nudges tried in it (``ggro_nudge`` payloads)."""

    label: str
    entropies: Sequence[float]
    nudges: Sequence[dict[str, Any]] = field(default_factory=list)


def plot_entropy(traces: Sequence[EntropyTrace], threshold: float, path: Path, title: str) -> Path:
    """One panel per response: the entropy curve, the threshold that ends segments, and each nudge at its
    insertion position (filled: the nudged candidate was kept; hollow: the draft won)."""
    fig, axes = plt.subplots(len(traces), 1, figsize=(11, 2.6 * len(traces)), squeeze=False, sharex=False)
    for ax, trace in zip(axes[:, 0], traces, strict=True):
        ax.plot(range(len(trace.entropies)), trace.entropies, color="#4477aa", linewidth=1.2, label="entropy")
        ax.axhline(threshold, color="#999999", linestyle="--", linewidth=1, label=f"threshold {threshold:g}")
        kept = [n for n in trace.nudges if n["kept"]]
        tried = [n for n in trace.nudges if not n["kept"]]
        if kept:
            ax.scatter(
                [n["insertion_position"] for n in kept], [n["entropy"] for n in kept],
                color="#cc3311", zorder=3, label="nudge kept",
            )  # fmt: skip
            for n in kept:
                ax.annotate(
                    f"{n['draft_token'].strip() or '␣'}→{n['nudge_token'].strip() or '␣'}",
                    (n["insertion_position"], n["entropy"]), textcoords="offset points", xytext=(2, 5), fontsize=7,
                )  # fmt: skip
        if tried:
            ax.scatter(
                [n["insertion_position"] for n in tried], [n["entropy"] for n in tried],
                facecolors="none", edgecolors="#cc3311", zorder=3, label="nudge tried, draft kept",
            )  # fmt: skip
        ax.set_title(trace.label, fontsize=9, loc="left")
        ax.set_ylabel("entropy (nats)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    axes[-1, 0].set_xlabel("response token")
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
