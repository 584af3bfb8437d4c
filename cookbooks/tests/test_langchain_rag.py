"""Runs the LangChain RAG cookbook end to end and checks what it produced (tiny models; real ones marked slow)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from documents import QUESTIONS
from langchain_rag import rag_chain


def check(report: dict[str, object], out_dir: Path, printed: str, questions: list[str]) -> None:
    rows = report["answers"]
    assert isinstance(rows, list) and [r["question"] for r in rows] == questions
    for row in rows:
        assert row["greedy"].strip() and row["ggro"].strip()  # an answer from each decoder
        assert row["sources"]  # the retriever gave the model context
        assert row["nudge_events_received"] == row["nudges_in_result"] == row["nudges_tried"]
    assert sum(r["nudge_events_received"] for r in rows) > 0
    assert printed.count("nudge at token") == sum(r["nudge_events_received"] for r in rows)
    path = rag_chain.write(report, out_dir)  # type: ignore[arg-type]
    assert json.loads(path.read_text(encoding="utf-8"))["answers"] == rows
    plot = out_dir / "langchain_rag_entropy.png"
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 10_000
    traces = report["traces"]
    assert isinstance(traces, list) and len(traces) == len(rows)
    for trace, row in zip(traces, rows, strict=True):
        assert len(trace.nudges) == row["nudges_tried"]
        assert all(abs(trace.entropies[n["insertion_position"]] - n["entropy"]) < 1e-3 for n in trace.nudges)
    assert path.with_suffix(".md").read_text(encoding="utf-8").count("\n| ") == len(rows) + 1


def test_rag_cookbook_on_tiny_models(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    questions = QUESTIONS[:2]
    report = rag_chain.run(tiny=True, max_tokens=24, questions=questions)
    check(report, tmp_path, capsys.readouterr().out, questions)
    sources = [r["sources"][0] for r in report["answers"]]  # MiniLM retrieval is real even with tiny LLMs
    assert sources == ["tea.md", "cleaning_chemicals.md"]


@pytest.mark.slow
def test_rag_cookbook_on_the_real_default_models(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    questions = QUESTIONS[1:3]
    report = rag_chain.run(tiny=False, max_tokens=32, questions=questions)
    printed = capsys.readouterr().out
    check(report, tmp_path, printed, questions)
    with capsys.disabled():
        print(printed)
