"""Runs the LlamaIndex query-engine cookbook end to end and checks its table (tiny models; real ones slow)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from documents import QUESTIONS
from llamaindex_query_engine import query_engine


def check(report: dict[str, object], out_dir: Path, questions: list[str]) -> None:
    rows = report["answers"]
    assert isinstance(rows, list) and [r["question"] for r in rows] == questions
    for row in rows:
        assert row["answer"].strip() and row["sources"]
        assert row["llm_calls"] >= 1
        # Every nudge event reached the handler, inside one of this answer's LLM calls (span ids).
        assert row["nudges_tried"] == row["nudges_returned_by_llm"]
        assert set(row["nudge_spans"]) <= set(row["llm_spans"])
        assert 0 <= row["nudges_kept"] <= row["nudges_tried"]
    assert sum(r["nudges_tried"] for r in rows) > 0
    path = query_engine.write(report, out_dir)  # type: ignore[arg-type]
    assert json.loads(path.read_text(encoding="utf-8"))["answers"] == rows
    table = path.with_suffix(".md").read_text(encoding="utf-8")
    assert table.count("\n| ") == len(rows) + 1 and all(q in table for q in questions)


def test_query_engine_cookbook_on_tiny_models(tmp_path: Path) -> None:
    questions = QUESTIONS[:2]
    report = query_engine.run(tiny=True, max_tokens=24, questions=questions)
    check(report, tmp_path, questions)
    assert [r["sources"][0] for r in report["answers"]] == ["tea.md", "cleaning_chemicals.md"]


@pytest.mark.slow
def test_query_engine_cookbook_on_the_real_default_models(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    questions = QUESTIONS[2:4]
    report = query_engine.run(tiny=False, max_tokens=32, questions=questions)
    check(report, tmp_path, questions)
    with capsys.disabled():
        print("\n" + query_engine.render_table(report))
