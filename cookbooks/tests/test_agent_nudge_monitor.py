"""Runs the agent cookbook end to end: steps, per-step nudge tallies, and the plot (tiny models; real ones slow)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent_nudge_monitor import agent
from documents import QUESTIONS


def check(report: dict[str, object], out_dir: Path, printed: str, questions: list[str]) -> None:
    runs = report["runs"]
    assert isinstance(runs, list) and [r["question"] for r in runs] == questions
    for run in runs:
        needs_safety = bool(agent.SAFETY_SOURCES & set(run["sources"]))
        assert run["steps"] == ["plan", "search", "answer", *(["safety"] if needs_safety else [])]
        assert run["answer"].strip() and run["sources"]
        assert agent.EMERGENCY_ADVICE in run["answer"] if needs_safety else agent.EMERGENCY_ADVICE not in run["answer"]
        # Two LLM calls (plan, answer); each received exactly the nudges its response lists.
        assert [c["step"] for c in run["llm_calls"]] == ["plan", "answer"]
        assert all(c["nudges_received"] == c["nudges_returned"] for c in run["llm_calls"])
        assert set(run["per_step"]) == {"plan", "answer"}
        assert sum(s["nudges_tried"] for s in run["per_step"].values()) == sum(
            c["nudges_received"] for c in run["llm_calls"]
        )
    total = sum(c["nudges_received"] for r in runs for c in r["llm_calls"])
    assert total > 0 and printed.count("nudge at token") == total
    traces = report["traces"]
    assert isinstance(traces, list) and len(traces) == 2 * len(runs)
    for trace in traces:  # the recomputed entropy agrees with what the decoder saw at each nudge
        assert all(abs(trace.entropies[n["insertion_position"]] - n["entropy"]) < 1e-3 for n in trace.nudges)
    plot = agent.write(report, out_dir)  # type: ignore[arg-type]
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 10_000
    saved = json.loads((out_dir / "agent_nudge_monitor.json").read_text(encoding="utf-8"))
    assert saved["runs"] == runs
    assert (out_dir / "agent_nudge_monitor.md").read_text(encoding="utf-8").count("\n| ") == 1 + 2 * len(runs)


def test_agent_cookbook_on_tiny_models(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    questions = QUESTIONS[:2]
    report = agent.run(tiny=True, max_tokens=24, questions=questions)
    check(report, tmp_path, capsys.readouterr().out, questions)


@pytest.mark.slow
def test_agent_cookbook_on_the_real_default_models(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    questions = [QUESTIONS[1]]
    report = agent.run(tiny=False, max_tokens=32, questions=questions)
    printed = capsys.readouterr().out
    check(report, tmp_path, printed, questions)
    with capsys.disabled():
        print(printed + "\n" + agent.render_table(report))
