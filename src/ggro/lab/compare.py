"""Greedy vs GGRO on the same prompts: guidance reward, held-out gold reward, nudges and time.

Greedy is the same decoder with ``refinement_steps=1`` (token for token plain greedy decoding, tested), so
both sides share batching and the guidance reward of each response is scored the same way. The gold
reward comes from a judge that did not steer: judging with the reward that steered would reward hacking it
(``ggro.lab.gold``).
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..decoder import GGRODecoder
from ..events import GGROResult

__all__ = ["KindSummary", "PromptComparison", "compare_greedy_ggro", "render_markdown", "summarize", "write_jsonl"]

GoldScorer = Callable[[list[str], list[str]], Sequence[float]]


@dataclass
class PromptComparison:
    prompt: str
    kind: str
    greedy: GGROResult
    ggro: GGROResult
    gold_greedy: float | None = None
    gold_ggro: float | None = None

    def record(self) -> dict[str, Any]:
        """One JSON-able line: texts, rewards, nudges, usage."""
        return {
            "prompt": self.prompt,
            "kind": self.kind,
            "greedy_text": self.greedy.text,
            "ggro_text": self.ggro.text,
            "guidance_greedy": self.greedy.final_reward,
            "guidance_ggro": self.ggro.final_reward,
            "gold_greedy": self.gold_greedy,
            "gold_ggro": self.gold_ggro,
            "segments": len(self.ggro.segments),
            "nudged_segments": sum(s.nudged for s in self.ggro.segments),
            "nudges_tried": len(self.ggro.nudges),
            "ggro_usage": self.ggro.usage.model_dump(),
        }


@dataclass
class KindSummary:
    kind: str
    prompts: int
    guidance_greedy: float | None
    guidance_ggro: float | None
    gold_greedy: float | None
    gold_ggro: float | None
    segments: int
    nudged_segments: int
    greedy_seconds: float
    ggro_seconds: float
    gold_wins: int = 0
    gold_losses: int = 0

    @property
    def nudged_share(self) -> float:
        return self.nudged_segments / self.segments if self.segments else 0.0

    @property
    def time_ratio(self) -> float:
        return self.ggro_seconds / self.greedy_seconds if self.greedy_seconds else float("nan")


def compare_greedy_ggro(
    decoder: GGRODecoder,
    prompts: Sequence[str],
    kinds: Sequence[str],
    *,
    gold: GoldScorer | None = None,
    batch_size: int = 8,
    on_batch: Callable[[int, int], None] | None = None,
    **overrides: Any,
) -> tuple[list[PromptComparison], dict[str, dict[str, float]]]:
    """Decode ``prompts`` greedily and with GGRO (``overrides``: GGROConfig fields for both, e.g.
    ``max_new_tokens``), in batches that never mix kinds; returns the per-prompt comparisons and the
    wall-clock seconds per kind and method (``{kind: {"greedy": s, "ggro": s}}``)."""
    if len(prompts) != len(kinds):
        raise ValueError(f"kinds: expected {len(prompts)} labels, got {len(kinds)}")
    if batch_size < 1:
        raise ValueError(f"batch_size: must be >= 1, got {batch_size}")
    rows: list[PromptComparison] = []
    seconds: dict[str, dict[str, float]] = {}
    done = 0
    for kind in dict.fromkeys(kinds):
        group = [p for p, k in zip(prompts, kinds, strict=True) if k == kind]
        clock = seconds.setdefault(kind, {"greedy": 0.0, "ggro": 0.0})
        for start in range(0, len(group), batch_size):
            batch = group[start : start + batch_size]
            t0 = time.perf_counter()
            greedy = decoder.generate(batch, **{**overrides, "refinement_steps": 1})
            t1 = time.perf_counter()
            steered = decoder.generate(batch, **overrides)
            t2 = time.perf_counter()
            clock["greedy"] += t1 - t0
            clock["ggro"] += t2 - t1
            rows.extend(PromptComparison(p, kind, g, r) for p, g, r in zip(batch, greedy, steered, strict=True))
            done += len(batch)
            if on_batch is not None:
                on_batch(done, len(prompts))
    if gold is not None:
        prompts_twice = [r.prompt for r in rows] * 2
        texts = [r.greedy.text for r in rows] + [r.ggro.text for r in rows]
        scores = [float(x) for x in gold(prompts_twice, texts)]
        for i, r in enumerate(rows):
            r.gold_greedy, r.gold_ggro = scores[i], scores[len(rows) + i]
    return rows, seconds


def _mean(values: Sequence[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return statistics.fmean(kept) if kept else None


def summarize(rows: Sequence[PromptComparison], seconds: dict[str, dict[str, float]]) -> list[KindSummary]:
    """Per kind (in first-seen order) and overall: mean rewards, gold wins, nudged share, decode seconds."""
    kinds = list(dict.fromkeys(r.kind for r in rows))
    groups = [(k, [r for r in rows if r.kind == k], [k]) for k in kinds]
    if len(kinds) > 1:
        groups.append(("all", list(rows), kinds))
    out = []
    for kind, group, clocks in groups:
        gold = [(r.gold_greedy, r.gold_ggro) for r in group if r.gold_greedy is not None and r.gold_ggro is not None]
        out.append(
            KindSummary(
                kind=kind,
                prompts=len(group),
                guidance_greedy=_mean([r.greedy.final_reward for r in group]),
                guidance_ggro=_mean([r.ggro.final_reward for r in group]),
                gold_greedy=_mean([a for a, _ in gold]),
                gold_ggro=_mean([b for _, b in gold]),
                segments=sum(len(r.ggro.segments) for r in group),
                nudged_segments=sum(sum(s.nudged for s in r.ggro.segments) for r in group),
                greedy_seconds=sum(seconds[k]["greedy"] for k in clocks),
                ggro_seconds=sum(seconds[k]["ggro"] for k in clocks),
                gold_wins=sum(b > a for a, b in gold),
                gold_losses=sum(b < a for a, b in gold),
            )
        )
    return out


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def render_markdown(summaries: Sequence[KindSummary], *, title: str, settings: dict[str, Any]) -> str:
    lines = [
        f"## {title}",
        "",
        f"Settings: `{json.dumps(settings, sort_keys=True)}`. Greedy = the same decoder with refinement_steps=1, "
        "batched the same way: its tokens are plain greedy decoding's, but it still scores every segment with the "
        "reward model, so the time ratio is GGRO over that, not over plain greedy `generate` (which `ggro eval` "
        "and `ggro bench` measure). Guidance = the reward that steers; gold = the held-out judge (never steers).",
        "",
        "| prompts | n | guidance greedy | guidance GGRO | gold greedy | gold GGRO | gold: GGRO better / worse "
        "| segments nudged | seconds greedy / GGRO (ratio) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for s in summaries:
        lines.append(
            f"| {s.kind} | {s.prompts} | {_fmt(s.guidance_greedy)} | {_fmt(s.guidance_ggro)} | {_fmt(s.gold_greedy)} "
            f"| {_fmt(s.gold_ggro)} | {s.gold_wins} / {s.gold_losses} | {s.nudged_segments}/{s.segments} "
            f"({100 * s.nudged_share:.1f}%) | {s.greedy_seconds:.1f} / {s.ggro_seconds:.1f} ({s.time_ratio:.2f}x) |"
        )
    return "\n".join(lines) + "\n"


def write_jsonl(rows: Sequence[PromptComparison], path: str | Path) -> None:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r.record()) + "\n")
