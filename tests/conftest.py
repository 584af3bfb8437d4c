"""Shared fixtures: tiny randomly initialised models built in-process (no downloads)."""

from __future__ import annotations

import os
from collections import Counter, defaultdict
from pathlib import Path
from typing import TypeVar

import pytest
import torch
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    LlamaForSequenceClassification,
)

from ggro import HFRewardModel

M = TypeVar("M", bound=torch.nn.Module)

VOCAB = 96
EOS = 2

# The suite runs on the CPU (CI). `GGRO_TEST_DEVICE=cuda` (and optionally `GGRO_TEST_DTYPE=bfloat16`)
# reruns the same tests on a GPU: every tiny model below is placed there (scripts/gpu_check.sh).
TEST_DEVICE = torch.device(os.environ.get("GGRO_TEST_DEVICE", "cpu"))
TEST_DTYPE = getattr(torch, os.environ.get("GGRO_TEST_DTYPE", "float32"))


def fp32_only(why: str) -> pytest.MarkDecorator:
    """Skip in a bf16 run (GGRO_TEST_DTYPE=bfloat16) a test whose claim only holds at float32 precision."""
    return pytest.mark.skipif(TEST_DTYPE is not torch.float32, reason=f"checked in float32 only: {why}")


def place(model: M) -> M:
    """Move a freshly built test model to the device and dtype the run asks for."""
    return model.to(device=TEST_DEVICE, dtype=TEST_DTYPE)


def tiny_llama_config(std: float = 0.3, **extra: object) -> LlamaConfig:
    """The shape every tiny Llama (policy or reward) here shares."""
    return LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
        initializer_range=std,
        pad_token_id=0,
        **extra,
    )


def tiny_llama(seed: int = 0, std: float = 0.3) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = tiny_llama_config(std, eos_token_id=EOS, bos_token_id=1, tie_word_embeddings=False)
    return place(LlamaForCausalLM(cfg).eval())


def tiny_gpt2(seed: int = 0, std: float = 0.3) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    cfg = GPT2Config(
        vocab_size=VOCAB,
        n_embd=32,
        n_layer=2,
        n_head=4,
        n_positions=512,
        initializer_range=std,
        eos_token_id=EOS,
        bos_token_id=1,
        pad_token_id=0,
    )
    return place(GPT2LMHeadModel(cfg).eval())


def tiny_reward(seed: int = 1, std: float = 0.3) -> HFRewardModel:
    torch.manual_seed(seed)
    model = LlamaForSequenceClassification(tiny_llama_config(std, num_labels=1)).eval()
    return HFRewardModel(place(model), name="tiny-rm")


class TinyTokenizer:
    """Just enough tokenizer for the decoder: ids <-> space-separated symbols, no chat template."""

    eos_token_id = EOS
    pad_token_id = 0
    bos_token_id = 1
    chat_template = None

    def __len__(self) -> int:
        return VOCAB

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        return "".join(f"<{i}>" if i < 3 and not skip_special_tokens else ("" if i < 3 else f" t{i}") for i in ids)

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        ids = [int(tok[1:]) for tok in text.split()]
        return {"input_ids": ids}


@pytest.fixture
def tiny_tokenizer() -> TinyTokenizer:
    return TinyTokenizer()


def fixtures_dir() -> Path:
    env = os.environ.get("GGRO_REFERENCE_FIXTURES")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "reference"


# Inputs tried by the property-based tests (test_properties.py), per kind and outcome; reported at the end.
PROPERTY_COUNTS: defaultdict[str, Counter[str]] = defaultdict(Counter)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not PROPERTY_COUNTS:
        return
    parts = []
    for kind, counts in PROPERTY_COUNTS.items():
        outcomes = ", ".join(f"{n} {outcome}" for outcome, n in sorted(counts.items()) if outcome != "tried")
        parts.append(f"{kind}={counts['tried']} ({outcomes})")
    terminalreporter.write_line("property inputs tried: " + "; ".join(parts))
