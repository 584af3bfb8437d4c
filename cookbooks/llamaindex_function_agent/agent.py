"""A LlamaIndex ``FunctionAgent`` with two tools whose LLM is GGRO: the agent's events streamed as they come
(tool calls, tool results, the answer) and the nudges of every LLM call counted through instrumentation.

Run it:  python cookbooks/llamaindex_function_agent/agent.py          # Qwen2.5-Coder-0.5B-Instruct (minutes)
         python cookbooks/llamaindex_function_agent/agent.py --tiny   # tiny random models (seconds)
         python cookbooks/llamaindex_function_agent/agent.py "Who is the author of Pride and Prejudice?"

The agent: ``FunctionAgent(tools=[multiply, lookup], llm=GGRO(model_id="qwen2.5-coder-0.5b-instruct"))``, the
tools being ``FunctionTool`` s over ``ggro.lab.agent_tasks``. ``GGRO`` is a ``FunctionCallingLLM``: the tools go
through Qwen's chat template, the model's ``<tool_call>`` comes back as the message's tool calls, the agent runs
the tool and feeds its result back, until the model answers in plain words or ``max_iterations`` stops it
(``WorkflowRuntimeError``; recorded, not raised). Steering keeps the calls valid: nudges land in free-text
values and plain text, never on JSON syntax, keys or tool names.

What you see: ``handler.stream_events()`` printed as the agent runs (each ``ToolCall``, ``ToolCallResult`` and
the final ``AgentOutput``), then a table with one row per LLM call: what the model did, the nudges tried and
kept, in text / in values. The nudges are collected by an instrumentation event handler on LlamaIndex's root
dispatcher: ``GGRO`` sends a ``GGRONudgeEvent`` per nudge with the span id of its LLM call, the same span id as
the call's ``LLMChatStartEvent`` / ``LLMChatEndEvent``. The table goes to
``cookbooks/output/llamaindex_function_agent.md`` (the data to ``.json``). ``--tiny``: a random model never
calls a tool by itself, so the first call is forced (``FunctionAgent(initial_tool_choice="required")``); the text
is noise. ``cookbooks/agent_nudge_monitor/evaluate.py --framework llamaindex`` scores this agent on the twelve
tasks of ``ggro.lab.agent_tasks``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ggro.lab import agent_tasks
from ggro.lab.agent_tasks import TASKS, ToolTask, score_run
from llama_index.core.agent.workflow import AgentInput, AgentOutput, FunctionAgent, ToolCall, ToolCallResult
from llama_index.core.base.llms.types import ChatResponse, ToolCallBlock
from llama_index.core.bridge.pydantic import Field, PrivateAttr
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.instrumentation.events import BaseEvent
from llama_index.core.instrumentation.events.llm import LLMChatEndEvent, LLMChatStartEvent
from llama_index.core.tools import FunctionTool
from llama_index.llms.ggro import GGRO, GGRONudgeEvent
from workflows.errors import WorkflowRuntimeError

OUTPUT_DIR = Path(__file__).resolve().parents[1] / "output"
POLICY = "qwen2.5-coder-0.5b-instruct"


def make_tools() -> list[FunctionTool]:
    """``multiply(a, b)`` and ``lookup(query)`` of ``ggro.lab.agent_tasks`` as LlamaIndex tools."""
    return [FunctionTool.from_defaults(fn=agent_tasks.multiply), FunctionTool.from_defaults(fn=agent_tasks.lookup)]


def make_llm(tiny: bool = False, max_tokens: int = 96, **options: Any) -> GGRO:
    """Qwen2.5-Coder-0.5B-Instruct with the embedded harm reward (bridged to its vocabulary), or a tiny random
    decoder (its template takes no tools: they go through the system-prompt fallback); ``options``: any GGRO
    field, e.g. ``answer_instead_of_repeating=False``."""
    if tiny:
        from ggro.testing import tiny_decoder

        return GGRO.from_decoder(
            tiny_decoder(), max_new_tokens=max_tokens, refinement_steps=2, is_function_calling_model=True, **options
        )
    return GGRO(model_id=POLICY, max_new_tokens=max_tokens, **options)


def build_agent(llm: GGRO, tools: Sequence[FunctionTool], force_first_call: bool = False) -> FunctionAgent:
    """One call per step (as the LangGraph agent); ``force_first_call``: the first LLM call must call a tool."""
    return FunctionAgent(
        tools=list(tools),
        llm=llm,
        allow_parallel_tool_calls=False,
        initial_tool_choice="required" if force_first_call else None,
    )


# ---------------------------------------------------------------------------------------------- the watcher
@dataclass
class LLMCall:
    """One LLM call of the agent (a span): its nudges and its response."""

    span_id: str
    nudges: list[dict[str, Any]] = field(default_factory=list)
    response: ChatResponse | None = None

    @property
    def invalid_calls(self) -> list[dict[str, Any]]:
        return list((self.response.additional_kwargs.get("invalid_tool_calls") or []) if self.response else [])

    @property
    def tool_calls(self) -> list[ToolCallBlock]:
        """The valid calls of the response (those the agent runs)."""
        blocks = self.response.message.blocks if self.response is not None else []
        return [b for b in blocks if isinstance(b, ToolCallBlock)]

    @property
    def action(self) -> str:
        if self.response is None:
            return "?"
        if self.tool_calls:
            return "; ".join(f"{c.tool_name}({_args(dict(c.tool_kwargs))})" for c in self.tool_calls)
        return "invalid call" if self.invalid_calls else "answered"

    def row(self) -> dict[str, Any]:
        kept = [n for n in self.nudges if n["kept"]]
        gains = [n["kept_reward"] - n["draft_reward"] for n in kept]
        raw = self.response.raw if self.response is not None and isinstance(self.response.raw, dict) else {}
        return {
            "span_id": self.span_id,
            "action": self.action,
            "nudges_tried": len(self.nudges),
            "nudges_kept": len(kept),
            "in_text": sum(n.get("landed_in", "text") == "text" for n in self.nudges),
            "in_value": sum(n.get("landed_in") == "value" for n in self.nudges),
            "nudges_returned": len(raw.get("nudges") or []),
            "mean_reward_gain_kept": sum(gains) / len(gains) if gains else None,
        }


def _args(args: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in args.items())


class LLMCallWatcher(BaseEventHandler):
    """Keeps every LLM call's span with its ``GGRONudgeEvent`` s and its end event's response.

    ``nudges_returned`` (the response's ``raw["nudges"]``) may be fewer than the nudges received: when a
    response would only repeat an answered call, GGRO decodes it again asked for the answer, and the first
    attempt's nudges were already dispatched."""

    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)
    verbose: bool = Field(default=True, description="Print each nudge as it arrives.")
    _calls: dict[str, LLMCall] = PrivateAttr(default_factory=dict)

    @classmethod
    def class_name(cls) -> str:
        return "LLMCallWatcher"

    def handle(self, event: BaseEvent, **kwargs: Any) -> None:
        span = str(event.span_id)
        with self._lock:
            if isinstance(event, LLMChatStartEvent):
                self._calls.setdefault(span, LLMCall(span))
            elif isinstance(event, GGRONudgeEvent):
                call = self._calls.setdefault(span, LLMCall(span))
                call.nudges.append(event.payload)
                if self.verbose:
                    print_nudge(len(self._calls), event.payload)
            elif isinstance(event, LLMChatEndEvent) and event.response is not None:
                self._calls.setdefault(span, LLMCall(span)).response = event.response

    def take(self) -> list[LLMCall]:
        """The calls since the last ``take`` (one run's worth), in the order they started."""
        with self._lock:
            calls, self._calls = list(self._calls.values()), {}
        return calls


def print_nudge(call_number: int, nudge: dict[str, Any]) -> None:
    outcome = "kept" if nudge["kept"] else "draft kept"
    print(
        f"    [LLM call {call_number}] nudge at token {nudge['insertion_position']:>3} in "
        f"{nudge.get('landed_in', 'text')}: {nudge['draft_token']!r} -> {nudge['nudge_token']!r} ({outcome}, "
        f"reward {nudge['draft_reward']:+.3f} -> {nudge['kept_reward']:+.3f})",
        flush=True,
    )


# ---------------------------------------------------------------------------------------------- one run
async def _arun(agent: FunctionAgent, question: str, max_iterations: int, verbose: bool) -> dict[str, Any]:
    """Streams the agent's events: the tool results (and which the tool refused), how many results an LLM call
    read afterwards, and the last output."""
    refused: set[str] = set()
    results, fed_back, hit_limit = 0, 0, False
    last: AgentOutput | None = None
    handler = agent.run(question, max_iterations=max_iterations)
    try:
        async for event in handler.stream_events():
            if isinstance(event, AgentInput):  # an LLM call starts: it reads every result so far
                fed_back = results
            elif isinstance(event, ToolCall):
                if verbose:
                    print(f"  agent: {event.tool_name}({_args(event.tool_kwargs)})", flush=True)
            elif isinstance(event, ToolCallResult):
                results += 1
                if event.tool_output.is_error:  # the tool refused the arguments
                    refused.add(event.tool_id)
                if verbose:
                    print(f"  tool {event.tool_name}: {event.tool_output.content!r}", flush=True)
            elif isinstance(event, AgentOutput):
                last = event
        await handler
    except WorkflowRuntimeError as error:
        if "max iterations" not in str(error).lower():
            raise
        hit_limit = True
        if verbose:
            print(f"  stopped at the agent's max_iterations ({max_iterations})", flush=True)
    return {
        "refused": refused,
        "results_fed_back": fed_back,
        "final": ((last.response.content or "") if last is not None else "").strip(),
        "hit_limit": hit_limit,
    }


def run_task(
    agent: FunctionAgent, watcher: LLMCallWatcher, question: str, max_steps: int = 4, verbose: bool = True
) -> dict[str, Any]:
    """Runs ``question`` through the agent with ``max_iterations = max_steps + 2`` (LlamaIndex counts every LLM
    output, the answer included, and stops when the count reaches the limit: ``max_steps`` tool rounds and the
    answer fit; one more tool round may run before the limit). A run that hits the limit is recorded
    (``hit_limit``), never raised. Returns the same fields as the LangGraph cookbook's ``run_task``: the calls
    as (name, arguments, valid) in order (from the LLM calls' responses: the valid ones, which the agent runs,
    and the invalid ones, which never reach it), the results fed back, the final text, whether the run ended
    with an answer by itself, one row per LLM call, the seconds."""
    watcher.take()
    watcher.verbose = verbose
    if verbose:
        print(f"\nQ: {question}", flush=True)
    started = time.perf_counter()
    result = asyncio.run(_arun(agent, question, max_steps + 2, verbose))
    seconds = time.perf_counter() - started
    llm_calls = watcher.take()
    calls: list[tuple[str, dict[str, Any], bool]] = []
    for call in llm_calls:
        calls += [(c.tool_name, dict(c.tool_kwargs), c.tool_call_id not in result["refused"]) for c in call.tool_calls]
        calls += [(str(c.get("name") or "?"), {"raw": c.get("arguments")}, False) for c in call.invalid_calls]
    last = llm_calls[-1] if llm_calls else None
    ended = last is not None and last.action == "answered" and not result["hit_limit"]
    if verbose and ended:
        print(f"  agent answers: {result['final']!r}", flush=True)
    return {
        "question": question,
        "calls": calls,
        "results_fed_back": result["results_fed_back"],
        "final": result["final"],
        "ended": ended,
        "hit_limit": result["hit_limit"],
        "llm_calls": [call.row() for call in llm_calls],
        "seconds": round(seconds, 2),
    }


def run(
    tiny: bool = False,
    max_tokens: int = 96,
    tasks: Sequence[ToolTask | str] | None = None,
    max_steps: int = 4,
    force_first_call: bool | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Runs ``tasks`` (ToolTasks, scored, or plain questions) through the agent; ``force_first_call`` defaults
    to ``tiny``; ``options``: GGRO fields."""
    llm = make_llm(tiny, max_tokens, **options)
    agent = build_agent(llm, make_tools(), force_first_call=tiny if force_first_call is None else force_first_call)
    watcher = LLMCallWatcher(verbose=True)
    dispatcher = get_dispatcher()  # the root dispatcher: every LlamaIndex event passes through it
    dispatcher.add_event_handler(watcher)
    runs: list[dict[str, Any]] = []
    try:
        for task in tasks or (TASKS[3], TASKS[7]):
            question = task.question if isinstance(task, ToolTask) else task
            result = run_task(agent, watcher, question, max_steps=max_steps)
            if isinstance(task, ToolTask):
                result["score"] = score_run(
                    task, result["calls"], result["results_fed_back"], result["final"], result["ended"]
                )
            runs.append(result)
    finally:
        dispatcher.event_handlers.remove(watcher)
    return {"models": "tiny" if tiny else POLICY, "model_name": llm.model_name, "max_steps": max_steps, "runs": runs}


def render_table(report: dict[str, Any]) -> str:
    lines = [
        f"# FunctionAgent nudges per LLM call ({report['model_name']})",
        "",
        "| question | LLM call | the model | nudges tried | kept | in text | in values | mean reward gain (kept) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for run in report["runs"]:
        for k, row in enumerate(run["llm_calls"], 1):
            gain = "-" if row["mean_reward_gain_kept"] is None else f"{row['mean_reward_gain_kept']:+.3f}"
            action = row["action"].replace("|", "\\|")
            lines.append(
                f"| {run['question']} | {k} | {action} | {row['nudges_tried']} | {row['nudges_kept']} | "
                f"{row['in_text']} | {row['in_value']} | {gain} |"
            )
    return "\n".join(lines) + "\n"


def write(report: dict[str, Any], out_dir: Path) -> Path:
    """Writes the runs (JSON) and the per-call table (markdown); returns the JSON's path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "llamaindex_function_agent.json"
    path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    path.with_suffix(".md").write_text(render_table(report), encoding="utf-8")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--tiny", action="store_true", help="tiny random models instead of Qwen2.5-Coder-0.5B")
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--max-steps", type=int, default=4, help="tool rounds before the agent's max_iterations")
    parser.add_argument("--out", type=Path, default=OUTPUT_DIR)
    parser.add_argument("question", nargs="*", help="questions (default: a one-step and a two-step task)")
    args = parser.parse_args(argv)
    report = run(tiny=args.tiny, max_tokens=args.max_tokens, tasks=args.question or None, max_steps=args.max_steps)
    print("\n" + render_table(report))
    print(f"wrote {write(report, args.out)} and the table beside it")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
