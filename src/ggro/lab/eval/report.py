"""Summaries, a markdown report and plots from evaluation rows (the JSONL :func:`~ggro.lab.eval.run_eval` writes).

Two plots: gold reward against wall-clock per method (the cost-quality frontier), and guidance and gold reward
against optimisation pressure (N for Best-of-N, refinement steps for GGRO): where guidance keeps rising while
gold falls, the method is hacking the guidance reward.
"""

from __future__ import annotations

import math
import random
import statistics
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...config import GGROConfig
from .metrics import coverage_at_k, distinct_n, is_refusal
from .runner import best_of_n_size, ggro_speed_variant, ggro_variant

__all__ = [
    "PAIRS",
    "MethodSummary",
    "paired_difference",
    "plot_frontier",
    "plot_pressure",
    "pressure_of",
    "render_report",
    "summarize",
]


_DEFAULT_THRESHOLD: float = GGROConfig.model_fields["entropy_threshold"].default


@dataclass(frozen=True)
class MethodSummary:
    """One method on one prompt set."""

    set: str
    method: str
    prompts: int
    guidance: float | None
    gold: float
    coverage_at_1: float
    """Share of returned responses with gold reward at or above the set's threshold."""
    pool_coverage: float | None
    """Best-of-N: share of prompts with at least one of the N samples at or above the threshold."""
    refusal_rate: float
    distinct_1: float
    distinct_2: float
    seconds: float
    """Mean wall-clock seconds per response (a batched method's share of its batch)."""
    policy_forward_passes: float
    reward_calls: float
    peak_memory_mb: float | None
    response_tokens: float


def _mean(values: Sequence[float]) -> float:
    return statistics.fmean(values) if values else math.nan


def summarize(
    rows: Sequence[Mapping[str, Any]], thresholds: Mapping[str, float], *, common_prompts: bool = False
) -> list[MethodSummary]:
    """One summary per (set, method): sets in the order they first appear, methods greedy, Best-of-N by N,
    ARGS, then GGRO by threshold and refinement steps. ``common_prompts``: only the prompts
    every method of the set has answered, so methods are compared on the same prompts."""
    by_key: dict[tuple[str, str], list[Mapping[str, Any]]] = defaultdict(list)
    sets: dict[str, int] = {}
    for row in rows:
        by_key[(row["set"], row["method"])].append(row)
        sets.setdefault(row["set"], len(sets))
    if common_prompts:
        shared: dict[str, set[int]] = {}
        for (set_name, _), group in by_key.items():
            indices = {r["index"] for r in group}
            shared[set_name] = shared[set_name] & indices if set_name in shared else indices
        by_key = {k: [r for r in g if r["index"] in shared[k[0]]] for k, g in by_key.items()}
    summaries = []
    for (set_name, method), group in sorted(by_key.items(), key=lambda item: (sets[item[0][0]], _order(item[0][1]))):
        if not group:
            continue
        threshold = thresholds[set_name]
        guidance = [r["guidance_reward"] for r in group if r["guidance_reward"] is not None]
        pools = [r["candidate_gold_rewards"] for r in group if r["candidate_gold_rewards"]]
        memory = [r["peak_memory_mb"] for r in group if r.get("peak_memory_mb") is not None]
        texts = [r["text"] for r in group]
        summaries.append(
            MethodSummary(
                set=set_name,
                method=method,
                prompts=len(group),
                guidance=_mean(guidance) if guidance else None,
                gold=_mean([r["gold_reward"] for r in group]),
                coverage_at_1=coverage_at_k([[r["gold_reward"]] for r in group], 1, threshold),
                pool_coverage=coverage_at_k(pools, max(len(p) for p in pools), threshold) if pools else None,
                refusal_rate=sum(is_refusal(t) for t in texts) / len(texts),
                distinct_1=distinct_n(texts, 1),
                distinct_2=distinct_n(texts, 2),
                seconds=_mean([r["seconds"] for r in group]),
                policy_forward_passes=_mean([r["policy_forward_passes"] for r in group]),
                reward_calls=_mean([r["reward_calls"] for r in group]),
                peak_memory_mb=max(memory) if memory else None,
                response_tokens=_mean([r["response_tokens"] for r in group]),
            )
        )
    return summaries


def _order(method: str) -> tuple[int, str, int, str]:
    pressure = pressure_of(method)
    if method == "greedy":
        return (0, "", 0, method)
    if pressure is not None and pressure[0] == "Best-of-N":
        return (1, "", pressure[1], method)
    if pressure is not None:
        return (3, pressure[0], pressure[1], method)
    return (2, "", 0, method)  # ARGS and anything else


def pressure_of(method: str) -> tuple[str, int] | None:
    """``(family, pressure)`` of a method name: Best-of-N → ("Best-of-N", N); GGRO → ("GGRO t=T", R), an
    omitted R or T being the decoder's default (``ggro`` is "GGRO t=1.5" at 8 steps); None for the others."""
    if (n := best_of_n_size(method)) is not None:
        return "Best-of-N", n
    if (variant := ggro_variant(method)) is not None:
        steps, threshold = variant
        return f"GGRO t={_DEFAULT_THRESHOLD if threshold is None else threshold:g}", steps
    return None


def _fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def render_report(
    rows: Sequence[Mapping[str, Any]],
    thresholds: Mapping[str, float],
    *,
    title: str,
    settings: Mapping[str, Any],
    plots: Sequence[str] = (),
) -> str:
    """The markdown report: one table per prompt set (every method on the prompts it ran), then, where
    methods ran on different numbers of prompts, the same on the prompts all of them share."""
    lines = [f"# {title}", ""]
    lines += [f"- {key}: `{value}`" for key, value in settings.items()]
    lines += [f"- gold threshold for coverage (`{s}`): {t}" for s, t in thresholds.items()]
    lines += [
        "",
        "Columns: guidance = the reward that steers; gold = the held-out judge (never steers); "
        "cov@1 = share of responses with gold ≥ threshold; pool cov = Best-of-N, share of prompts with any "
        "of the N samples ≥ threshold; refusal = string-match refusal rate; d-1/d-2 = distinct-1/2; "
        "s/resp = mean wall-clock seconds per response (batched methods: share of the batch); fwd = policy "
        "forward passes; RM = reward-model calls; peak MiB = process peak RSS (CPU) or CUDA peak while the "
        "method ran.",
        "",
    ]
    for heading, common in (("All responses", False), ("On the prompts every method answered", True)):
        if common and not _uneven(rows):
            break  # every method ran on the same prompts: the first table already is this one
        summaries = summarize(rows, thresholds, common_prompts=common)
        lines += [f"## {heading}", ""]
        for set_name in dict.fromkeys(s.set for s in summaries):
            lines += [
                f"### {set_name}",
                "",
                "| method | n | guidance | gold | cov@1 | pool cov | refusal | d-1 | d-2 | tokens | s/resp "
                "| fwd | RM | peak MiB |",
                "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
            ]
            for s in (s for s in summaries if s.set == set_name):
                lines.append(
                    f"| {s.method} | {s.prompts} | {_fmt(s.guidance)} | {_fmt(s.gold)} | {_fmt(s.coverage_at_1, 2)} "
                    f"| {_fmt(s.pool_coverage, 2)} | {_fmt(s.refusal_rate, 2)} | {_fmt(s.distinct_1, 2)} "
                    f"| {_fmt(s.distinct_2, 2)} | {_fmt(s.response_tokens, 1)} | {_fmt(s.seconds, 2)} "
                    f"| {_fmt(s.policy_forward_passes, 1)} | {_fmt(s.reward_calls, 1)} | {_fmt(s.peak_memory_mb, 0)} |"
                )
            lines.append("")
    lines += _paired_section(rows)
    for plot in plots:
        lines += [f"![{Path(plot).stem}]({Path(plot).name})", ""]
    return "\n".join(lines)


PAIRS = [("ggro", "greedy"), ("ggro", "bon-4"), ("ggro", "bon-16"), ("ggro", "args"), ("bon-16", "greedy")]
"""The comparisons the paired section reports, where both methods ran."""


def paired_difference(
    rows: Sequence[Mapping[str, Any]],
    set_name: str,
    method: str,
    baseline: str,
    *,
    key: str = "gold_reward",
    resamples: int = 2000,
    seed: int = 0,
) -> tuple[float, float, float, int] | None:
    """Mean of ``method - baseline`` over the prompts of ``set_name`` both answered, with a 95% bootstrap
    interval over prompts (seeded): ``(mean, low, high, n)``; None when they share no prompt."""
    by_prompt: dict[str, dict[int, float]] = {method: {}, baseline: {}}
    for row in rows:
        if row["set"] == set_name and row["method"] in by_prompt and row.get(key) is not None:
            by_prompt[row["method"]][row["index"]] = float(row[key])
    shared = sorted(set(by_prompt[method]) & set(by_prompt[baseline]))
    if not shared:
        return None
    diffs = [by_prompt[method][i] - by_prompt[baseline][i] for i in shared]
    rng = random.Random(seed)
    means = sorted(statistics.fmean(rng.choices(diffs, k=len(diffs))) for _ in range(resamples))
    return statistics.fmean(diffs), means[int(0.025 * resamples)], means[int(0.975 * resamples) - 1], len(diffs)


def _paired_section(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    lines = [
        "## Paired differences",
        "",
        "Per prompt, method minus baseline, on the prompts both answered; mean and 95% bootstrap interval over "
        "prompts (2000 resamples, seed 0). An interval that excludes 0 is a difference these prompts support.",
        "",
    ]
    # The secondary judge (the MiniLM probe beside an LLM gold judge) gets a column when rows carry it.
    probe = any(r.get("probe_reward") is not None for r in rows)
    lines += (
        ["| set | method − baseline | n | gold | probe (secondary) | guidance |", "|---|---|---|---|---|---|"]
        if probe
        else ["| set | method − baseline | n | gold | guidance |", "|---|---|---|---|---|"]
    )
    found = False
    # Each speed variant of GGRO (a refinement mode, early exit) against GGRO at the default preset (`ggro`).
    methods = list(dict.fromkeys(r["method"] for r in rows))
    speed = [(m, "ggro") for m in methods if ggro_speed_variant(m) is not None]
    # GGRO against every Best-of-N that ran, not only PAIRS' (a BoN-8 is the one matched to GGRO's cost on CPU).
    sizes = sorted(n for n in (best_of_n_size(m) for m in methods) if n is not None)
    best_of_n = [("ggro", f"bon-{n}") for n in sizes if ("ggro", f"bon-{n}") not in PAIRS]
    for set_name in dict.fromkeys(r["set"] for r in rows):
        for method, baseline in [*PAIRS, *best_of_n, *speed]:
            gold = paired_difference(rows, set_name, method, baseline)
            if gold is None:
                continue
            found = True
            guidance = paired_difference(rows, set_name, method, baseline, key="guidance_reward")
            secondary = (
                f" {_interval(paired_difference(rows, set_name, method, baseline, key='probe_reward'))} |"
                if probe
                else ""
            )
            lines.append(
                f"| {set_name} | {method} − {baseline} | {gold[3]} | {_interval(gold)} |{secondary} "
                f"{_interval(guidance)} |"
            )
    return [*lines, ""] if found else []


def _interval(difference: tuple[float, float, float, int] | None) -> str:
    if difference is None:
        return "n/a"
    mean, low, high, _ = difference
    return f"{mean:+.3f} [{low:+.3f}, {high:+.3f}]"


def _answered(rows: Sequence[Mapping[str, Any]]) -> dict[tuple[str, str], set[int]]:
    """The prompt indices each (set, method) answered."""
    answered: dict[tuple[str, str], set[int]] = defaultdict(set)
    for row in rows:
        answered[(row["set"], row["method"])].add(row["index"])
    return answered


def _uneven(rows: Sequence[Mapping[str, Any]]) -> bool:
    by_set: dict[str, list[set[int]]] = defaultdict(list)
    for (set_name, _), indices in _answered(rows).items():
        by_set[set_name].append(indices)
    return any(any(i != group[0] for i in group) for group in by_set.values())


def plot_frontier(rows: Sequence[Mapping[str, Any]], thresholds: Mapping[str, float], path: Path) -> Path:
    """Gold reward against mean seconds per response, one point per method, one panel per set.

    Top row: the methods that answered as many prompts as any in the set (a sweep run on fewer prompts is
    left out). Bottom row, for sets where a sweep ran on fewer prompts: every method on the prompts all of
    them answered, each family's points (Best-of-N by N, GGRO by steps) joined, so methods compare at matched
    wall-clock."""
    plt = _pyplot()
    counts = _answered(rows)
    most = {s: max(len(i) for (name, _), i in counts.items() if name == s) for s, _ in counts}
    full = [r for r in rows if len(counts[(r["set"], r["method"])]) == most[r["set"]]]
    top = summarize(full, thresholds, common_prompts=True)
    sets = list(dict.fromkeys(s.set for s in top))
    swept = {name for name in sets if any(len(i) < most[name] for (s, _), i in counts.items() if s == name)}
    every = summarize(rows, thresholds, common_prompts=True) if swept else []
    fig, axes = plt.subplots(
        2 if swept else 1, len(sets), figsize=(4.2 * len(sets), 3.8 * (2 if swept else 1)), squeeze=False
    )
    for column, set_name in enumerate(sets):
        _frontier_panel(axes[0][column], [s for s in top if s.set == set_name], set_name)
        if not swept:
            continue
        if set_name in swept:
            _frontier_panel(axes[1][column], [s for s in every if s.set == set_name], f"{set_name}, with the sweep")
        else:
            axes[1][column].axis("off")
    return _save(fig, "Cost-quality frontier: gold reward vs wall-clock", path)


def _frontier_panel(ax: Any, summaries: Sequence[MethodSummary], title: str) -> None:
    families: dict[str, list[tuple[int, MethodSummary]]] = defaultdict(list)
    for s in summaries:
        family = pressure_of(s.method)
        if family is not None:
            families[family[0]].append((family[1], s))
        marker = ({"Best-of-N": "s"}.get(family[0], "o")) if family else "^"
        ax.scatter(s.seconds, s.gold, marker=marker, color=_colour(family[0] if family else s.method), zorder=3)
        ax.annotate(s.method, (s.seconds, s.gold), fontsize=6, xytext=(3, 3), textcoords="offset points")
    for name, points in families.items():
        if len(points) > 1:
            points.sort(key=lambda p: p[0])
            line = [s for _, s in points]
            ax.plot([s.seconds for s in line], [s.gold for s in line], color=_colour(name), alpha=0.5, label=name)
    if any(len(points) > 1 for points in families.values()):
        ax.legend(fontsize=7)
    _log2_axis(ax)
    ax.set_title(f"{title} (n={summaries[0].prompts})", fontsize=9)
    ax.set_xlabel("seconds per response (log scale)", fontsize=8)
    ax.set_ylabel("gold reward (mean)", fontsize=8)
    ax.grid(alpha=0.3)


def _colour(name: str) -> str:
    """One colour per method family, the same in every panel."""
    palette = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:olive"]
    known = {"greedy": 0, "Best-of-N": 1, "args": 3}
    family = "args" if name.startswith("args") else name  # args, args-k5-w2, ...
    if family in known:
        return palette[known[family]]
    return palette[4 + sum(map(ord, name)) % 4]  # GGRO families (stable across runs, unlike hash())


def _log2_axis(ax: Any) -> None:
    """A base-2 log x axis labelled with plain numbers (0.5, 1, 2, 4), without crowded minor labels."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())


def plot_pressure(rows: Sequence[Mapping[str, Any]], thresholds: Mapping[str, float], path: Path) -> Path | None:
    """Guidance (top) and gold (bottom) reward against optimisation pressure, one line per family (Best-of-N
    by N, GGRO by refinement steps per entropy threshold), greedy as a dashed line; one column per set that
    has at least two pressures of a family. None when no set has."""
    plt = _pyplot()
    relevant = [r for r in rows if pressure_of(r["method"]) or r["method"] == "greedy"]
    summaries = summarize(relevant, thresholds, common_prompts=True)
    families: dict[str, dict[str, list[tuple[int, MethodSummary]]]] = defaultdict(lambda: defaultdict(list))
    for s in summaries:
        if pressure := pressure_of(s.method):
            families[s.set][pressure[0]].append((pressure[1], s))
    sets = [name for name, fams in families.items() if any(len(points) > 1 for points in fams.values())]
    if not sets:
        return None
    fig, axes = plt.subplots(2, len(sets), figsize=(4.4 * len(sets), 6.4), squeeze=False)
    for column, set_name in enumerate(sets):
        greedy = next((s for s in summaries if s.set == set_name and s.method == "greedy"), None)
        for row_index, (label, value) in enumerate((("guidance", "guidance"), ("gold", "gold"))):
            ax = axes[row_index][column]
            for name, points in sorted(families[set_name].items()):
                points.sort(key=lambda p: p[0])
                ys = [getattr(s, value) for _, s in points]
                ax.plot(
                    [p for p, _ in points],
                    [math.nan if y is None else y for y in ys],
                    marker="o",
                    color=_colour(name),
                    label=name,
                )
            if greedy is not None and getattr(greedy, value) is not None:
                ax.axhline(getattr(greedy, value), linestyle="--", color="grey", label="greedy")
            _log2_axis(ax)
            if row_index == 1:
                ax.set_xlabel("N (Best-of-N) or refinement steps (GGRO)", fontsize=8)
            ax.set_ylabel(f"{label} reward (mean)", fontsize=8)
            n = next(s.prompts for s in summaries if s.set == set_name)
            ax.set_title(f"{set_name}: {label} (n={n})", fontsize=9)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    return _save(fig, "Reward hacking check: guidance and gold vs optimisation pressure", path)


def _pyplot() -> Any:
    """matplotlib's pyplot on the file-only Agg backend (an optional dependency: the `eval` extra)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, title: str, path: Path) -> Path:
    plt = _pyplot()
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
