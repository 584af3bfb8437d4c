"""Tests of the naive (release-structured) GGRO decoder in ``ggro.lab.baseline``.

Fast tests use tiny, seeded, randomly initialised models built in-process.  One test marked
``slow`` compares against the reference fixture ``case_02`` produced by the authors' code; it
needs the converted SmolLM2 checkpoint in ``~/.cache/ggro/smollm2-135m-instruct`` and is skipped
when that is absent.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
import torch
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    LlamaForSequenceClassification,
)

from conftest import TEST_DEVICE, float64_copy, place, required_fixtures_dir
from ggro.lab.baseline import (
    NaiveResult,
    entropy_of_logits,
    naive_ggro_generate,
)

VOCAB = 128
EOS = 2
PROMPT = [5, 17, 33, 9, 60, 41]
# Entropies of the tiny policies' next-token distributions lie roughly in [3.0, 4.2] nats (vocab 128,
# max 4.85); this threshold makes segments of varying length.
THRESHOLD = 3.6


def _llama_config(**kwargs: Any) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        intermediate_size=64,
        max_position_embeddings=256,
        initializer_range=0.3,
        bos_token_id=1,
        eos_token_id=EOS,
        **kwargs,
    )


def _llama_policy(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    return place(LlamaForCausalLM(_llama_config(pad_token_id=0)).eval())


def _gpt2_policy(seed: int = 0) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=VOCAB,
        n_embd=32,
        n_layer=2,
        n_head=2,
        n_positions=256,
        initializer_range=0.3,
        bos_token_id=1,
        eos_token_id=EOS,
        pad_token_id=0,
    )
    return place(GPT2LMHeadModel(config).eval())


def _reward_model(seed: int = 1) -> LlamaForSequenceClassification:
    torch.manual_seed(seed)
    return place(LlamaForSequenceClassification(_llama_config(num_labels=1, pad_token_id=0)).eval())


# The fixtures are float64 copies: most tests here compare the oracle's tokens, rewards and nudges with an
# independent recomputation (HF generate, full passes, a one-hot gradient), which runs differently shaped passes;
# in float32 their rounding differs by kernel, so a near-tie could fall either way on another CPU (in float64 they
# agree to ~1e-15, far inside any margin the tests meet).
@pytest.fixture(scope="module")
def llama_policy() -> LlamaForCausalLM:
    return float64_copy(_llama_policy())


@pytest.fixture(scope="module")
def gpt2_policy() -> GPT2LMHeadModel:
    return float64_copy(_gpt2_policy())


@pytest.fixture(scope="module")
def reward_model() -> LlamaForSequenceClassification:
    return float64_copy(_reward_model())


def _run(policy: Any, rm: Any, **kwargs: Any) -> NaiveResult:
    params: dict[str, Any] = {
        "max_new_tokens": 40,
        "entropy_threshold": THRESHOLD,
        "refinement_steps": 4,
        "eos_token_id": EOS,
    }
    params.update(kwargs)
    return naive_ggro_generate(policy, rm, None, PROMPT, **params)


def _signature(result: NaiveResult) -> list[Any]:
    return [
        (s.start, s.insertion_offset, s.kept, s.stopped_on_repeat, [c.token_ids for c in s.candidates])
        for s in result.segments
    ]


def _greedy(policy: Any, prompt: list[int], max_new_tokens: int, eos: int) -> list[int]:
    """Plain greedy decoding without a cache (full forward per token)."""
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(max_new_tokens):
            logits = policy(input_ids=torch.tensor([ids], device=TEST_DEVICE)).logits[0, -1]
            token = int(torch.argmax(logits))
            ids.append(token)
            if token == eos:
                break
    return ids[len(prompt) :]


def _check_structure(result: NaiveResult, prompt: list[int], max_new_tokens: int) -> None:
    """Invariants that hold without re-tokenisation."""
    pos = len(prompt)
    response: list[int] = []
    for k, seg in enumerate(result.segments):
        assert seg.start == pos
        assert seg.insertion_offset == (4 if k == 0 else 0)
        assert seg.candidates
        assert 0 <= seg.kept < len(seg.candidates)
        rewards = [c.reward for c in seg.candidates]
        assert seg.kept == max(range(len(rewards)), key=lambda i: (rewards[i], -i))  # first strict max
        assert seg.candidates[0].nudge_token is None
        for cand in seg.candidates:
            assert pos + len(cand.token_ids) <= len(prompt) + max_new_tokens
            assert cand.finished == (bool(cand.token_ids) and cand.token_ids[-1] == EOS)
            if cand.nudge_token is not None:
                assert cand.token_ids[seg.insertion_offset] == cand.nudge_token
        ids = [tuple(c.token_ids) for c in seg.candidates]
        assert len(set(ids)) == len(ids)
        kept = seg.candidates[seg.kept].token_ids
        response += kept
        pos += len(kept)
    assert result.response_ids == response
    assert len(result.response_ids) <= max_new_tokens


# --------------------------------------------------------------------------------------------------
# Fast tests on tiny models.
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("policy_name", ["llama", "gpt2"])
def test_nudges_and_segments_occur(policy_name: str, request: pytest.FixtureRequest, reward_model: Any) -> None:
    policy = request.getfixturevalue(f"{policy_name}_policy")
    result = _run(policy, reward_model)
    _check_structure(result, PROMPT, 40)
    assert len(result.segments) > 1
    assert any(seg.kept > 0 for seg in result.segments), "no nudge was ever kept"
    assert any(c.nudge_token is not None for seg in result.segments for c in seg.candidates)
    assert len(result.response_ids) == 40 or result.finished
    assert result.policy_forward_passes > 0
    assert result.reward_calls > 0


@pytest.mark.parametrize("policy_name", ["llama", "gpt2"])
def test_release_overheads_do_not_change_the_output(
    policy_name: str, request: pytest.FixtureRequest, reward_model: Any
) -> None:
    policy = request.getfixturevalue(f"{policy_name}_policy")
    mimic = _run(policy, reward_model, mimic_release_overheads=True)
    plain = _run(policy, reward_model, mimic_release_overheads=False)
    assert mimic.response_ids == plain.response_ids
    assert _signature(mimic) == _signature(plain)
    for seg_a, seg_b in zip(mimic.segments, plain.segments, strict=True):
        for a, b in zip(seg_a.candidates, seg_b.candidates, strict=True):
            assert a.reward == pytest.approx(b.reward, abs=1e-5)
            assert a.nudge_token == b.nudge_token
    assert mimic.policy_forward_passes == plain.policy_forward_passes
    # The release runs a second (discarded) soft-token RM pass per candidate.
    candidates = sum(len(s.candidates) for s in mimic.segments)
    assert mimic.reward_calls == 2 * candidates
    assert plain.reward_calls == candidates


def test_deterministic(llama_policy: Any, reward_model: Any) -> None:
    first = _run(llama_policy, reward_model)
    second = _run(llama_policy, reward_model)
    assert first == second


@pytest.mark.parametrize("max_new_tokens", [0, 1, 3, 5, 9, 17, 40])
def test_budget_respected(max_new_tokens: int, llama_policy: Any, reward_model: Any) -> None:
    result = _run(llama_policy, reward_model, max_new_tokens=max_new_tokens, refinement_steps=3)
    assert len(result.response_ids) <= max_new_tokens
    _check_structure(result, PROMPT, max_new_tokens)
    if not result.finished:
        assert len(result.response_ids) == max_new_tokens


@pytest.mark.parametrize("policy_name", ["llama", "gpt2"])
def test_one_refinement_step_is_greedy_decoding(
    policy_name: str, request: pytest.FixtureRequest, reward_model: Any
) -> None:
    policy = request.getfixturevalue(f"{policy_name}_policy")
    result = _run(policy, reward_model, refinement_steps=1, max_new_tokens=40)
    assert len(result.segments) > 1
    generated = policy.generate(
        torch.tensor([PROMPT], device=TEST_DEVICE),
        attention_mask=torch.ones(1, len(PROMPT), dtype=torch.long, device=TEST_DEVICE),
        do_sample=False,
        max_new_tokens=40,
        eos_token_id=EOS,
        pad_token_id=0,
    )[0, len(PROMPT) :].tolist()
    assert result.response_ids == generated
    assert result.response_ids == _greedy(policy, PROMPT, 40, EOS)
    assert all(seg.kept == 0 and len(seg.candidates) == 1 for seg in result.segments)


def test_greedy_draft_ends_at_high_entropy_point(llama_policy: Any, reward_model: Any) -> None:
    """Segment boundaries follow the entropy rule on the policy's raw distributions."""
    result = _run(llama_policy, reward_model, refinement_steps=1, max_new_tokens=40)
    ids = list(PROMPT)
    with torch.no_grad():
        for seg in result.segments[:-1]:
            tokens = seg.candidates[0].token_ids
            for i in range(len(tokens) + 1):
                logits = llama_policy(input_ids=torch.tensor([ids + tokens[:i]], device=TEST_DEVICE)).logits[0, -1]
                high = entropy_of_logits(logits) >= THRESHOLD
                if i < len(tokens):
                    assert int(torch.argmax(logits)) == tokens[i]
                    assert not (high and i + 1 >= 4)
                else:
                    assert high and i + 1 >= 4
            ids += tokens


def test_reward_is_score_head_at_last_position(llama_policy: Any, reward_model: Any) -> None:
    result = _run(llama_policy, reward_model, max_new_tokens=20)
    context = list(PROMPT)
    with torch.no_grad():
        for seg in result.segments:
            for cand in seg.candidates:
                ids = torch.tensor([context + cand.token_ids], device=TEST_DEVICE)
                hidden = reward_model.model(input_ids=ids).last_hidden_state
                expected = float(reward_model.score(hidden)[0, -1, 0])
                assert cand.reward == pytest.approx(expected, abs=1e-5)
            context += seg.candidates[seg.kept].token_ids


def test_nudge_is_reward_gradient_argmax_over_policy_top_k(llama_policy: Any, reward_model: Any) -> None:
    """Recompute each nudge independently (gradient w.r.t. a full one-hot input)."""
    result = _run(llama_policy, reward_model, mimic_release_overheads=False)
    emb = reward_model.get_input_embeddings().weight.detach()
    context = list(PROMPT)
    checked = 0
    for seg in result.segments:
        pos = seg.start + seg.insertion_offset
        for prev, cand in zip(seg.candidates, seg.candidates[1:], strict=False):
            if cand.nudge_token is None:
                continue
            ids = context + prev.token_ids
            with torch.no_grad():
                logits = llama_policy(input_ids=torch.tensor([ids[:pos]], device=TEST_DEVICE)).logits[0, -1]
            top = torch.topk(logits, 25).indices
            onehot = torch.nn.functional.one_hot(torch.tensor(ids, device=TEST_DEVICE), VOCAB).to(emb.dtype)
            onehot.requires_grad_(True)
            out = reward_model(inputs_embeds=(onehot @ emb).unsqueeze(0))
            (grad,) = torch.autograd.grad(out.logits[0, 0], [onehot])
            scores = grad[pos, top].clone()
            scores[top == ids[pos]] *= 1e-10
            assert cand.nudge_token == int(top[int(torch.argmax(scores))])
            checked += 1
        context += seg.candidates[seg.kept].token_ids
    assert checked > 0


class _NaNEveryOtherCall(torch.nn.Module):
    """Reward model wrapper that returns NaN on every other forward call."""

    def __init__(self, inner: LlamaForSequenceClassification) -> None:
        super().__init__()
        self.inner = inner
        self.calls = 0

    def get_input_embeddings(self) -> torch.nn.Module:
        return self.inner.get_input_embeddings()

    def forward(self, **kwargs: Any) -> Any:
        out = self.inner(**kwargs)
        self.calls += 1
        if self.calls % 2 == 0:
            out.logits = out.logits * float("nan")
        return out


def test_nan_reward_never_wins(llama_policy: Any, reward_model: Any) -> None:
    wrapped = _NaNEveryOtherCall(reward_model)
    result = _run(llama_policy, wrapped, mimic_release_overheads=False, refinement_steps=6)
    poisoned = [c for s in result.segments for c in s.candidates if c.reward == -math.inf]
    assert poisoned
    assert all(not math.isnan(c.reward) for s in result.segments for c in s.candidates)
    overridden = 0
    context = list(PROMPT)
    for seg in result.segments:
        rewards = [c.reward for c in seg.candidates]
        if any(math.isfinite(r) for r in rewards):
            assert math.isfinite(rewards[seg.kept])
            assert rewards[seg.kept] == max(r for r in rewards if math.isfinite(r))
        else:
            assert seg.kept == 0
        # Would a poisoned candidate have won on its true reward?
        with torch.no_grad():
            true = [
                float(reward_model(input_ids=torch.tensor([context + c.token_ids], device=TEST_DEVICE)).logits[0, 0])
                for c in seg.candidates
            ]
        best_true = max(range(len(true)), key=lambda i: (true[i], -i))
        if rewards[best_true] == -math.inf:
            overridden += 1
        context += seg.candidates[seg.kept].token_ids
    assert overridden > 0, "the test never exercised a NaN on the best candidate"


def test_all_rewards_nan_keeps_the_draft(llama_policy: Any, reward_model: Any) -> None:
    class AlwaysNaN(_NaNEveryOtherCall):
        def forward(self, **kwargs: Any) -> Any:
            out = self.inner(**kwargs)
            out.logits = out.logits * float("nan")
            return out

    result = _run(llama_policy, AlwaysNaN(reward_model), mimic_release_overheads=False)
    greedy = _run(llama_policy, reward_model, refinement_steps=1)
    assert result.response_ids == greedy.response_ids
    assert all(seg.kept == 0 for seg in result.segments)
    assert all(c.reward == -math.inf for s in result.segments for c in s.candidates)


def test_bfloat16_runs() -> None:
    policy: Any = _llama_policy()
    rm: Any = _reward_model()
    policy, rm = policy.to(torch.bfloat16), rm.to(torch.bfloat16)
    for mimic in (True, False):
        result = _run(policy, rm, max_new_tokens=16, refinement_steps=3, mimic_release_overheads=mimic)
        assert 0 < len(result.response_ids) <= 16
        assert all(isinstance(c.reward, float) for s in result.segments for c in s.candidates)


class _CharTokenizer:
    """Minimal tokenizer: token i <-> one character; a few ids are two-character merges."""

    eos_token_id = EOS

    def __init__(self, merges: dict[int, tuple[int, int]]) -> None:
        self.pieces = {i: chr(0x100 + i) for i in range(VOCAB)}
        for merged, (a, b) in merges.items():
            self.pieces[merged] = self.pieces[a] + self.pieces[b]
        self.lookup = {piece: i for i, piece in self.pieces.items()}

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        return "".join(self.pieces[i] for i in ids)

    def __call__(self, text: str, add_special_tokens: bool = False) -> Any:
        ids: list[int] = []
        i = 0
        while i < len(text):
            if text[i : i + 2] in self.lookup:
                ids.append(self.lookup[text[i : i + 2]])
                i += 2
            else:
                ids.append(self.lookup[text[i]])
                i += 1

        class Encoding:
            input_ids = ids

        return Encoding()


def test_retokenize_identity_round_trip_changes_nothing(llama_policy: Any, reward_model: Any) -> None:
    tok: Any = _CharTokenizer({})
    via_text = naive_ggro_generate(
        llama_policy,
        reward_model,
        tok,
        PROMPT,
        max_new_tokens=40,
        entropy_threshold=THRESHOLD,
        refinement_steps=4,
        retokenize_between_segments=True,
    )  # eos defaults to the tokenizer's
    assert via_text == _run(llama_policy, reward_model)


def test_tokenizer_requirements(llama_policy: Any, reward_model: Any) -> None:
    with pytest.raises(ValueError, match="tokenizer"):
        _run(llama_policy, reward_model, retokenize_between_segments=True)
    # No tokenizer and no eos: generation only stops at the budget.
    result = _run(llama_policy, reward_model, eos_token_id=None, max_new_tokens=12)
    assert len(result.response_ids) == 12
    assert not result.finished


def test_retokenize_merges_tokens_between_segments(llama_policy: Any, reward_model: Any) -> None:
    base = _run(llama_policy, reward_model)
    first = base.segments[0].candidates[base.segments[0].kept].token_ids
    assert len(first) >= 2
    # Make the last two tokens of the first kept segment merge into one token when re-tokenised.
    merged_id = next(i for i in range(3, VOCAB) if i not in set(PROMPT) | set(base.response_ids))
    tok: Any = _CharTokenizer({merged_id: (first[-2], first[-1])})
    result = naive_ggro_generate(
        llama_policy,
        reward_model,
        tok,
        PROMPT,
        max_new_tokens=40,
        entropy_threshold=THRESHOLD,
        refinement_steps=4,
        retokenize_between_segments=True,
        eos_token_id=EOS,
    )
    assert result.segments[0] == base.segments[0]
    assert result.segments[1].start == base.segments[1].start - 1
    assert result.response_ids[: len(first) - 1] == [*first[:-2], merged_id]
    assert len(result.response_ids) <= 40


# --------------------------------------------------------------------------------------------------
# Reference fixture (authors' code, SmolLM2-135M-Instruct).
# --------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_reference_fixture_case_02() -> None:
    directory = required_fixtures_dir()  # skips without the fixtures, fails under GGRO_REQUIRE_REFERENCE_FIXTURES=1
    case_path = directory / "case_02.json"
    head_path = directory / "rm_head.safetensors"
    assert case_path.is_file() and head_path.is_file(), f"incomplete reference fixtures at {directory}"
    from ggro.assets import default_policy_path

    model_dir = default_policy_path()  # fetched and converted once, like every real-model test
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    case = json.loads(case_path.read_text(encoding="utf-8"))
    config = case["config"]
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    policy = AutoModelForCausalLM.from_pretrained(
        str(model_dir), dtype=torch.float32, attn_implementation="eager"
    ).eval()
    rm = AutoModelForSequenceClassification.from_pretrained(
        str(model_dir), num_labels=1, pad_token_id=2, dtype=torch.float32
    ).eval()
    head = load_file(str(head_path))["score.weight"]
    with torch.no_grad():
        rm.score.weight.copy_(head.to(rm.score.weight.dtype))

    result = naive_ggro_generate(
        policy,
        rm,
        tokenizer,
        case["prompt"]["prompt_token_ids"],
        max_new_tokens=config["max_new_tokens"],
        entropy_threshold=config["entropy_threshold"],
        refinement_steps=config["num_refinement_steps"],
        nudge_top_k=config["nudge_top_k"],
        first_insertion_offset=4,
        retokenize_between_segments=True,
        eos_token_id=2,
    )

    expected_segments = case["segments"]
    assert len(result.segments) == len(expected_segments)
    for k, (seg, exp) in enumerate(zip(result.segments, expected_segments, strict=True)):
        assert seg.start == exp["prompt_length"], f"segment {k}"
        assert seg.insertion_offset == exp["insertion_offset"], f"segment {k}"
        got_ids = [c.token_ids for c in seg.candidates]
        exp_ids = [r["candidate_token_ids"] for r in exp["refinements"] if r["repeat_of"] is None]
        assert got_ids == exp_ids, f"segment {k}: candidate token ids differ"
        assert seg.kept == exp["kept_refinement"], f"segment {k}"
        assert seg.stopped_on_repeat == exp["stopped_early_on_repeat"], f"segment {k}"
        for r, (cand, ref) in enumerate(zip(seg.candidates, exp["refinements"], strict=False)):
            assert cand.reward == pytest.approx(ref["reward"], abs=1e-3), f"segment {k} refinement {r}"
            assert cand.finished == ref["finished"], f"segment {k} refinement {r}"
            expected_nudge = ref["token_at_insertion"] if ref["nudge_applied"] else None
            assert cand.nudge_token == expected_nudge, f"segment {k} refinement {r}"
    assert result.response_ids == case["output"]["response_token_ids"]
    assert result.finished == case["output"]["finished"]
