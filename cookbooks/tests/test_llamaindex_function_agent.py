"""Runs the LlamaIndex FunctionAgent cookbook and the evaluation harness on it: the streamed tool calls, the
nudges counted per LLM call through instrumentation, ``max_iterations`` recorded rather than raised (tiny
models; the real policy is slow)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from ggro.lab.agent_tasks import TASKS
from llama_index.core.instrumentation import get_dispatcher

from agent_nudge_monitor import evaluate
from llamaindex_function_agent import agent


def check_run(run: dict[str, object], forced: bool) -> None:
    rows = run["llm_calls"]
    assert isinstance(rows, list) and rows
    assert len({r["span_id"] for r in rows}) == len(rows)  # one instrumentation span per LLM call
    calls = run["calls"]
    assert isinstance(calls, list)
    if forced:  # initial_tool_choice="required": the grammar made the first response a valid call
        assert calls and calls[0][0] in ("multiply", "lookup") and calls[0][2]
        assert rows[0]["action"].startswith(calls[0][0] + "(")
        assert rows[0]["in_text"] == 0  # a call's nudges land in its string values, never on its syntax
    assert run["results_fed_back"] <= len(calls)
    assert not (run["ended"] and run["hit_limit"])
    if run["ended"]:
        assert rows[-1]["action"] == "answered" and run["final"]
    for row in rows:
        assert row["in_text"] + row["in_value"] == row["nudges_tried"]
        assert 0 <= row["nudges_kept"] <= row["nudges_tried"]
        assert row["nudges_returned"] <= row["nudges_tried"]  # fewer when a repeated call was decoded again


def test_function_agent_cookbook_on_tiny_models(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    handlers = len(get_dispatcher().event_handlers)
    tasks = [TASKS[3], TASKS[7]]
    report = agent.run(tiny=True, max_tokens=100, tasks=tasks, max_steps=2)
    printed = capsys.readouterr().out
    assert len(get_dispatcher().event_handlers) == handlers  # the watcher was removed
    runs = report["runs"]
    assert [r["question"] for r in runs] == [t.question for t in tasks]
    for run in runs:
        check_run(run, forced=True)
        assert run["results_fed_back"] >= 1
        assert printed.count(f"  agent: {run['calls'][0][0]}(") >= 1
        assert run["score"]["calls"] == len(run["calls"])
    total = sum(r["nudges_tried"] for run in runs for r in run["llm_calls"])
    assert total > 0 and printed.count("nudge at token") == total
    path = agent.write(report, tmp_path)
    assert json.loads(path.read_text(encoding="utf-8"))["runs"] == json.loads(json.dumps(runs))
    table = path.with_suffix(".md").read_text(encoding="utf-8")
    assert table.count("\n| ") == 1 + sum(len(run["llm_calls"]) for run in runs)


def test_max_iterations_is_recorded_not_raised() -> None:
    report = agent.run(tiny=True, max_tokens=100, tasks=[TASKS[0]], max_steps=0)  # max_iterations=2
    (run,) = report["runs"]
    check_run(run, forced=True)
    assert run["hit_limit"] and not run["ended"] and run["score"]["ended_by_itself"] is False


def test_the_evaluation_harness_on_tiny_models(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--framework", "llamaindex", "--variant", "improved", "--tasks", "2", "--max-steps", "1", "--tiny"]
    assert evaluate.main([*argv, "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    report = json.loads((tmp_path / "agents_llamaindex_improved_forced.json").read_text(encoding="utf-8"))
    assert report["options"] == {} and report["limit"] == {"max_iterations": 3}
    rows = report["tasks"]
    assert len(rows) == 2 and report["totals"]["llm_calls"] == sum(r["llm_calls"] for r in rows)
    assert report["totals"]["errors"] == 0 and all(r["tool_calls"][0][2] for r in rows)
    assert report["markdown"] in printed and "| **total (2 tasks)** |" in report["markdown"]


@pytest.mark.slow
def test_function_agent_cookbook_on_the_real_policy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tasks = [TASKS[3], TASKS[6]]
    report = agent.run(tiny=False, tasks=tasks, max_steps=3)
    printed = capsys.readouterr().out
    assert report["model_name"] == agent.POLICY
    for run in report["runs"]:
        check_run(run, forced=False)
    agent.write(report, tmp_path)
    with capsys.disabled():
        print(printed + "\n" + agent.render_table(report))
