"""What a grammar costs: the same prompts decoded with and without a constraint, side by side in one run.

Reported per configuration (greedy, i.e. one candidate per segment, and GGRO with its default refinement):
the median seconds per response token with and without the constraint, their ratio, and the grammar's own
time per token (masks and keeping the structure closable; ``Timing.constraint_seconds``). Constrained and
unconstrained responses differ in length, so the comparison is per token.

    python -m ggro.lab.constraint_bench --policy qwen2.5-coder-0.5b-instruct --runs 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

from ..config import GGROConfig
from ..constraints import Constraint
from ..decoder import GGRODecoder
from ..structured import prepare_chat_call
from .agent_tasks import TASKS

__all__ = ["main", "run"]

_TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "multiply",
            "description": "Multiply two integers and return the product.",
            "parameters": {
                "type": "object",
                "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                "required": ["a", "b"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "lookup",
            "description": "Look up a fact and return it.",
            "parameters": {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]},
        },
    },
]
_ANSWER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "answer": {"type": "string"},
        "confidence": {"enum": ["low", "medium", "high"]},
        "needs_tool": {"type": "boolean"},
    },
    "required": ["answer", "confidence", "needs_tool"],
    "additionalProperties": False,
}


def run(decoder: GGRODecoder, prompts: int, runs: int, max_new_tokens: int) -> dict[str, Any]:
    """Per configuration and constraint kind: median seconds per token with and without, and the grammar's."""
    questions = [t.question for t in TASKS[:prompts]]
    kinds = {
        "tool call (auto)": lambda q: prepare_chat_call(decoder, [{"role": "user", "content": q}], tools=_TOOLS),
        "JSON schema": lambda q: prepare_chat_call(
            decoder,
            [{"role": "user", "content": q + " Answer in JSON."}],
            response_format={"type": "json_schema", "json_schema": {"name": "answer", "schema": _ANSWER_SCHEMA}},
        ),
    }
    settings = {"greedy (1 candidate)": GGROConfig(refinement_steps=1), "GGRO (defaults)": GGROConfig()}
    rows: list[dict[str, Any]] = []
    decoder.grammar_vocabulary()  # built once per tokenizer; not part of any call's cost
    for setting, base in settings.items():
        config = base.model_copy(update={"max_new_tokens": max_new_tokens})
        for kind, prepare in kinds.items():
            per_token: dict[str, list[float]] = {"constrained": [], "unconstrained": [], "grammar": []}
            for _ in range(runs):
                for question in questions:
                    call = prepare(question)
                    for label, constraint in (("unconstrained", None), ("constrained", call.constraint)):
                        result = _decode(decoder, call.prompt_ids, config, constraint)
                        tokens = max(1, len(result.token_ids))
                        per_token[label].append(result.timing.seconds / tokens)
                        if constraint is not None:
                            per_token["grammar"].append((result.timing.constraint_seconds or 0.0) / tokens)
            medians = {k: statistics.median(v) for k, v in per_token.items()}
            rows.append(
                {
                    "setting": setting,
                    "constraint": kind,
                    "responses": len(per_token["grammar"]),
                    "ms_per_token_unconstrained": 1e3 * medians["unconstrained"],
                    "ms_per_token_constrained": 1e3 * medians["constrained"],
                    "ratio": medians["constrained"] / medians["unconstrained"],
                    "grammar_ms_per_token": 1e3 * medians["grammar"],
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    return {"policy": str(getattr(decoder.policy, "name_or_path", "")), "prompts": prompts, "runs": runs, "rows": rows}


def _decode(decoder: GGRODecoder, ids: list[int], config: GGROConfig, constraint: Constraint | None) -> Any:
    started = time.perf_counter()
    result = decoder.generate_ids([ids], config=config, constraint=constraint)[0]
    assert result.timing.seconds <= time.perf_counter() - started + 1e-3
    return result


def _markdown(report: dict[str, Any]) -> str:
    lines = [
        f"Policy `{report['policy']}`, {report['prompts']} prompts x {report['runs']} runs per cell, CPU. "
        "Medians of milliseconds per response token (the prompt's prefill included, so a shorter constrained "
        "response costs more per token); the ratio is constrained / unconstrained; the grammar's share is its "
        "own time (masks, keeping the structure closable) over the constrained response's time.",
        "",
        "| setting | constraint | responses | ms/token unconstrained | ms/token constrained | ratio "
        "| grammar ms/token | grammar's share |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        lines.append(
            f"| {r['setting']} | {r['constraint']} | {r['responses']} | {r['ms_per_token_unconstrained']:.1f} | "
            f"{r['ms_per_token_constrained']:.1f} | {r['ratio']:.2f} | {r['grammar_ms_per_token']:.2f} | "
            f"{r['grammar_ms_per_token'] / r['ms_per_token_constrained']:.2%} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policy", default="qwen2.5-coder-0.5b-instruct")
    parser.add_argument("--prompts", type=int, default=6)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--out", default="docs/results/constraints")
    args = parser.parse_args(argv)
    decoder = GGRODecoder.from_pretrained(args.policy)
    report = run(decoder, args.prompts, args.runs, args.max_new_tokens)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    out.with_suffix(".md").write_text(_markdown(report))
    print(_markdown(report))


if __name__ == "__main__":
    main()
