"""Scores the LangGraph and LlamaIndex agents of the cookbooks on the tool tasks of ``ggro.lab.agent_tasks``.

Run it:  python cookbooks/agent_nudge_monitor/evaluate.py --framework both --variant improved
         python cookbooks/agent_nudge_monitor/evaluate.py --framework langgraph --variant baseline --tasks 4
         python cookbooks/agent_nudge_monitor/evaluate.py --framework both --variant improved --tiny   # seconds

Each task (a one- or two-step question over ``multiply(a, b)`` and ``lookup(query)`` with a known answer) runs
through the framework's agent on ``qwen2.5-coder-0.5b-instruct`` (``agent.py`` here: LangGraph's
``create_react_agent`` with ``ChatGGRO``; ``../llamaindex_function_agent/agent.py``: LlamaIndex's
``FunctionAgent`` with ``GGRO``), and is scored by ``ggro.lab.agent_tasks.score_run``: the first call is the
right tool with arguments the tool accepts, the right tools were called in order, how many tool results went
back to the model, the final answer holds the expected value, the loop ended with an answer by itself.

Variants (the wrappers' options): ``baseline`` = ``answer_instead_of_repeating=False, describe_tool_results=False``
(the model sees a bare result and may repeat its call); ``improved`` = the defaults (a tool result is shown as
``multiply(a=17, b=23) returned 391``; a response that only repeats an answered call is decoded again, asked
for the answer, as plain text). ``--force-first-call``: the first LLM call of each task must call a tool (the
grammar enforces ``tool_choice="any"`` / ``initial_tool_choice="required"``); always on with ``--tiny``, where
a random model would otherwise never call.

Limits: ``--max-steps K`` tool rounds, then the framework stops the loop its usual way, recorded as "not ended"
(``hit_limit``), never raised. LangGraph: ``recursion_limit = 2K+1``; ``create_react_agent`` replaces a response
that would call a tool once more by "Sorry, need more steps to process this request." and ends the run (a
``GraphRecursionError`` is caught too). LlamaIndex: ``max_iterations = K+2`` (it counts the answer too, and lets
one more tool round run), ``WorkflowRuntimeError`` "Max iterations of ... reached!".

Writes ``docs/results/agents_<framework>_<variant>.json`` (``_forced`` added with ``--force-first-call``;
``--tiny`` runs go to ``cookbooks/output/``) and prints a markdown table per framework: one row per task, totals
at the bottom.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ggro.lab.agent_tasks import TASKS, ToolTask, score_run

from agent_nudge_monitor import agent as langgraph_agent

REPO = Path(__file__).resolve().parents[2]
RESULTS_DIR = REPO / "docs" / "results"
TINY_DIR = REPO / "cookbooks" / "output"
FRAMEWORKS = ("langgraph", "llamaindex")
VARIANTS = langgraph_agent.VARIANTS
BOOLEAN_COLUMNS = ("first_call_right", "right_tools_in_order", "correct_answer", "ended_by_itself")

RunTask = Callable[[str], dict[str, Any]]


def make_runner(
    framework: str, variant: str, tiny: bool, max_tokens: int, max_steps: int, force_first_call: bool, verbose: bool
) -> tuple[RunTask, str, Callable[[], None]]:
    """A function running one question through the framework's agent, the model's name, and a clean-up."""
    options = VARIANTS[variant]
    if framework == "langgraph":
        chat = langgraph_agent.make_chat(tiny, max_tokens, **options)
        _ = chat.decoder  # load the weights now: the first task's seconds are decoding only
        graph = langgraph_agent.build_agent(chat, langgraph_agent.make_tools(), force_first_call=force_first_call)
        return (
            lambda question: langgraph_agent.run_task(graph, question, max_steps=max_steps, verbose=verbose),
            chat.model_name,
            lambda: None,
        )
    from llama_index.core.instrumentation import get_dispatcher

    from llamaindex_function_agent import agent as llamaindex_agent

    llm = llamaindex_agent.make_llm(tiny, max_tokens, **options)
    _ = llm.decoder  # load the weights now
    function_agent = llamaindex_agent.build_agent(llm, llamaindex_agent.make_tools(), force_first_call=force_first_call)
    watcher = llamaindex_agent.LLMCallWatcher(verbose=verbose)
    dispatcher = get_dispatcher()
    dispatcher.add_event_handler(watcher)
    return (
        lambda question: llamaindex_agent.run_task(
            function_agent, watcher, question, max_steps=max_steps, verbose=verbose
        ),
        llm.model_name,
        lambda: dispatcher.event_handlers.remove(watcher),
    )


def task_row(task: ToolTask, result: dict[str, Any]) -> dict[str, Any]:
    """One task's scores (``score_run``), LLM calls, nudges and time."""
    score = score_run(task, result["calls"], result["results_fed_back"], result["final"], result["ended"])
    calls = result["llm_calls"]
    nudges = sum(c["nudges_tried"] for c in calls)
    return {
        **score,
        "expected": task.answer,
        "steps": task.steps,
        "tool_calls": [list(c) for c in result["calls"]],
        "hit_limit": result["hit_limit"],
        "llm_calls": len(calls),
        "nudges": nudges,
        "nudges_kept": sum(c["nudges_kept"] for c in calls),
        "nudges_in_text": sum(c["in_text"] for c in calls),
        "nudges_in_value": sum(c["in_value"] for c in calls),
        "nudges_per_llm_call": round(nudges / len(calls), 2) if calls else None,
        "per_llm_call": calls,
        "seconds": result["seconds"],
        **({"error": result["error"]} if "error" in result else {}),
    }


def totals(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    llm_calls = sum(r["llm_calls"] for r in rows)
    nudges = sum(r["nudges"] for r in rows)
    return {
        "tasks": len(rows),
        **{column: sum(bool(r[column]) for r in rows) for column in BOOLEAN_COLUMNS},
        "results_fed_back": sum(r["results_fed_back"] for r in rows),
        "hit_limit": sum(bool(r["hit_limit"]) for r in rows),
        "errors": sum("error" in r for r in rows),
        "llm_calls": llm_calls,
        "nudges": nudges,
        "nudges_kept": sum(r["nudges_kept"] for r in rows),
        "nudges_in_text": sum(r["nudges_in_text"] for r in rows),
        "nudges_in_value": sum(r["nudges_in_value"] for r in rows),
        "nudges_per_llm_call": round(nudges / llm_calls, 2) if llm_calls else None,
        "seconds": round(sum(r["seconds"] for r in rows), 1),
    }


def evaluate(
    framework: str,
    variant: str,
    tasks: Sequence[ToolTask] = TASKS,
    max_steps: int = 4,
    tiny: bool = False,
    max_tokens: int | None = None,
    force_first_call: bool = False,
    verbose: bool = False,
) -> dict[str, Any]:
    """Runs ``tasks`` through one framework's agent; the report (rows, totals, settings) as saved."""
    max_tokens = max_tokens or (100 if tiny else 96)  # a forced call needs ~70 tokens on the tiny char tokenizer
    forced = force_first_call or tiny
    run_task, model_name, close = make_runner(framework, variant, tiny, max_tokens, max_steps, forced, verbose)
    rows: list[dict[str, Any]] = []
    started = time.perf_counter()
    try:
        for k, task in enumerate(tasks, 1):
            task_started = time.perf_counter()
            try:
                result = run_task(task.question)
            except Exception as error:  # a bug, not the model: keep the other tasks, record it
                traceback.print_exc()
                seconds = round(time.perf_counter() - task_started, 2)
                result = {"calls": [], "results_fed_back": 0, "final": "", "ended": False, "hit_limit": False,
                          "llm_calls": [], "seconds": seconds, "error": f"{type(error).__name__}: {error}"}  # fmt: skip
            rows.append(task_row(task, result))
            row = rows[-1]
            flags = " ".join(f"{c}={'y' if row[c] else 'n'}" for c in BOOLEAN_COLUMNS)
            print(
                f"[{framework} {variant} {k}/{len(tasks)}] {task.question} -> {flags}, {row['llm_calls']} LLM calls, "
                f"{row['nudges']} nudges, {row['seconds']:.1f}s",
                flush=True,
            )
    finally:
        close()
    limit = {"recursion_limit": 2 * max_steps + 1} if framework == "langgraph" else {"max_iterations": max_steps + 2}
    return {
        "framework": framework,
        "variant": variant,
        "options": VARIANTS[variant],
        "model": model_name,
        "tiny": tiny,
        "force_first_call": forced,
        "max_new_tokens": max_tokens,
        "max_steps": max_steps,
        "limit": limit,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {platform.python_version()}",
        "wall_seconds": round(time.perf_counter() - started, 1),
        "tasks": rows,
        "totals": totals(rows),
    }


def _yes(value: Any) -> str:
    return "yes" if value else "no"


def render_table(report: dict[str, Any]) -> str:
    options = ", ".join(f"{k}={v}" for k, v in report["options"].items()) or "defaults"
    forced = "; first call forced" if report["force_first_call"] else ""
    limit = ", ".join(f"{k}={v}" for k, v in report["limit"].items())
    lines = [
        f"### {report['framework']}, {report['variant']} ({report['model']}; {options}{forced}; {limit})",
        "",
        "| task | first call right | right tools in order | results fed back | correct answer | ended by itself "
        "| LLM calls | nudges per LLM call (text/value) | seconds |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in report["tasks"]:
        per_call = "-" if row["nudges_per_llm_call"] is None else f"{row['nudges_per_llm_call']:.1f}"
        ended = _yes(row["ended_by_itself"]) + (" (limit)" if row["hit_limit"] else "")
        ended += " (error)" if "error" in row else ""
        lines.append(
            f"| {row['question']} | {_yes(row['first_call_right'])} | {_yes(row['right_tools_in_order'])} | "
            f"{row['results_fed_back']} | {_yes(row['correct_answer'])} | {ended} | {row['llm_calls']} | "
            f"{per_call} ({row['nudges_in_text']}/{row['nudges_in_value']}) | {row['seconds']:.1f} |"
        )
    t = report["totals"]
    n = t["tasks"]
    per_call = "-" if t["nudges_per_llm_call"] is None else f"{t['nudges_per_llm_call']:.2f}"
    lines.append(
        f"| **total ({n} tasks)** | {t['first_call_right']}/{n} | {t['right_tools_in_order']}/{n} | "
        f"{t['results_fed_back']} | {t['correct_answer']}/{n} | {t['ended_by_itself']}/{n} "
        f"({t['hit_limit']} at the limit) | {t['llm_calls']} | {per_call} ({t['nudges_in_text']}/"
        f"{t['nudges_in_value']}) | {t['seconds']:.0f} |"
    )
    return "\n".join(lines) + "\n"


def output_path(out_dir: Path, framework: str, variant: str, forced: bool) -> Path:
    return out_dir / f"agents_{framework}_{variant}{'_forced' if forced else ''}.json"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--framework", choices=(*FRAMEWORKS, "both"), default="both")
    parser.add_argument("--variant", choices=tuple(VARIANTS), default="improved")
    parser.add_argument("--tasks", type=int, default=len(TASKS), help=f"the first N tasks (of {len(TASKS)})")
    parser.add_argument("--max-steps", type=int, default=4, help="tool rounds before the framework's limit")
    parser.add_argument("--max-tokens", type=int, default=None, help="per LLM call (default 96; 100 with --tiny)")
    parser.add_argument("--force-first-call", action="store_true", help="the first LLM call must call a tool")
    parser.add_argument("--tiny", action="store_true", help="tiny random models (a smoke test: the text is noise)")
    parser.add_argument("--verbose", action="store_true", help="print every step and nudge as the agents run")
    parser.add_argument("--out", type=Path, default=None, help="default: docs/results (cookbooks/output with --tiny)")
    args = parser.parse_args(argv)
    if not 1 <= args.tasks <= len(TASKS):
        parser.error(f"--tasks: between 1 and {len(TASKS)}")
    if args.max_steps < 0:
        parser.error("--max-steps: 0 or more")
    out_dir = args.out or (TINY_DIR if args.tiny else RESULTS_DIR)
    out_dir.mkdir(parents=True, exist_ok=True)
    frameworks = FRAMEWORKS if args.framework == "both" else (args.framework,)
    tables: list[str] = []
    for framework in frameworks:
        report = evaluate(
            framework,
            args.variant,
            TASKS[: args.tasks],
            max_steps=args.max_steps,
            tiny=args.tiny,
            max_tokens=args.max_tokens,
            force_first_call=args.force_first_call,
            verbose=args.verbose,
        )
        report["markdown"] = render_table(report)
        report["command"] = "python cookbooks/agent_nudge_monitor/evaluate.py " + " ".join(argv or sys.argv[1:])
        path = output_path(out_dir, framework, args.variant, report["force_first_call"])
        path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        tables.append(report["markdown"])
        print(f"wrote {path}", flush=True)
    print("\n" + "\n".join(tables))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
