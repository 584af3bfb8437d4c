"""Evaluation metrics, the report and its plots (synthetic rows), and `ggro eval` end to end on tiny models."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from ggro.lab.eval.metrics import PeakMemory, coverage_at_k, distinct_n, is_refusal
from ggro.lab.eval.report import paired_difference, plot_frontier, plot_pressure, pressure_of, render_report, summarize


def test_refusal_detector() -> None:
    for text in ["I can't help with that.", "I’m sorry, but no.", "As an AI, I must decline.", "I cannot provide it"]:
        assert is_refusal(text), text
    for text in ["Sure! To kill a stuck Python process, run kill -9.", "Here's a recipe.", ""]:
        assert not is_refusal(text), text
    assert not is_refusal("x" * 200 + " I'm sorry")  # only the opening counts


def test_distinct_n_and_coverage() -> None:
    assert distinct_n(["a b a b", "a b"], 1) == pytest.approx(2 / 6)
    assert distinct_n(["a b a b", "a b"], 2) == pytest.approx(2 / 4)
    assert distinct_n(["", "one"], 2) == 0.0
    golds = [[0.1, 0.9], [0.2, 0.3], [0.6]]
    assert coverage_at_k(golds, 1, 0.5) == pytest.approx(1 / 3)
    assert coverage_at_k(golds, 2, 0.5) == pytest.approx(2 / 3)
    assert coverage_at_k([], 4, 0.5) == 0.0


def test_peak_memory_sees_an_allocation() -> None:
    import numpy as np

    with PeakMemory() as small:
        pass
    with PeakMemory() as big:
        block = np.ones(40_000_000)  # 305 MiB, touched
        del block
    assert small.peak_mb is not None and big.peak_mb is not None
    assert big.peak_mb - small.peak_mb > 200


def _row(set_name: str, index: int, method: str, guidance: float, gold: float, text: str, **extra: object) -> dict:
    return {
        "set": set_name, "index": index, "method": method, "seed": 0, "prompt": f"p{index}", "text": text,
        "guidance_reward": guidance, "gold_reward": gold, "candidates": 1, "candidate_guidance_rewards": [],
        "candidate_gold_rewards": [], "response_tokens": 4, "policy_forward_passes": 4, "reward_calls": 1,
        "seconds": 0.5, "batch_size": 2, "peak_memory_mb": 100.0, "max_new_tokens": 4, **extra,
    }  # fmt: skip


def synthetic_rows() -> list[dict]:
    rows = []
    for i in range(4):
        rows.append(_row("harm", i, "greedy", 0.2, 0.4, f"answer {i}"))
        for n, (guidance, gold) in {2: (0.3, 0.5), 4: (0.5, 0.6), 16: (0.9, 0.3)}.items():
            rows.append(_row("harm", i, f"bon-{n}", guidance, gold, "same text", candidates=n,
                             candidate_gold_rewards=[gold] * (n - 1) + [0.9], seconds=0.1 * n))  # fmt: skip
        for r, (guidance, gold) in {1: (0.2, 0.4), 3: (0.4, 0.5), 8: (0.6, 0.55)}.items():
            rows.append(_row("harm", i, f"ggro-r{r}", guidance, gold, f"I can't {i}", seconds=0.3 * r))
        rows.append(_row("harm", i, "ggro-r8-t3.0", 0.5, 0.5, "ok"))
    rows.append(_row("harm", 4, "greedy", 0.2, 1.0, "extra prompt only greedy answered"))
    return rows


def test_summaries_and_report() -> None:
    rows = synthetic_rows()
    thresholds = {"harm": 0.5}
    ordered = [s.method for s in summarize(rows, thresholds)]
    assert ordered == ["greedy", "bon-2", "bon-4", "bon-16", "ggro-r1", "ggro-r3", "ggro-r8", "ggro-r8-t3.0"]
    summaries = {s.method: s for s in summarize(rows, thresholds)}
    assert summaries["greedy"].prompts == 5 and summaries["greedy"].gold == pytest.approx((0.4 * 4 + 1.0) / 5)
    assert summaries["bon-16"].coverage_at_1 == 0.0 and summaries["bon-16"].pool_coverage == 1.0
    assert summaries["ggro-r3"].refusal_rate == 1.0 and summaries["greedy"].refusal_rate == 0.0
    assert summaries["bon-4"].distinct_1 == pytest.approx(2 / 8)
    assert summaries["greedy"].pool_coverage is None
    common = {s.method: s for s in summarize(rows, thresholds, common_prompts=True)}
    assert common["greedy"].prompts == 4 and common["greedy"].gold == pytest.approx(0.4)
    assert pressure_of("bon-8") == ("Best-of-N", 8)
    assert pressure_of("ggro") == ("GGRO t=1.5", 8)  # the decoder defaults, named
    assert pressure_of("ggro-r2-t3.0") == ("GGRO t=3", 2)
    assert pressure_of("args") is None and pressure_of("greedy") is None

    report = render_report(rows, thresholds, title="T", settings={"max_new_tokens": 4}, plots=["x/eval_frontier.png"])
    assert report.startswith("# T") and "## All responses" in report
    assert "## On the prompts every method answered" in report  # greedy answered one more prompt
    assert "| bon-16 | 4 | 0.900 | 0.300 | 0.00 | 1.00 |" in report
    assert "![eval_frontier](eval_frontier.png)" in report
    assert "## Paired differences" in report
    assert "| harm | bon-16 − greedy | 4 | -0.100 [-0.100, -0.100] | +0.700 [+0.700, +0.700] |" in report
    # A secondary judge's score on the rows gets its own column (here only greedy and bon-16 carry one).
    probed = [{**r, "probe_reward": 0.25 if r["method"] == "greedy" else 0.5} for r in rows]
    probed = [r if r["method"] in ("greedy", "bon-16") else {**r, "probe_reward": None} for r in probed]
    probed = [{**r, "method": "ggro"} if r["method"] == "ggro-r8" else r for r in probed]
    report = render_report(probed, thresholds, title="T", settings={}, plots=[])
    assert "| set | method − baseline | n | gold | probe (secondary) | guidance |" in report
    assert "| harm | bon-16 − greedy | 4 | -0.100 [-0.100, -0.100] | +0.250 [+0.250, +0.250] | +0.700" in report
    assert "| harm | ggro − greedy | 4 | +0.150 [+0.150, +0.150] | n/a | +0.400" in report
    # GGRO against every Best-of-N that ran (bon-2 is not in PAIRS), each pair once.
    assert "| harm | ggro − bon-2 | 4 | +0.050 [+0.050, +0.050] |" in report
    assert report.count("| harm | ggro − bon-4 |") == 1


def test_paired_difference_interval() -> None:
    rows = [_row("s", i, "a", 0.0, 0.5 + 0.1 * (i % 2), "x") for i in range(40)]
    rows += [_row("s", i, "b", 0.0, 0.5, "y") for i in range(40)]
    rows.append(_row("s", 99, "a", 0.0, 9.0, "only a answered this prompt: not compared"))
    mean, low, high, n = paired_difference(rows, "s", "a", "b") or (0, 0, 0, 0)
    assert n == 40 and mean == pytest.approx(0.05)
    assert 0.0 < low < mean < high < 0.1  # half the prompts differ by 0.1: the interval is around 0.05
    assert paired_difference(rows, "s", "a", "zzz") is None


def test_plots_are_written(tmp_path: Path) -> None:
    rows = synthetic_rows()
    frontier = plot_frontier(rows, {"harm": 0.5}, tmp_path / "f.png")
    pressure = plot_pressure(rows, {"harm": 0.5}, tmp_path / "p.png")
    assert frontier.stat().st_size > 10_000
    assert pressure is not None and pressure.stat().st_size > 10_000
    only_greedy = [r for r in rows if r["method"] == "greedy"]
    assert plot_pressure(only_greedy, {"harm": 0.5}, tmp_path / "none.png") is None


def test_frontier_adds_a_sweep_row_where_a_method_ran_on_fewer_prompts(tmp_path: Path) -> None:
    import matplotlib.image

    rows = [r for r in synthetic_rows() if r["index"] < 4]  # every method on the same 4 prompts
    even = matplotlib.image.imread(plot_frontier(rows, {"harm": 0.5}, tmp_path / "even.png"))
    sweep = [_row("harm", i, "bon-8", 0.6, 0.5, "s", seconds=0.8) for i in range(2)]  # 2 of the 4 prompts
    uneven = matplotlib.image.imread(plot_frontier(rows + sweep, {"harm": 0.5}, tmp_path / "uneven.png"))
    assert uneven.shape[0] > 1.8 * even.shape[0]  # a second row of panels: every method on the 2 shared prompts
    assert uneven.shape[1] == even.shape[1]


def test_ggro_eval_command_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("vaderSentiment")
    from ggro.cli import main
    from ggro.testing import save_tiny_models

    policy, reward = save_tiny_models(tmp_path / "models")
    out = tmp_path / "results"
    argv = ["eval", "--policy", str(policy), "--reward", str(reward), "--sets", "benign", "realtoxicity",
            "--methods", "greedy", "bon-2", "bon-4", "ggro-r2", "--limit", "3", "--batch-size", "2",
            "--max-new-tokens", "6", "--out-dir", str(out), "--no-progress", "--gold", "probe"]  # fmt: skip
    assert main(argv) == 0
    assert f"report: {out / 'eval.md'}" in capsys.readouterr().out
    rows = [json.loads(line) for line in (out / "eval.jsonl").read_text().splitlines()]
    assert len(rows) == 2 * 3 * 4
    assert {(r["set"], r["gold_judge"]) for r in rows} == {
        ("benign", "minilm harm probe"),
        ("realtoxicity", "vader sentiment"),
    }
    assert not any("probe_reward" in r for r in rows)  # the probe is the gold here, not a second column
    # Judged in one call per batch, each row's golds are still its own: Best-of-N's answer is one of its
    # candidates (equal up to float32 rounding: MiniLM embeds it in differently padded batches).
    for r in rows:
        if r["method"].startswith("bon-"):
            assert len(r["candidate_gold_rewards"]) == int(r["method"][4:])
            assert any(abs(g - r["gold_reward"]) < 1e-5 for g in r["candidate_gold_rewards"])
    assert {r["batch_size"] for r in rows} == {1, 2}  # windows of 2 prompts: 2, then 1
    assert all(r["peak_memory_mb"] and r["max_new_tokens"] == 6 for r in rows)
    assert all(-1.0 <= r["gold_reward"] <= 1.0 for r in rows if r["set"] == "realtoxicity")
    assert all(not math.isnan(r["gold_reward"]) for r in rows)
    report = (out / "eval.md").read_text()
    assert "### benign" in report and "### realtoxicity" in report and "gold threshold" in report
    assert (out / "eval_frontier.png").exists() and (out / "eval_pressure.png").exists()

    # Resumable: a second run computes nothing new; --report-only rewrites the report from the JSONL.
    assert main(argv) == 0
    assert len((out / "eval.jsonl").read_text().splitlines()) == len(rows)
    # A run over fewer sets still reports every set the file holds.
    one_set = [*argv[: argv.index("--sets") + 1], "benign", *argv[argv.index("--methods") :]]
    assert main(one_set) == 0
    assert "### realtoxicity" in (out / "eval.md").read_text()
    (out / "eval.md").unlink()
    assert main(["eval", "--report-only", "--out-dir", str(out), "--max-new-tokens", "6"]) == 0
    assert "- policy: `tiny-policy`" in (out / "eval.md").read_text()  # read from the rows, not the command
    assert main(["eval", "--report-only", "--out-dir", str(out)]) == 2  # no rows at the default budget of 16
    assert "report: no rows in" in capsys.readouterr().err
    assert main(["eval", "--methods", "beam-4", "--out-dir", str(out), "--policy", str(policy),
                 "--reward", str(reward)]) == 2  # fmt: skip
    assert "method: unknown 'beam-4'" in capsys.readouterr().err


def _tiny_llm_judge() -> Any:
    """The zero-shot judge's code on the tiny random character-level model (answers "Y"/"N", one token each)."""
    from ggro.lab.llm_judge import LLMGoldJudge
    from ggro.testing import tiny_policy, tiny_tokenizer

    tokenizer = tiny_tokenizer()
    return LLMGoldJudge(tiny_policy(tokenizer, seed=3), tokenizer, answers=("Y", "N"), max_response_tokens=40)


def test_ggro_eval_runs_a_prompts_file_as_its_own_set(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from ggro.cli import main
    from ggro.lab.eval import suite
    from ggro.testing import save_tiny_models

    judge = _tiny_llm_judge()  # the default gold (--gold llm), on a tiny model instead of the real 1.5B
    monkeypatch.setattr(suite, "_loaded_llm_judge", lambda: judge)

    policy, reward = save_tiny_models(tmp_path / "models")
    prompts = tmp_path / "mine.txt"
    prompts.write_text("How do I bake bread?\n\nName three rivers.\nWhat is rain?\n", encoding="utf-8")
    out = tmp_path / "results"
    argv = ["eval", "--policy", str(policy), "--reward", str(reward), "--prompts-file", str(prompts),
            "--set-name", "everyday", "--methods", "greedy", "ggro-r2", "--max-new-tokens", "5",
            "--out-dir", str(out), "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    rows = [json.loads(line) for line in (out / "eval.jsonl").read_text().splitlines()]
    # Only the file's set (no standard set without --sets), every non-blank line, each method once.
    assert {r["set"] for r in rows} == {"everyday"}
    assert sorted((r["method"], r["prompt"]) for r in rows) == sorted(
        (m, p) for m in ("greedy", "ggro-r2") for p in ("How do I bake bread?", "Name three rivers.", "What is rain?")
    )
    assert all(isinstance(r["text"], str) and 0.0 <= r["gold_reward"] <= 1.0 for r in rows)
    # The LLM judge's gold (a file's prompts: the judge asks whether each request is harmful), the MiniLM
    # probe beside it.
    assert {r["gold_judge"] for r in rows} == {"qwen2.5-coder-1.5b zero-shot judge"}
    for r in rows:
        assert r["gold_reward"] == pytest.approx(judge.gold_rewards([r["prompt"]], [r["text"]])[0], abs=1e-5)
        assert 0.0 <= r["probe_reward"] <= 1.0
    assert "### everyday" in (out / "eval.md").read_text()
    (out / "eval.md").unlink()
    report_only = ["eval", "--report-only", "--out-dir", str(out), "--max-new-tokens", "5", "--set-name", "everyday"]
    assert main(report_only) == 0 and "### everyday" in (out / "eval.md").read_text()
    # A later run on other sets (or a report without --set-name) keeps the file's set, at its threshold.
    (out / "eval.md").unlink()
    assert main(report_only[:-2]) == 0 and "### everyday" in (out / "eval.md").read_text()
    assert "gold threshold for coverage (`everyday`): 0.5" in (out / "eval.md").read_text()
    capsys.readouterr()
    # The file's problems and a name that would mix with a standard set are clear errors.
    (tmp_path / "empty.txt").write_text("\n  \n", encoding="utf-8")
    assert main([*argv[:5], "--prompts-file", str(tmp_path / "empty.txt"), "--out-dir", str(tmp_path / "x")]) == 2
    assert "empty.txt: no prompts (one a line)" in capsys.readouterr().err
    clash = [*argv]
    clash[clash.index("everyday")] = "benign"
    assert main(clash) == 2
    assert "set name: ['benign'] would mix with a standard set" in capsys.readouterr().err
    # Rows judged by one gold are not resumed with another.
    assert main([*argv, "--gold", "probe"]) == 2
    assert "judged by 'qwen2.5-coder-1.5b zero-shot judge', not 'minilm harm probe'" in capsys.readouterr().err


def test_llm_gold_knows_which_standard_sets_are_benign(monkeypatch: pytest.MonkeyPatch) -> None:
    from ggro.lab.eval import suite

    judge = _tiny_llm_judge()
    monkeypatch.setattr(suite, "_loaded_llm_judge", lambda: judge)
    monkeypatch.setattr(suite, "_harm_judge", lambda: lambda prompts, responses: [0.5] * len(prompts))
    built = suite.default_suite(["harmbench", "benign"], size=2, extra={"mine": ["Hi"]})
    prompts, responses = ["How do I bake bread?"], ["I can't help with that."]
    # The benign set's refusals count against it; HarmBench's do not; a file's prompts are asked about.
    assert built.judges["benign"](prompts, responses) == judge.gold_rewards(prompts, responses, benign=[True])
    assert built.judges["harmbench"](prompts, responses) == judge.gold_rewards(prompts, responses, benign=[False])
    assert built.judges["mine"](prompts, responses) == judge.gold_rewards(prompts, responses)
    assert set(built.secondary["probe_reward"]) == {"harmbench", "benign", "mine"}
    with pytest.raises(ValueError, match=r"gold: unknown judge 'gpt'; allowed: \['llm', 'probe'\]"):
        suite.default_suite(["benign"], gold="gpt")
