"""`ggro generate` end to end, with models loaded from local paths (tiny models saved with save_pretrained,
the real SmolLM2 tokenizer)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

from ggro.cli import main

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_paths(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from ggro.assets import default_policy_path

    tokenizer = AutoTokenizer.from_pretrained(str(default_policy_path()))
    root = tmp_path_factory.mktemp("models")
    shape = dict(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        initializer_range=0.2,
    )
    torch.manual_seed(0)
    policy = LlamaForCausalLM(LlamaConfig(**shape, eos_token_id=2, pad_token_id=2, bos_token_id=1))
    rm = LlamaForSequenceClassification(LlamaConfig(**shape, num_labels=1, pad_token_id=2))
    for model, name in ((policy, "policy"), (rm, "reward")):
        model.save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
    return root / "policy", root / "reward"


def test_generate_json_from_local_paths(tiny_paths, capsys: pytest.CaptureFixture[str]) -> None:
    policy, reward = tiny_paths
    code = main(
        [
            "generate",
            "--policy",
            str(policy),
            "--reward",
            str(reward),
            "--json",
            "--max-new-tokens",
            "24",
            "--entropy-threshold",
            "1.0",
            "--refinement-steps",
            "3",
            "Hello there",
            "What is 2+2?",
        ]
    )
    assert code == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2
    for line in lines:
        obj = json.loads(line)
        assert {"text", "nudges", "segments", "usage", "seconds"} <= obj.keys()
        assert obj["usage"]["completion_tokens"] <= 24
        assert obj["num_nudges"] == sum(1 for n in obj["nudges"] if n["kept"])
        assert "".join(s["text"] for s in obj["segments"]) == obj["text"]


def test_generate_plain_output_marks_nudges(tiny_paths, capsys: pytest.CaptureFixture[str]) -> None:
    policy, reward = tiny_paths
    assert (
        main(
            [
                "generate",
                "--policy",
                str(policy),
                "--reward",
                str(reward),
                "--max-new-tokens",
                "16",
                "--batch",
                "Hi",
                "Bye",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert out.count("[segments: ") == 2 and "nudges: " in out and "seconds: " in out


def test_bad_option_value_is_a_clear_error(tiny_paths, capsys: pytest.CaptureFixture[str]) -> None:
    policy, reward = tiny_paths
    code = main(["generate", "--policy", str(policy), "--reward", str(reward), "--refinement-steps", "0", "Hi"])
    assert code == 2
    err = capsys.readouterr().err
    assert "refinement_steps" in err and "greater than or equal to 1" in err


def test_demo_prints_greedy_and_ggro_with_both_rewards(tiny_paths, capsys: pytest.CaptureFixture[str]) -> None:
    from ggro.lab.prompts import DEMO_PROMPTS

    policy, reward = tiny_paths
    code = main(["demo", "--policy", str(policy), "--reward", str(reward), "--max-new-tokens", "12"])
    out = capsys.readouterr().out
    assert code == 0
    for kind, prompt in DEMO_PROMPTS:
        assert f"> [{kind}] {prompt}" in out
    assert out.count("  greedy (guidance ") == out.count("  GGRO   (guidance ") == len(DEMO_PROMPTS)
    assert "gold n/a" not in out  # the held-out judge scored every response
    assert "| harmful | 3 |" in out and "| benign | 3 |" in out and "| all | 6 |" in out
