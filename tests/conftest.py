"""Shared fixtures: tiny randomly initialised models built in-process (no downloads)."""

from __future__ import annotations

import copy
import os
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from types import MethodType
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


REQUIRE_FIXTURES_ENV = "GGRO_REQUIRE_REFERENCE_FIXTURES"
"""Set to 1 (CI does, in .ci/run) to make a missing reference-fixture directory fail the tests that need it
instead of skipping them."""


def required_fixtures_dir() -> Path:
    """The reference fixtures' directory (``fixtures_dir()``) for a test that needs them. When it holds no
    ``case_*.json``, the test is skipped, or fails under GGRO_REQUIRE_REFERENCE_FIXTURES=1."""
    directory = fixtures_dir()
    if not any(directory.glob("case_*.json")):
        message = f"reference fixtures not found at {directory} (set GGRO_REFERENCE_FIXTURES)"
        if os.environ.get(REQUIRE_FIXTURES_ENV, "").strip() not in ("", "0"):
            pytest.fail(f"{message}; {REQUIRE_FIXTURES_ENV} is set, so they are required", pytrace=False)
        pytest.skip(message)
    return directory


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


# ---------------------------------------------------------------------------------------------- float64 references
def _rms_norm_float64(self: torch.nn.Module, hidden_states: torch.Tensor) -> torch.Tensor:
    variance = hidden_states.pow(2).mean(-1, keepdim=True)
    return self.weight * (hidden_states * torch.rsqrt(variance + self.variance_epsilon))


def float64_copy(model: M) -> M:
    """A float64 copy of a test model, for numerical references (finite differences, exact gradients).

    ``.double()`` alone is not enough: transformers computes RMSNorm in float32 whatever the model's dtype, and
    that one float32 step puts ~1e-7 relative noise into every output (~1e-4 into a central difference at
    eps=1e-3: the noise this copy exists to remove). Its RMSNorm layers are recomputed in float64 here. (The
    rotary cos/sin tables are still made in float32, but they depend on positions only: a fixed, smooth part
    of the function, not noise.)
    """
    double = copy.deepcopy(model).to(torch.float64)
    for module in double.modules():
        if type(module).__name__.endswith("RMSNorm") and hasattr(module, "variance_epsilon"):
            module.forward = MethodType(_rms_norm_float64, module)  # type: ignore[method-assign]
    return double


def central_difference(f: Callable[[float], float], eps: float = 1e-3) -> tuple[float, float]:
    """(f'(0), a bound on its error) for ``f``, a float64 function of a step size.

    D(h) = (f(h) - f(-h)) / 2h = f'(0) + c h^2 + O(h^4), so the Richardson extrapolation D(h/2) + (D(h/2) - D(h)) / 3
    removes the h^2 term. Its remaining error is bounded by |D(h) - D(h/2)| (three times the h^2 error of D(h/2),
    itself far above the h^4 one while h^2 c dominates) plus the rounding of the differences: 1e-12 relative on
    each f value (10^4 float64 units, far above what a few layers accumulate) divided by h/2.
    """
    values = {h: (f(h), f(-h)) for h in (eps, eps / 2)}
    d_full, d_half = ((up - down) / (2 * h) for h, (up, down) in values.items())
    rounding = 1e-12 * max(abs(v) for pair in values.values() for v in pair) / (eps / 2)
    return d_half + (d_half - d_full) / 3, abs(d_full - d_half) + rounding


FLOAT32_GRADIENT_RTOL = 1e-4
"""Relative error allowed on a float32 first-order prediction ``(E[v] - E[w]) · g`` made from a float32 gradient
``g``, as a fraction of the Cauchy-Schwarz scale ``|g| (|E[v]| + |E[w]|)``: a length-n float32 dot product is off
by at most n u |a||b| (n <= 64 here, u = 6e-8: 4e-6), a two-layer forward and backward by a few such steps
(about 1e-6 relative is what the suite's gradients show against float64); 1e-4 leaves a wide margin for any
CPU's or GPU's kernels, while a wrong gradient (another position, a sum for a mean, a missing term) is off by
O(1) of that scale."""
