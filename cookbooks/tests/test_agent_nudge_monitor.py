"""Runs the LangGraph agent cookbook and its evaluation harness: the model's tool calls, the per-step nudge
tallies, the recursion limit recorded rather than raised (tiny models; the real policy is slow)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from ggro.lab.agent_tasks import TASKS
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage

from agent_nudge_monitor import agent, evaluate


def check_run(run: dict[str, object], forced: bool) -> None:
    rows = run["llm_calls"]
    assert isinstance(rows, list) and rows and all(r["node"] == "agent" for r in rows)
    # LangGraph steps alternate agent / tools: the LLM calls are the odd steps.
    assert [r["step"] for r in rows] == list(range(1, 2 * len(rows), 2))
    calls = run["calls"]
    assert isinstance(calls, list)
    if forced:  # the grammar made the first response a valid call of one of the two tools
        assert calls and calls[0][0] in ("multiply", "lookup") and calls[0][2]
        assert rows[0]["action"].startswith(calls[0][0] + "(")
        assert rows[0]["in_text"] == 0  # a call's nudges land in its string values, never on its syntax
    assert run["results_fed_back"] <= len(calls)
    assert not (run["ended"] and run["hit_limit"])
    if run["ended"]:
        assert rows[-1]["action"] == "answered"
    for row in rows:
        assert row["in_text"] + row["in_value"] == row["nudges_tried"]
        assert 0 <= row["nudges_kept"] <= row["nudges_tried"]
        # The response lists its own nudges; a response decoded again (asked for the answer instead of a
        # repeated call) lists fewer than the handlers received.
        assert row["nudges_returned"] <= row["nudges_tried"]


def test_agent_cookbook_on_tiny_models(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tasks = [TASKS[0], TASKS[6]]
    report = agent.run(tiny=True, max_tokens=100, tasks=tasks, max_steps=2)
    printed = capsys.readouterr().out
    runs = report["runs"]
    assert [r["question"] for r in runs] == [t.question for t in tasks]
    for run in runs:
        check_run(run, forced=True)
        assert run["results_fed_back"] >= 1  # the forced call's result went back to the model
        assert run["score"]["calls"] == len(run["calls"]) and run["score"]["first_call_right"] in (True, False)
    total = sum(r["nudges_tried"] for run in runs for r in run["llm_calls"])
    assert total > 0 and printed.count("nudge at token") == total
    path = agent.write(report, tmp_path)
    assert json.loads(path.read_text(encoding="utf-8"))["runs"] == json.loads(json.dumps(runs))
    table = path.with_suffix(".md").read_text(encoding="utf-8")
    assert table.count("\n| ") == 1 + sum(len(run["llm_calls"]) for run in runs)


def test_the_recursion_limit_is_recorded_not_raised() -> None:
    report = agent.run(tiny=True, max_tokens=100, tasks=[TASKS[0]], max_steps=0)  # recursion_limit=1
    (run,) = report["runs"]
    check_run(run, forced=True)
    assert run["hit_limit"] and not run["ended"] and len(run["llm_calls"]) == 1 and run["results_fed_back"] == 0
    assert run["score"]["ended_by_itself"] is False


def test_calls_are_read_from_the_messages() -> None:
    messages = [
        HumanMessage("What is 17 times 23?"),
        AIMessage("", tool_calls=[{"name": "multiply", "args": {"a": "x", "b": 23}, "id": "c1"}]),
        ToolMessage("a: not an integer", tool_call_id="c1", name="multiply", status="error"),
        AIMessage("", tool_calls=[{"name": "multiply", "args": {"a": 17, "b": 23}, "id": "c2"}]),
        ToolMessage("391", tool_call_id="c2", name="multiply"),
        AIMessage("", invalid_tool_calls=[{"name": "multiply", "args": '{"a": 17', "id": "c3", "error": "bad JSON"}]),
    ]
    assert agent.extract_calls(messages) == [
        ("multiply", {"a": "x", "b": 23}, False),
        ("multiply", {"a": 17, "b": 23}, True),
        ("multiply", {"raw": '{"a": 17'}, False),
    ]
    assert agent.results_fed_back(messages) == 2
    assert agent.results_fed_back(messages[:5]) == 1  # the last result was not read by an LLM call
    assert agent.describe_action(messages[3]) == "multiply(a=17, b=23)"
    assert agent.describe_action(messages[5]) == "invalid call"


def test_the_evaluation_harness_on_tiny_models(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--framework", "langgraph", "--variant", "baseline", "--tasks", "2", "--max-steps", "1", "--tiny"]
    assert evaluate.main([*argv, "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    report = json.loads((tmp_path / "agents_langgraph_baseline_forced.json").read_text(encoding="utf-8"))
    assert report["options"] == {"answer_instead_of_repeating": False, "describe_tool_results": False}
    assert report["limit"] == {"recursion_limit": 3} and report["force_first_call"] and report["tiny"]
    rows = report["tasks"]
    assert [r["question"] for r in rows] == [t.question for t in TASKS[:2]]
    totals = report["totals"]
    for column in (*evaluate.BOOLEAN_COLUMNS, "hit_limit"):
        assert totals[column] == sum(bool(r[column]) for r in rows)
    assert totals["llm_calls"] == sum(r["llm_calls"] for r in rows) and totals["errors"] == 0
    assert totals["nudges"] == totals["nudges_in_text"] + totals["nudges_in_value"]
    for row in rows:
        assert row["llm_calls"] == len(row["per_llm_call"]) and row["tool_calls"][0][2]
        assert row["ended_by_itself"] != row["hit_limit"] or not row["ended_by_itself"]
    assert report["markdown"] in printed
    assert report["markdown"].count("\n| ") == 2 + len(rows) and "| **total (2 tasks)** |" in report["markdown"]


@pytest.mark.slow
def test_agent_cookbook_on_the_real_policy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tasks = [TASKS[0], TASKS[6]]
    report = agent.run(tiny=False, tasks=tasks, max_steps=3)
    printed = capsys.readouterr().out
    assert report["model_name"] == agent.POLICY
    for run in report["runs"]:
        check_run(run, forced=False)
        assert run["seconds"] > 0
    agent.write(report, tmp_path)
    with capsys.disabled():
        print(printed + "\n" + agent.render_table(report))
