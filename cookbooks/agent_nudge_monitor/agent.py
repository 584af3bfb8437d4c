"""A LangGraph ReAct agent whose model chooses its tools, every LLM call decoded by GGRO, watched by a monitor
that tallies the nudges of each graph step.

Run it:  python cookbooks/agent_nudge_monitor/agent.py           # Qwen2.5-Coder-0.5B-Instruct (minutes on CPU)
         python cookbooks/agent_nudge_monitor/agent.py --tiny    # tiny random models (seconds)
         python cookbooks/agent_nudge_monitor/agent.py "What is 12 times 31?"

The agent is LangGraph's prebuilt ``create_react_agent(ChatGGRO(model="qwen2.5-coder-0.5b-instruct"), [multiply,
lookup])``: the tools (from ``ggro.lab.agent_tasks``, wrapped with ``@tool``) are rendered through Qwen's chat
template, the model writes a ``<tool_call>`` (parsed into ``AIMessage.tool_calls``), LangGraph runs the tool and
feeds its result back, until the model answers in plain words or the step limit stops it (with
``recursion_limit`` near, the prebuilt agent replaces a further tool call by "Sorry, need more steps to process
this request." and ends; recorded as not ended). ``ChatGGRO`` keeps a call valid while steering it: nudges land
in free-text values and plain text, never on the JSON syntax, keys or tool names.

What you see: the agent's steps as they run (calls, tool results, the answer), each nudge with the graph step it
happened in and where it landed (text or value), then a per-step table: for each LLM call, what the model did,
the nudges tried and kept, in text / in values, and the mean reward gain of the kept ones. The table goes to
``cookbooks/output/agent_nudge_monitor.md`` (the data to ``.json``). ``--tiny``: a random model never calls a
tool by itself, so its first call is forced (``tool_choice="any"``) and later ones are free; the text is noise.

The monitor is an ordinary LangChain callback handler: LangGraph passes the node and the step number in each
run's metadata, and ``ChatGGRO`` sends every nudge to the run's handlers as a ``ggro_nudge`` custom event. (An
earlier version also plotted the entropy along each response; the prompt of an agent call -- tools rendered,
results described, sometimes asked again for the answer -- is built inside ``ChatGGRO``, so the plot was dropped
rather than rebuilt by hand.) ``evaluate.py`` beside this file runs the twelve tasks of ``ggro.lab.agent_tasks``
through this agent and scores them.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import UUID

from ggro.lab import agent_tasks
from ggro.lab.agent_tasks import TASKS, ToolTask, score_run
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, LLMResult
from langchain_core.tools import BaseTool, tool
from langchain_ggro import ChatGGRO
from langgraph.errors import GraphRecursionError

OUTPUT_DIR = Path(__file__).resolve().parents[1] / "output"
POLICY = "qwen2.5-coder-0.5b-instruct"
VARIANTS: dict[str, dict[str, Any]] = {
    "baseline": {"answer_instead_of_repeating": False, "describe_tool_results": False},
    "improved": {},  # the wrappers' defaults: answer_instead_of_repeating=True, describe_tool_results=True
    # The same without steering (one candidate per segment: greedy under the grammar), to tell the levers'
    # effect from the steering reward's.
    "baseline-unsteered": {"answer_instead_of_repeating": False, "describe_tool_results": False, "refinement_steps": 1},
    "improved-unsteered": {"refinement_steps": 1},
}
"""The wrapper options of each evaluated variant."""


def make_tools() -> list[BaseTool]:
    """``multiply(a, b)`` and ``lookup(query)`` of ``ggro.lab.agent_tasks`` as LangChain tools."""
    return [tool(agent_tasks.multiply), tool(agent_tasks.lookup)]


def make_chat(tiny: bool = False, max_tokens: int = 96, **options: Any) -> ChatGGRO:
    """The agent's chat model: Qwen2.5-Coder-0.5B-Instruct with the embedded harm reward (bridged to its
    vocabulary), or a tiny random decoder; ``options``: any ChatGGRO field (see ``VARIANTS``)."""
    if tiny:
        from ggro.testing import tiny_decoder

        return ChatGGRO.from_decoder(tiny_decoder(), max_tokens=max_tokens, refinement_steps=2, **options)
    return ChatGGRO(model=POLICY, max_tokens=max_tokens, **options)


def build_agent(chat: ChatGGRO, tools: Sequence[BaseTool], force_first_call: bool = False) -> Any:
    """``create_react_agent(chat, tools)``. ``force_first_call``: the model's first call (right after the
    question) must call a tool (``tool_choice="any"``, enforced by the grammar); later calls are free."""
    from langgraph.prebuilt import create_react_agent

    model: Any = chat
    if force_first_call:
        forced, free = chat.bind_tools(tools, tool_choice="any"), chat.bind_tools(tools)

        def choose_model(state: dict[str, Any], runtime: Any) -> Any:  # LangGraph's dynamic model selection
            return forced if isinstance(state["messages"][-1], HumanMessage) else free

        model = choose_model
    with warnings.catch_warnings():  # LangGraph 1.x points to langchain.agents.create_agent; the prebuilt works
        warnings.simplefilter("ignore", DeprecationWarning)
        return create_react_agent(model, list(tools))


# ---------------------------------------------------------------------------------------------- the monitor
@dataclass
class LLMCall:
    """One LLM call of the agent: the graph step and node it ran in, its nudges, what it returned."""

    step: int
    node: str
    nudges: list[dict[str, Any]] = field(default_factory=list)
    returned_nudges: int = 0
    action: str = "?"
    tool_calls: list[dict[str, Any]] = field(default_factory=list)

    def row(self) -> dict[str, Any]:
        kept = [n for n in self.nudges if n["kept"]]
        gains = [n["kept_reward"] - n["draft_reward"] for n in kept]
        return {
            "step": self.step,
            "node": self.node,
            "action": self.action,
            "nudges_tried": len(self.nudges),
            "nudges_kept": len(kept),
            "in_text": sum(n.get("landed_in", "text") == "text" for n in self.nudges),
            "in_value": sum(n.get("landed_in") == "value" for n in self.nudges),
            "nudges_returned": self.returned_nudges,
            "mean_reward_gain_kept": sum(gains) / len(gains) if gains else None,
        }


class NudgeMonitor(BaseCallbackHandler):
    """Groups the ``ggro_nudge`` events of every chat-model run by the LangGraph step and node it ran in.

    ``nudges_returned`` (the nudges the response lists) may be fewer than those received: when a response
    would only repeat an answered call, ChatGGRO decodes it again asked for the answer, and the handlers have
    already seen the first attempt's nudges."""

    run_inline = True

    def __init__(self, on_nudge: Callable[[LLMCall, dict[str, Any]], None] | None = None) -> None:
        self.calls: dict[UUID, LLMCall] = {}
        self.on_nudge = on_nudge

    def on_chat_model_start(
        self,
        serialized: dict[str, Any],
        messages: list[list[BaseMessage]],
        *,
        run_id: UUID,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        meta = metadata or {}
        self.calls[run_id] = LLMCall(step=int(meta.get("langgraph_step", 0)), node=str(meta.get("langgraph_node", "?")))

    def on_custom_event(self, name: str, data: Any, *, run_id: UUID, **kwargs: Any) -> None:
        if name == "ggro_nudge" and run_id in self.calls:
            call = self.calls[run_id]
            call.nudges.append(data)
            if self.on_nudge is not None:
                self.on_nudge(call, data)

    def on_llm_end(self, response: LLMResult, *, run_id: UUID, **kwargs: Any) -> None:
        generation = response.generations[0][0]
        if run_id in self.calls and isinstance(generation, ChatGeneration):
            message = generation.message
            self.calls[run_id].returned_nudges = len(message.response_metadata.get("ggro_nudges", []))
            self.calls[run_id].action = describe_action(message)
            self.calls[run_id].tool_calls = list(getattr(message, "tool_calls", None) or [])

    def rows(self) -> list[dict[str, Any]]:
        return [call.row() for call in self.calls.values()]


def describe_action(message: BaseMessage) -> str:
    """What an assistant message did, in a few words: ``multiply(a=17, b=23)``, ``invalid call``, ``answered``."""
    if isinstance(message, AIMessage) and message.tool_calls:
        return "; ".join(f"{c['name']}({_args(c['args'])})" for c in message.tool_calls)
    if isinstance(message, AIMessage) and message.invalid_tool_calls:
        return "invalid call"
    return "answered"


def _args(args: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in args.items())


def print_nudge(call: LLMCall, nudge: dict[str, Any]) -> None:
    outcome = "kept" if nudge["kept"] else "draft kept"
    print(
        f"    [step {call.step} {call.node}] nudge at token {nudge['insertion_position']:>3} in "
        f"{nudge.get('landed_in', 'text')}: {nudge['draft_token']!r} -> {nudge['nudge_token']!r} ({outcome}, "
        f"reward {nudge['draft_reward']:+.3f} -> {nudge['kept_reward']:+.3f})",
        flush=True,
    )


def print_message(message: BaseMessage) -> None:
    if isinstance(message, AIMessage):
        if message.tool_calls or message.invalid_tool_calls:
            print(f"  agent: {describe_action(message)}", flush=True)
        for bad in message.invalid_tool_calls:
            print(f"    invalid call: {bad.get('error')!s:.120} in {bad.get('args')!s:.120}", flush=True)
        if not message.tool_calls and str(message.content).strip():
            print(f"  agent answers: {str(message.content).strip()!r}", flush=True)
    elif isinstance(message, ToolMessage):
        print(f"  tool {message.name}: {str(message.content)!r} ({message.status})", flush=True)


# ---------------------------------------------------------------------------------------------- one run
def extract_calls(messages: Sequence[BaseMessage]) -> list[tuple[str, dict[str, Any], bool]]:
    """(tool name, arguments, valid) of every call the model made, in order: ``AIMessage.tool_calls`` (valid
    unless the tool refused its arguments: a ``ToolMessage`` with status ``error``) and ``invalid_tool_calls``."""
    refused = {m.tool_call_id for m in messages if isinstance(m, ToolMessage) and m.status == "error"}
    calls: list[tuple[str, dict[str, Any], bool]] = []
    for message in messages:
        if not isinstance(message, AIMessage):
            continue
        calls += [(c["name"], dict(c["args"]), c.get("id") not in refused) for c in message.tool_calls]
        calls += [(str(c.get("name") or "?"), {"raw": c.get("args")}, False) for c in message.invalid_tool_calls]
    return calls


def results_fed_back(messages: Sequence[BaseMessage]) -> int:
    """Tool results that a later LLM call read (each ``ToolMessage`` followed by an assistant message)."""
    last_ai = max((i for i, m in enumerate(messages) if isinstance(m, AIMessage)), default=-1)
    return sum(1 for m in messages[:last_ai] if isinstance(m, ToolMessage))


NEED_MORE_STEPS = "Sorry, need more steps to process this request."
"""What ``create_react_agent`` puts in place of a response that calls a tool when fewer than two steps remain
before ``recursion_limit`` (it then ends the run: no ``GraphRecursionError`` in that case)."""


def run_task(agent: Any, question: str, max_steps: int = 4, verbose: bool = True) -> dict[str, Any]:
    """Runs ``question`` through the agent with ``recursion_limit = 2 * max_steps + 1``: ``max_steps`` tool
    rounds and an answer fit; a response calling a tool once more is replaced by LangGraph with
    :data:`NEED_MORE_STEPS` and the run ends (a ``GraphRecursionError`` is caught too). Either is recorded
    (``hit_limit``), never raised; the replaced response's calls are kept (from the monitor). Returns the run:
    the calls, the results fed back, the final text, whether it ended with an answer by itself, and one row per
    LLM call (its step, action and nudge tallies)."""
    monitor = NudgeMonitor(on_nudge=print_nudge if verbose else None)
    messages: list[BaseMessage] = [HumanMessage(question)]
    config = {"callbacks": [monitor], "recursion_limit": 2 * max_steps + 1}
    hit_limit, started = False, time.perf_counter()
    if verbose:
        print(f"\nQ: {question}", flush=True)
    try:
        for state in agent.stream({"messages": messages}, config=config, stream_mode="values"):
            for message in state["messages"][len(messages) :]:
                if verbose:
                    print_message(message)
            messages = list(state["messages"])
    except GraphRecursionError:
        hit_limit = True
        if verbose:
            print(f"  stopped by GraphRecursionError (recursion_limit={config['recursion_limit']})", flush=True)
    seconds = time.perf_counter() - started
    calls = extract_calls(messages)
    last, llm_calls = messages[-1], list(monitor.calls.values())
    if isinstance(last, AIMessage) and last.content == NEED_MORE_STEPS and llm_calls and llm_calls[-1].tool_calls:
        hit_limit = True  # LangGraph dropped the last response's calls: they count as the model's calls
        calls += [(c["name"], dict(c["args"]), True) for c in llm_calls[-1].tool_calls]
        if verbose:
            limit = config["recursion_limit"]
            print(f"  stopped at LangGraph's step limit (recursion_limit={limit}) instead of calling again", flush=True)
    answered = isinstance(last, AIMessage) and not last.tool_calls and not last.invalid_tool_calls
    final = next((str(m.content) for m in reversed(messages) if isinstance(m, AIMessage)), "")
    return {
        "question": question,
        "calls": calls,
        "results_fed_back": results_fed_back(messages),
        "final": final.strip(),
        "ended": answered and not hit_limit,
        "hit_limit": hit_limit,
        "llm_calls": monitor.rows(),
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
    to ``tiny``; ``options``: ChatGGRO fields."""
    chat = make_chat(tiny, max_tokens, **options)
    agent = build_agent(chat, make_tools(), force_first_call=tiny if force_first_call is None else force_first_call)
    runs: list[dict[str, Any]] = []
    for task in tasks or (TASKS[0], TASKS[6]):
        question = task.question if isinstance(task, ToolTask) else task
        result = run_task(agent, question, max_steps=max_steps)
        if isinstance(task, ToolTask):
            result["score"] = score_run(
                task, result["calls"], result["results_fed_back"], result["final"], result["ended"]
            )
        runs.append(result)
    return {"models": "tiny" if tiny else POLICY, "model_name": chat.model_name, "max_steps": max_steps, "runs": runs}


def render_table(report: dict[str, Any]) -> str:
    lines = [
        f"# Agent nudges per step ({report['model_name']})",
        "",
        "| question | step | node | the model | nudges tried | kept | in text | in values | mean reward gain (kept) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for run in report["runs"]:
        for row in run["llm_calls"]:
            gain = "-" if row["mean_reward_gain_kept"] is None else f"{row['mean_reward_gain_kept']:+.3f}"
            action = row["action"].replace("|", "\\|")
            lines.append(
                f"| {run['question']} | {row['step']} | {row['node']} | {action} | {row['nudges_tried']} | "
                f"{row['nudges_kept']} | {row['in_text']} | {row['in_value']} | {gain} |"
            )
    return "\n".join(lines) + "\n"


def write(report: dict[str, Any], out_dir: Path) -> Path:
    """Writes the runs (JSON) and the per-step table (markdown); returns the JSON's path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "agent_nudge_monitor.json"
    path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    path.with_suffix(".md").write_text(render_table(report), encoding="utf-8")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--tiny", action="store_true", help="tiny random models instead of Qwen2.5-Coder-0.5B")
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--max-steps", type=int, default=4, help="tool rounds before LangGraph's recursion limit")
    parser.add_argument("--out", type=Path, default=OUTPUT_DIR)
    parser.add_argument("question", nargs="*", help="questions (default: a one-step and a two-step task)")
    args = parser.parse_args(argv)
    report = run(tiny=args.tiny, max_tokens=args.max_tokens, tasks=args.question or None, max_steps=args.max_steps)
    print("\n" + render_table(report))
    print(f"wrote {write(report, args.out)} and the table beside it")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
