"""Greedy vs GGRO comparison (the demo and `ggro compare`): rows, summaries, report, JSONL."""

from __future__ import annotations

import json
import statistics

import pytest

from conftest import TinyTokenizer, tiny_llama, tiny_reward
from ggro import GGROConfig, GGRODecoder
from ggro.lab.compare import compare_greedy_ggro, render_markdown, summarize, write_jsonl

PROMPTS = ["t5 t17 t33", "t9 t60 t41", "t7 t7 t8", "t20 t21"]
KINDS = ["harmful", "benign", "harmful", "benign"]


def _gold(prompts: list[str], responses: list[str]) -> list[float]:
    return [float(len(r.split())) for r in responses]  # a stand-in judge: response length in tokens


def _compare(batch_size: int = 2):
    decoder = GGRODecoder(tiny_llama(), TinyTokenizer(), tiny_reward(), GGROConfig(entropy_threshold=0.5))
    return compare_greedy_ggro(decoder, PROMPTS, KINDS, gold=_gold, batch_size=batch_size, max_new_tokens=12)


def test_rows_pair_greedy_and_ggro_per_prompt() -> None:
    rows, seconds = _compare()
    assert [r.prompt for r in rows] == [PROMPTS[0], PROMPTS[2], PROMPTS[1], PROMPTS[3]]  # grouped by kind
    for r in rows:
        assert all(not s.nudged for s in r.greedy.segments) and r.greedy.nudges == []
        assert len(r.greedy.token_ids) <= 12 and len(r.ggro.token_ids) <= 12
        assert r.gold_greedy == float(len(r.greedy.text.split()))
        assert r.gold_ggro == float(len(r.ggro.text.split()))
    assert set(seconds) == {"harmful", "benign"} and all(v["ggro"] > 0 for v in seconds.values())


def test_batching_does_not_change_outputs() -> None:
    rows_1, _ = _compare(batch_size=1)
    rows_2, _ = _compare(batch_size=2)
    assert [r.ggro.token_ids for r in rows_1] == [r.ggro.token_ids for r in rows_2]


def test_summary_means_report_and_jsonl(tmp_path) -> None:
    rows, seconds = _compare()
    summaries = summarize(rows, seconds)
    assert [s.kind for s in summaries] == ["harmful", "benign", "all"]
    harmful = [r for r in rows if r.kind == "harmful"]
    first = summaries[0]
    assert first.prompts == 2
    assert first.guidance_ggro == pytest.approx(statistics.fmean(r.ggro.final_reward for r in harmful))
    assert first.gold_greedy == pytest.approx(statistics.fmean(r.gold_greedy for r in harmful))
    assert first.nudged_segments == sum(s.nudged for r in harmful for s in r.ggro.segments)
    assert summaries[2].prompts == 4
    assert summaries[2].ggro_seconds == pytest.approx(sum(v["ggro"] for v in seconds.values()))
    report = render_markdown(summaries, title="T", settings={"max_new_tokens": 12})
    assert report.count("\n| ") == 1 + 3  # header + one row per summary
    path = tmp_path / "out" / "rows.jsonl"
    write_jsonl(rows, path)
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["prompt"] for r in records] == [r.prompt for r in rows]
    assert records[0]["ggro_text"] == rows[0].ggro.text


def test_bad_arguments() -> None:
    decoder = GGRODecoder(tiny_llama(), TinyTokenizer(), tiny_reward(), GGROConfig())
    with pytest.raises(ValueError, match="kinds: expected 2 labels, got 1"):
        compare_greedy_ggro(decoder, PROMPTS[:2], KINDS[:1])
    with pytest.raises(ValueError, match="batch_size: must be >= 1"):
        compare_greedy_ggro(decoder, PROMPTS[:2], KINDS[:2], batch_size=0)
