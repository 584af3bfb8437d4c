"""`ggro bench` on tiny random models: the JSON report's shape, identity pairs, skipped and failed methods,
the time profile, the markdown section and the CPU memory probe's child side (no subprocess here)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from ggro import GGROConfig
from ggro.cli import main
from ggro.lab import bench
from ggro.lab.bench import METHODS, BenchModels, BenchSettings, run_bench
from ggro.testing import save_tiny_models, tiny_policy, tiny_reward, tiny_tokenizer

GGRO_METHODS = [m for m in METHODS if m.startswith("ggro")]
ROW_KEYS = {"median_s", "x_greedy", "policy_forward_passes", "reward_calls", "peak_mem_x_greedy"}


@pytest.fixture(scope="module")
def tiny_paths(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return save_tiny_models(tmp_path_factory.mktemp("models"))


def _last_json(out: str) -> dict[str, Any]:
    report: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return report


def _in_memory(reference: bool = True) -> BenchModels:
    tokenizer = tiny_tokenizer()
    reward = tiny_reward(tokenizer, seed=1)
    return BenchModels(
        tiny_policy(tokenizer, seed=0),
        tokenizer,
        reward,
        reference_reward=tiny_reward(tokenizer, seed=2) if reference else None,
        policy_name="tiny",
    )


def _settings(*methods: str, **changes: Any) -> BenchSettings:
    values: dict[str, Any] = dict(
        config=GGROConfig(max_new_tokens=8),
        methods=methods or None,
        prompts=2,
        runs=1,
        memory=False,
        json=True,
    )
    values.update(changes)
    return BenchSettings(**values)


def test_json_report_from_local_paths(tiny_paths, capsys: pytest.CaptureFixture[str]) -> None:
    policy, reward = tiny_paths
    argv = ["bench", "--policy", str(policy), "--reward", str(reward), "--json", "--no-memory"]
    code = main([*argv, "--runs", "1", "--prompts", "2", "--max-new-tokens", "8", "--refinement-steps", "3"])
    report = _last_json(capsys.readouterr().out)
    assert {"device", "policy", "reward", "settings", "methods", "identical"} <= report.keys()
    assert (report["policy"], report["reward"]) == (str(policy), str(reward))
    assert report["settings"]["config"] == {"max_new_tokens": 8, "refinement_steps": 3}
    assert (report["settings"]["prompts"], report["settings"]["runs"]) == (2, 1)
    # the reference reward is on SmolLM2's vocabulary: not with another policy
    assert set(report["skipped"]) >= {"reference", "release-structure"}
    assert set(report["methods"]) | set(report["skipped"]) == set(METHODS)
    for name, row in report["methods"].items():
        assert row.keys() >= ROW_KEYS
        assert row["peak_mem_x_greedy"] is None  # --no-memory
        if row.get("error"):
            continue
        assert row["median_s"] > 0 and len(row["runs_s"]) == 1
        if name != "greedy":
            assert row["x_greedy"] == pytest.approx(row["median_s"] / report["methods"]["greedy"]["median_s"])
        if not name.startswith("greedy"):
            assert row["reward_calls"] > 0
            assert "profile" in row
    greedy = report["methods"]["greedy"]
    assert greedy["x_greedy"] == 1.0 and greedy["reward_calls"] == 0
    assert greedy["policy_forward_passes"] == greedy["tokens"] == 16  # the tiny policy never ends a turn
    greedy_batch = report["methods"]["greedy-batch"]  # one pass per new token serves both prompts
    assert (greedy_batch["policy_forward_passes"], greedy_batch["tokens"], greedy_batch["reward_calls"]) == (8, 16, 0)
    ggro, batch = report["methods"]["ggro"], report["methods"]["ggro-batch"]
    assert batch["policy_forward_passes"] < ggro["policy_forward_passes"]
    assert report["identical"]["ggro=ggro-batch"] is True
    assert all(pair.count("=") == 1 for pair in report["identical"])
    failed = any(row.get("error") for row in report["methods"].values())
    assert code == (1 if failed or not all(report["identical"].values()) else 0)


def test_reference_pair_and_markdown_with_in_memory_models(tmp_path: Path, capsys) -> None:
    out = tmp_path / "benchmarks.md"
    out.write_text("# Benchmarks\n\n<!-- bench:other|float32|kept -->\n## another section\n", encoding="utf-8")
    settings = _settings("greedy", "ggro", "reference", "release-structure", out=str(out), prompts=1)
    code = run_bench(settings, _in_memory())
    report = _last_json(capsys.readouterr().out)
    assert list(report["methods"]) == ["greedy", "ggro", "reference", "release-structure"]
    assert report["identical"] == {"reference=release-structure": True}
    assert code == 0
    assert report["settings"]["reference_config"] == "GGROConfig.reference(max_new_tokens=8)"
    assert "profile" in report["methods"]["reference"] and "profile" not in report["methods"]["release-structure"]
    profile = report["methods"]["ggro"]["profile"]
    if profile is not None:  # Timing reports its parts in this checkout
        assert set(profile) == {"policy_forward", "reward_forward", "backward", "grammar", "other", "total"}
        assert profile["total"] == pytest.approx(sum(v for k, v in profile.items() if k != "total"))
    text = out.read_text(encoding="utf-8")
    assert "<!-- bench:other|float32|kept -->" in text  # other sections stay
    assert "| method | median s | x greedy | policy forwards | reward calls | peak mem x greedy |" in text
    assert "| method | policy forward | reward forward | backward | grammar | other | total |" in text
    assert "reference=release-structure **True**" in text


def test_methods_without_their_options_are_skipped_and_failures_reported(monkeypatch, capsys) -> None:
    monkeypatch.setattr(bench, "method_options", lambda name: {"no_such_option": 1} if name == "ggro-fast" else {})
    original = bench.GGRODecoder.generate_ids

    def broken(self: Any, prompt_ids: Any, **kwargs: Any) -> Any:
        if len(prompt_ids) > 1:
            raise NotImplementedError("batches are not done yet")
        return original(self, prompt_ids, **kwargs)

    monkeypatch.setattr(bench.GGRODecoder, "generate_ids", broken)
    code = run_bench(_settings("greedy", "ggro", "ggro-batch", "ggro-fast", "reference"), _in_memory(reference=False))
    out = capsys.readouterr().out
    report = _last_json(out)
    assert report["skipped"] == {
        "ggro-fast": "GGROConfig has no no_such_option in this checkout",
        "reference": "no reference reward given",
    }
    assert "note: skipping ggro-fast" in out
    assert report["methods"]["ggro-batch"]["error"] == "NotImplementedError: batches are not done yet"
    assert report["methods"]["ggro-batch"]["median_s"] is None
    assert report["methods"]["ggro"]["median_s"] > 0
    assert report["identical"] == {}
    assert code == 1


def test_profile_takes_the_batch_policy_time_once() -> None:
    def result(policy: float | None, reward: float | None, backward: float | None, seconds: float) -> Any:
        timing = SimpleNamespace(
            seconds=seconds,
            policy_seconds=policy,
            reward_seconds=reward,
            reward_backward_seconds=backward,
            constraint_seconds=None,
        )
        return SimpleNamespace(timing=timing)

    results = [result(3.0, 1.0, 0.5, 6.0), result(2.0, 2.0, None, 6.0)]
    assert bench._profile(results, batched=True) == {
        "policy_forward": 3.0,
        "reward_forward": 2.5,
        "backward": 0.5,
        "grammar": 0.0,
        "other": 0.0,
        "total": 6.0,
    }
    one_at_a_time = bench._profile(results, batched=False)
    assert one_at_a_time is not None
    assert (one_at_a_time["policy_forward"], one_at_a_time["total"], one_at_a_time["other"]) == (5.0, 12.0, 4.0)
    old = [SimpleNamespace(timing=SimpleNamespace(seconds=1.0, constraint_seconds=None))]
    assert bench._profile(old, batched=False) is None  # an older Timing without the parts


def test_memory_probe_child_prints_base_and_peak(tiny_paths, capsys) -> None:
    policy, reward = tiny_paths
    settings = _settings("greedy", policy=str(policy), reward=str(reward), memory_probe="greedy", json=False)
    bench.probe_memory(bench._settings_json(settings))
    probe = _last_json(capsys.readouterr().out)
    # in a fresh process peak >= base; inside pytest the RSS may shrink between the two readings
    assert probe["peak"] > 0 and probe["base"] > 0


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="methods: unknown"):
        BenchSettings(methods=("ggro", "beam"))
    with pytest.raises(ValueError, match="synthetic_1b"):
        BenchSettings(synthetic_1b=True, policy="smollm2-135m-instruct")
    assert BenchSettings(methods=("reference", "greedy")).selected() == ["greedy", "reference"]
    assert BenchSettings().selected() == list(METHODS) and set(GGRO_METHODS) < set(METHODS)
