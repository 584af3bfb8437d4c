"""A two-tool LangGraph agent whose every LLM call is GGRO, watched by an observer that tallies the nudges of
each step and plots the policy's entropy along each LLM response with the nudges marked.

Run it:  python cookbooks/agent_nudge_monitor/agent.py           # embedded default models (~2 min on CPU)
         python cookbooks/agent_nudge_monitor/agent.py --tiny    # tiny random models (seconds)

The agent: ``plan`` (the LLM writes a search query for the question) -> ``search`` (tool ``search_notes``:
MiniLM retrieval over the cookbooks' documents) -> ``answer`` (the LLM answers from the notes) -> when the
notes are about chemicals, medicines or injuries, ``safety`` (tool ``emergency_advice``) appends what to do in
an emergency. The steps are fixed rather than chosen by the model: SmolLM2-135M does not follow a ReAct
tool-calling format (tried with LlamaIndex's ReActAgent: it answers directly), so the graph routes and the
model writes the query and the answer.

What you see: the agent's steps as they run, each nudge with the step it happened in, a per-step table (LLM
calls, nudges tried and kept, mean reward gain of the kept ones) and the plot
``cookbooks/output/agent_nudge_monitor_entropy.png``: one panel per LLM call, the entropy before each response
token, the threshold that ends a segment, and the nudges (filled: kept; hollow: the draft won). The observer
is an ordinary LangChain callback handler: LangGraph passes the node name in each run's metadata, and the
``ggro_nudge`` events carry it too.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.documents import Document
from langchain_core.messages import BaseMessage
from langchain_core.outputs import ChatGeneration, LLMResult
from langchain_core.runnables import Runnable
from langchain_core.tools import BaseTool, tool
from langgraph.graph import END, START, StateGraph

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from langchain_ggro import ChatGGRO
from langchain_ggro.chat_models import to_chat_messages

from documents import QUESTIONS, load_documents
from plots import EntropyTrace, plot_entropy

OUTPUT_DIR = Path(__file__).resolve().parents[1] / "output"
SAFETY_SOURCES = {"cleaning_chemicals.md", "medication.md", "first_aid.md"}
EMERGENCY_ADVICE = (
    "If someone has swallowed, breathed in or been burned by something, call your local emergency number or "
    "poison control centre now."
)


class AgentState(TypedDict, total=False):
    question: str
    query: str
    notes: str
    sources: list[str]
    answer: str
    steps: list[str]


def make_tools(retriever: Runnable[str, list[Document]]) -> tuple[BaseTool, BaseTool]:
    @tool
    def search_notes(query: str) -> str:
        """Search the household notes; returns the two best passages, each after its file name."""
        return "\n".join(f"[{d.metadata['source']}] {d.page_content}" for d in retriever.invoke(query))

    @tool
    def emergency_advice(topic: str) -> str:
        """What to do in an emergency involving the given topic."""
        return EMERGENCY_ADVICE

    return search_notes, emergency_advice


def build_agent(chat: ChatGGRO, retriever: Runnable[str, list[Document]]) -> Any:
    search_notes, emergency_advice = make_tools(retriever)
    planner = chat.bind(max_tokens=12)  # a query is a few words

    def plan(state: AgentState) -> AgentState:
        reply = planner.invoke(
            [
                ("system", "Write a search query of at most six words for the user's question. Reply with it only."),
                ("human", state["question"]),
            ]
        )
        query = str(reply.content).strip().splitlines()[0] if str(reply.content).strip() else state["question"]
        return {"query": query, "steps": [*state.get("steps", []), "plan"]}

    def search(state: AgentState) -> AgentState:
        notes = str(search_notes.invoke({"query": state["query"]}))
        sources = [line[1 : line.index("]")] for line in notes.splitlines() if line.startswith("[")]
        return {"notes": notes, "sources": sources, "steps": [*state["steps"], "search"]}

    def answer(state: AgentState) -> AgentState:
        reply = chat.invoke(
            [
                ("system", f"Answer in two sentences, using only these notes:\n{state['notes']}"),
                ("human", state["question"]),
            ]
        )
        return {"answer": str(reply.content).strip(), "steps": [*state["steps"], "answer"]}

    def safety(state: AgentState) -> AgentState:
        advice = str(emergency_advice.invoke({"topic": state["query"]}))
        return {"answer": f"{state['answer']}\n\n{advice}", "steps": [*state["steps"], "safety"]}

    def needs_safety(state: AgentState) -> str:
        return "safety" if SAFETY_SOURCES & set(state["sources"]) else END

    graph = StateGraph(AgentState)
    for name, node in (("plan", plan), ("search", search), ("answer", answer), ("safety", safety)):
        graph.add_node(name, node)
    graph.add_edge(START, "plan")
    graph.add_edge("plan", "search")
    graph.add_edge("search", "answer")
    graph.add_conditional_edges("answer", needs_safety, ["safety", END])
    graph.add_edge("safety", END)
    return graph.compile()


@dataclass
class LLMCall:
    """One LLM call of the agent: the step (graph node) it ran in, its prompt and answer, its nudges."""

    step: str
    messages: list[BaseMessage]
    nudges: list[dict[str, Any]] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    returned_nudges: int = 0


class NudgeMonitor(BaseCallbackHandler):
    """Groups the ``ggro_nudge`` events of every chat-model run by the LangGraph node it ran in."""

    run_inline = True

    def __init__(self, on_nudge: Callable[[str, dict[str, Any]], None] | None = None) -> None:
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
        self.calls[run_id] = LLMCall(step=str((metadata or {}).get("langgraph_node", "?")), messages=messages[0])

    def on_custom_event(
        self, name: str, data: Any, *, run_id: UUID, metadata: dict[str, Any] | None = None, **kwargs: Any
    ) -> None:
        if name == "ggro_nudge" and run_id in self.calls:
            self.calls[run_id].nudges.append(data)
            if self.on_nudge is not None:
                self.on_nudge(str((metadata or {}).get("langgraph_node", "?")), data)

    def on_llm_end(self, response: LLMResult, *, run_id: UUID, **kwargs: Any) -> None:
        generation = response.generations[0][0]
        assert isinstance(generation, ChatGeneration)
        message = generation.message
        self.calls[run_id].token_ids = list(message.response_metadata["token_ids"])
        self.calls[run_id].returned_nudges = len(message.response_metadata["ggro_nudges"])

    def per_step(self) -> dict[str, dict[str, Any]]:
        table: dict[str, dict[str, Any]] = {}
        for call in self.calls.values():
            row = table.setdefault(call.step, {"llm_calls": 0, "nudges_tried": 0, "nudges_kept": 0, "gains": []})
            row["llm_calls"] += 1
            row["nudges_tried"] += len(call.nudges)
            kept = [n for n in call.nudges if n["kept"]]
            row["nudges_kept"] += len(kept)
            row["gains"] += [n["kept_reward"] - n["draft_reward"] for n in kept]
        for row in table.values():
            gains = row.pop("gains")
            row["mean_reward_gain_kept"] = sum(gains) / len(gains) if gains else None
        return table


def print_nudge(step: str, nudge: dict[str, Any]) -> None:
    outcome = "kept" if nudge["kept"] else "draft kept"
    print(
        f"    [{step}] nudge at token {nudge['insertion_position']:>3}: {nudge['draft_token']!r} -> "
        f"{nudge['nudge_token']!r} ({outcome}, reward {nudge['draft_reward']:+.3f} -> {nudge['kept_reward']:+.3f})",
        flush=True,
    )


def make_chat(tiny: bool, max_tokens: int) -> ChatGGRO:
    if tiny:
        from ggro.testing import tiny_decoder

        return ChatGGRO.from_decoder(tiny_decoder(), max_tokens=max_tokens, refinement_steps=3)
    return ChatGGRO(max_tokens=max_tokens)


def make_retriever() -> Runnable[str, list[Document]]:
    from ggro.lab.gold import minilm_path
    from langchain_core.vectorstores import InMemoryVectorStore
    from langchain_huggingface import HuggingFaceEmbeddings

    embeddings = HuggingFaceEmbeddings(model_name=str(minilm_path()), model_kwargs={"device": "cpu"})
    documents = [Document(page_content=text, metadata={"source": name}) for name, text in load_documents()]
    return InMemoryVectorStore.from_documents(documents, embeddings).as_retriever(search_kwargs={"k": 2})


def run(tiny: bool = False, max_tokens: int = 48, questions: list[str] | None = None) -> dict[str, Any]:
    chat = make_chat(tiny, max_tokens)
    agent = build_agent(chat, make_retriever())
    runs: list[dict[str, Any]] = []
    traces: list[EntropyTrace] = []
    for question in questions or QUESTIONS[1:2]:
        print(f"\nQ: {question}", flush=True)
        monitor = NudgeMonitor(on_nudge=print_nudge)
        state = agent.invoke({"question": question}, config={"callbacks": [monitor]})
        print(f"  steps: {' -> '.join(state['steps'])}\n  query: {state['query']!r}\n  A: {state['answer']!r}")
        calls = list(monitor.calls.values())
        for k, call in enumerate(calls, 1):
            prompt_ids = chat.decoder.encode_prompt(to_chat_messages(call.messages))
            entropies = chat.decoder.entropy_profile(prompt_ids, call.token_ids)
            traces.append(EntropyTrace(f"{question}  [LLM call {k}: step '{call.step}']", entropies, call.nudges))
        runs.append(
            {
                "question": question,
                "steps": state["steps"],
                "query": state["query"],
                "sources": state["sources"],
                "answer": state["answer"],
                "per_step": monitor.per_step(),
                "llm_calls": [
                    {"step": c.step, "nudges_received": len(c.nudges), "nudges_returned": c.returned_nudges}
                    for c in calls
                ],
            }
        )
    threshold = chat.entropy_threshold
    return {
        "models": "tiny" if tiny else "default",
        "model_name": chat.model_name,
        "entropy_threshold": threshold,
        "runs": runs,
        "traces": traces,
    }


def render_table(report: dict[str, Any]) -> str:
    lines = [
        f"# Agent nudges per step ({report['model_name']}, {report['models']} models)",
        "",
        "| question | step | LLM calls | nudges tried | kept | mean reward gain (kept) |",
        "|---|---|---|---|---|---|",
    ]
    for run in report["runs"]:
        for step, row in run["per_step"].items():
            gain = "-" if row["mean_reward_gain_kept"] is None else f"{row['mean_reward_gain_kept']:+.3f}"
            lines.append(
                f"| {run['question']} | {step} | {row['llm_calls']} | {row['nudges_tried']} | "
                f"{row['nudges_kept']} | {gain} |"
            )
    return "\n".join(lines) + "\n"


def write(report: dict[str, Any], out_dir: Path) -> Path:
    """Writes the runs (JSON), the per-step table (markdown) and the entropy plot; returns the plot's path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    saved = {k: v for k, v in report.items() if k != "traces"}
    (out_dir / "agent_nudge_monitor.json").write_text(json.dumps(saved, indent=2) + "\n", encoding="utf-8")
    (out_dir / "agent_nudge_monitor.md").write_text(render_table(report), encoding="utf-8")
    title = f"Entropy along each LLM call of the agent ({report['model_name']}); red: nudges"
    return plot_entropy(
        report["traces"], report["entropy_threshold"], out_dir / "agent_nudge_monitor_entropy.png", title
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--tiny", action="store_true", help="tiny random models instead of the embedded defaults")
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--out", type=Path, default=OUTPUT_DIR)
    parser.add_argument("question", nargs="*", help="questions (default: one of the cookbooks' adversarial ones)")
    args = parser.parse_args(argv)
    report = run(tiny=args.tiny, max_tokens=args.max_tokens, questions=args.question or None)
    print("\n" + render_table(report))
    print(f"wrote {write(report, args.out)} and the table and data beside it")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
