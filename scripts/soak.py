"""Soak test: many short generations through LangChain's `GGROLLM` on the tiny in-process models.

Runs ``--warmup`` generations, reads the process's resident memory, runs ``--generations`` more, and reads
it again. The calls cycle through ``invoke``, ``stream`` and ``batch`` (two prompts), each with a
``GGRONudgeCollector`` callback handler attached as users do. Decoding is deterministic, so every output
must equal the first output for its prompt and every call must deliver as many ``ggro_nudge`` events as
the first call for its prompt(s) did: nothing lost, nothing corrupted. RSS is read from /proc/self/status
(VmRSS) after ``gc.collect()``.

    python scripts/soak.py                       # 500 generations after 50 warm-up, 8 new tokens each
    python scripts/soak.py --generations 2000 --max-new-tokens 16

Exit status 1 when an output or an event count differs (or ``--max-growth-mb`` is exceeded).
The langchain-ggro suite runs a shorter soak (integrations/langchain-ggro/tests/integration_tests/test_soak.py).
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

PROMPTS = [
    "Hello there",
    "What is rain?",
    "Name a colour",
    "How do plants grow?",
    "Tell me a joke.",
    "Why is the sky blue?",
    "Summarise: the cat sat on the mat.",
]
PATHS = ("invoke", "stream", "batch")


def rss_mb() -> float:
    """Resident set size of this process in MB (VmRSS of /proc/self/status), after a garbage collection."""
    gc.collect()
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024  # kB
    raise RuntimeError("no VmRSS line in /proc/self/status (Linux only)")


@dataclass
class SoakReport:
    generations: int
    warmup: int
    rss_after_warmup_mb: float
    rss_end_mb: float
    rss_samples: list[tuple[int, float]]
    calls: Counter[str]
    nudge_events: int
    checked: int
    mismatches: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def growth_mb(self) -> float:
        return self.rss_end_mb - self.rss_after_warmup_mb

    @property
    def intact(self) -> bool:
        return not self.mismatches

    def lines(self) -> list[str]:
        total = self.generations + self.warmup
        calls = ", ".join(f"{path}={self.calls[path]}" for path in PATHS)
        return [
            f"calls: {calls} ({total} generations); ggro_nudge events received: {self.nudge_events}",
            f"outputs intact: {self.checked - len(self.mismatches)}/{self.checked} equal to the first output for "
            "their prompt, with as many nudge events",
            "RSS samples (generations after warm-up: MB): " + ", ".join(f"{n}: {mb:.1f}" for n, mb in self.rss_samples),
            f"RSS after warm-up: {self.rss_after_warmup_mb:.1f} MB",
            f"RSS at the end:    {self.rss_end_mb:.1f} MB",
            f"RSS growth:        {self.growth_mb:+.1f} MB over {self.generations} generations",
            f"time: {self.seconds:.1f} s ({total / self.seconds:.1f} generations/s)",
        ]


def run_soak(
    generations: int = 500,
    warmup: int = 50,
    max_new_tokens: int = 8,
    refinement_steps: int = 3,
    sample_every: int = 100,
    log: Callable[[str], None] | None = None,
) -> SoakReport:
    """Run the soak in this process and return what it measured (see the module docstring)."""
    from langchain_ggro import GGROLLM, GGRONudgeCollector

    from ggro.testing import tiny_decoder

    started = time.perf_counter()
    llm = GGROLLM.from_decoder(tiny_decoder(), max_tokens=max_new_tokens, refinement_steps=refinement_steps)
    collector = GGRONudgeCollector()
    config = {"callbacks": [collector]}
    first_text: dict[str, str] = {}
    first_nudges: dict[str, int] = {}
    calls: Counter[str] = Counter()
    mismatches: list[str] = []
    checked = nudge_events = 0

    # Reference: each prompt once through invoke (part of the warm-up).
    for prompt in PROMPTS:
        first_text[prompt] = llm.invoke(prompt, config=config)
        first_nudges[prompt] = len(collector.events)
        nudge_events += first_nudges[prompt]
        collector.clear()  # a long-lived handler would otherwise hold every event: that growth is not a leak
    done = len(PROMPTS)
    calls["invoke"] += len(PROMPTS)
    checked += len(PROMPTS)

    def step(index: int, remaining: int) -> int:
        """One call along the next path; returns the generations it made."""
        nonlocal checked, nudge_events
        path = PATHS[index % len(PATHS)]
        if path == "batch" and remaining < 2:
            path = "invoke"
        prompts = [PROMPTS[(index + j) % len(PROMPTS)] for j in range(2 if path == "batch" else 1)]
        if path == "invoke":
            texts = [llm.invoke(prompts[0], config=config)]
        elif path == "stream":
            texts = ["".join(llm.stream(prompts[0], config=config))]
        else:
            texts = llm.batch(prompts, config=config)
        calls[path] += 1
        events = len(collector.events)
        collector.clear()
        nudge_events += events
        for prompt, text in zip(prompts, texts, strict=True):
            checked += 1
            if text != first_text[prompt]:
                mismatches.append(f"{path} #{index}: {prompt!r} gave {text!r}, first {first_text[prompt]!r}")
        expected_events = sum(first_nudges[p] for p in prompts)
        if events != expected_events:
            mismatches.append(f"{path} #{index}: {prompts!r} delivered {events} nudge events, first {expected_events}")
        return len(prompts)

    index = 0
    while done < warmup:
        done += step(index, warmup - done)
        index += 1
    rss_warm = rss_mb()
    samples: list[tuple[int, float]] = [(0, rss_warm)]
    if log:
        log(f"warm-up: {done} generations, RSS {rss_warm:.1f} MB")
    counted = 0
    while counted < generations:
        counted += step(index, generations - counted)
        index += 1
        if sample_every and counted // sample_every > samples[-1][0] // sample_every and counted < generations:
            samples.append((counted, rss_mb()))
            if log:
                log(f"  {counted} generations: RSS {samples[-1][1]:.1f} MB")
    rss_end = rss_mb()
    samples.append((counted, rss_end))
    return SoakReport(
        generations=counted,
        warmup=done,
        rss_after_warmup_mb=rss_warm,
        rss_end_mb=rss_end,
        rss_samples=samples,
        calls=calls,
        nudge_events=nudge_events,
        checked=checked,
        mismatches=mismatches,
        seconds=time.perf_counter() - started,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--generations", type=int, default=500, help="generations measured after the warm-up")
    parser.add_argument("--warmup", type=int, default=50, help="generations before the first RSS reading")
    parser.add_argument("--max-new-tokens", type=int, default=8, help="token budget of each generation")
    parser.add_argument("--refinement-steps", type=int, default=3, help="GGRO candidates per segment")
    parser.add_argument("--sample-every", type=int, default=100, help="read RSS every N generations (0: never)")
    parser.add_argument("--max-growth-mb", type=float, default=None, help="fail when RSS grows by more than this")
    args = parser.parse_args(argv)
    if args.generations < 1 or args.warmup < len(PROMPTS):
        parser.error(f"--generations must be >= 1 and --warmup >= {len(PROMPTS)} (one call per prompt)")
    print(
        f"soak: {args.generations} generations after {args.warmup} warm-up through langchain_ggro.GGROLLM "
        f"(tiny models, max_new_tokens={args.max_new_tokens}, refinement_steps={args.refinement_steps}, "
        "invoke/stream/batch of 2, GGRONudgeCollector attached)",
        flush=True,
    )
    report = run_soak(
        args.generations,
        args.warmup,
        args.max_new_tokens,
        args.refinement_steps,
        args.sample_every,
        log=lambda line: print(line, flush=True),
    )
    for line in report.lines():
        print(line)
    for mismatch in report.mismatches[:20]:
        print("MISMATCH", mismatch)
    failed = not report.intact
    if args.max_growth_mb is not None and report.growth_mb > args.max_growth_mb:
        print(f"FAIL: RSS grew by {report.growth_mb:.1f} MB (> {args.max_growth_mb} MB)")
        failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
