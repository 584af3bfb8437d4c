"""Command line: ``ggro generate``, ``ggro reference-check``, ``ggro bench``."""

from __future__ import annotations

import argparse
import json
import sys
import types
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from .config import GGROConfig

__all__ = ["main"]

_NUDGE_OPEN, _NUDGE_CLOSE = "⟦", "⟧"


def _add_config_options(parser: argparse.ArgumentParser) -> None:
    """One option per GGROConfig field (``--entropy-threshold`` ...), defaulting to the preset's value."""
    group = parser.add_argument_group("GGRO settings (GGROConfig fields; defaults from --preset)")
    group.add_argument("--preset", choices=["default", "reference"], default="default")
    for name, info in GGROConfig.model_fields.items():
        flag = "--" + name.replace("_", "-")
        annotation = info.annotation
        help_text = info.description or ""
        if annotation is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif get_origin(annotation) is Literal:
            group.add_argument(flag, choices=list(get_args(annotation)), default=None, help=help_text)
        elif name == "stop_sequences":
            group.add_argument("--stop", dest=name, action="append", default=None, help=help_text)
        else:
            base: Any = annotation
            if get_origin(annotation) in (types.UnionType,) or str(get_origin(annotation)) == "typing.Union":
                base = next(a for a in get_args(annotation) if a is not type(None))
            group.add_argument(flag, type=base, default=None, help=help_text)


def _config_from_args(args: argparse.Namespace) -> GGROConfig:
    overrides = {n: getattr(args, n) for n in GGROConfig.model_fields if getattr(args, n, None) is not None}
    return GGROConfig.preset(args.preset, **overrides)


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--policy", default=None, help="Policy model id or path (default: embedded SmolLM2-135M).")
    parser.add_argument(
        "--reward", default=None, help="Reward model id or path (default: the embedded reward; see the startup line)."
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])


def _build_decoder(args: argparse.Namespace, config: GGROConfig) -> Any:
    import torch

    from .decoder import GGRODecoder

    dtype = getattr(torch, args.dtype)
    return GGRODecoder.from_pretrained(args.policy, args.reward, config, dtype=dtype, device=args.device)


def _render(result: Any) -> str:
    parts = []
    for seg in result.segments:
        parts.append(f"{_NUDGE_OPEN}{seg.text}{_NUDGE_CLOSE}" if seg.nudged else seg.text)
    return "".join(parts)


def _cmd_generate(args: argparse.Namespace) -> int:
    config = _config_from_args(args)
    decoder = _build_decoder(args, config)
    if not args.json:
        print(f"policy: {args.policy or 'SmolLM2-135M-Instruct (embedded)'} | reward: {decoder.reward.name}")
        print(f"nudged segments are marked {_NUDGE_OPEN}like this{_NUDGE_CLOSE}\n")
    results = decoder.generate(list(args.prompts)) if args.batch else [decoder.generate(p)[0] for p in args.prompts]
    for prompt, result in zip(args.prompts, results, strict=True):
        if args.json:
            print(
                json.dumps(
                    {
                        "prompt": prompt,
                        "text": result.text,
                        "nudges": [n.model_dump() for n in result.nudges],
                        "num_nudges": result.num_nudges,
                        "segments": [s.model_dump() for s in result.segments],
                        "usage": result.usage.model_dump(),
                        "final_reward": result.final_reward,
                        "finish_reason": result.finish_reason,
                        "seconds": result.timing.seconds,
                    }
                )
            )
        else:
            print(f"> {prompt}\n{_render(result)}")
            reward = f"{result.final_reward:.4f}" if result.final_reward is not None else "n/a"
            print(
                f"[segments: {len(result.segments)}, nudges: {result.num_nudges}, reward: {reward}, "
                f"seconds: {result.timing.seconds:.2f}]\n"
            )
    return 0


def _cmd_reference_check(args: argparse.Namespace) -> int:
    from .reference import run_reference_check

    def show(r: Any) -> None:
        status = "PASS" if r.passed else "FAIL"
        detail = r.summary + ("" if r.passed else " | " + "; ".join(r.problems))
        print(f"{r.case_id}: {status} ({r.seconds:.1f}s) {detail}", flush=True)

    reports = run_reference_check(Path(args.directory), on_report=show)
    failed = sum(not r.passed for r in reports)
    print(f"{len(reports) - failed} passed, {failed} failed")
    return 1 if failed else 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from .bench import run_bench

    return run_bench(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ggro", description="Gradient-Guided Reward Optimization for local LLMs")
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="Generate aligned responses for one or more prompts.")
    gen.add_argument("prompts", nargs="+")
    gen.add_argument("--json", action="store_true", help="One JSON object per prompt.")
    gen.add_argument("--batch", action="store_true", help="Decode all prompts together as one batch.")
    _add_model_options(gen)
    _add_config_options(gen)
    gen.set_defaults(func=_cmd_generate)

    ref = sub.add_parser("reference-check", help="Reproduce the authors'-release fixture cases in DIR.")
    ref.add_argument("directory")
    ref.set_defaults(func=_cmd_reference_check)

    bench = sub.add_parser("bench", help="Greedy vs GGRO vs the release's re-prefill structure, side by side.")
    bench.add_argument("--json", action="store_true")
    bench.add_argument("--runs", type=int, default=3)
    bench.add_argument("--prompts", type=int, default=8)
    bench.add_argument("--max-new-tokens", type=int, default=48)
    bench.add_argument("--refinement-steps", type=int, default=8)
    bench.add_argument("--entropy-threshold", type=float, default=1.5)
    bench.add_argument("--out", default=None, help="Write the markdown report here (e.g. docs/benchmarks.md).")
    bench.add_argument(
        "--synthetic-1b",
        action="store_true",
        help="Use randomly initialised ~1B Llama-shaped policy and RM (for GPU runs).",
    )
    bench.add_argument(
        "--tokenizer",
        default=None,
        help="Tokenizer id or path for --synthetic-1b (default: the embedded policy's; a machine without the "
        "cache or a package index can pass a folder holding tokenizer.json).",
    )
    bench.add_argument("--device", default="cpu")
    bench.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    bench.add_argument("--memory-probe", default=None, help=argparse.SUPPRESS)
    bench.set_defaults(func=_cmd_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
    except (ValueError, TypeError) as exc:
        print(f"ggro: error: {exc}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    raise SystemExit(main())
