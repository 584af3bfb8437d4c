"""Plain callables as rewards: exact, gradient-free nudge proposals and clear errors for bad scorers."""

from __future__ import annotations

import math

import pytest

from conftest import TinyTokenizer, tiny_llama
from ggro import CallableReward, GGROConfig, GGRODecoder, RewardError

PROMPT = "t5 t17 t33 t9"
GOOD = " t40"  # TinyTokenizer renders id 40 as " t40"


def _decoder(fn, **cfg) -> GGRODecoder:
    settings = {"entropy_threshold": 0.5, "max_new_tokens": 24, "nudge_top_k": 60, **cfg}
    return GGRODecoder(tiny_llama(), TinyTokenizer(), CallableReward(fn, name="rule"), GGROConfig(**settings))


def count_good(prompts: list[str], responses: list[str]) -> list[float]:
    return [float(r.count(GOOD)) for r in responses]


def test_exact_proposals_steer_towards_the_rule() -> None:
    greedy = _decoder(count_good, refinement_steps=1).generate(PROMPT)[0]
    steered = _decoder(count_good).generate(PROMPT)[0]
    assert steered.num_nudges > 0
    kept = [n for n in steered.nudges if n.kept]
    assert kept and all(n.nudge_token_id == 40 for n in kept)
    assert steered.text.count(GOOD) > greedy.text.count(GOOD), (greedy.text, steered.text)
    assert steered.final_reward == float(steered.text.count(GOOD))


def test_scorer_sees_the_prompt_text_and_scores_variants_in_one_call() -> None:
    calls: list[tuple[list[str], list[str]]] = []

    def spy(prompts: list[str], responses: list[str]) -> list[float]:
        calls.append((prompts, responses))
        return count_good(prompts, responses)

    dec = _decoder(spy, refinement_steps=2, max_new_tokens=8)
    (result,) = dec.generate(PROMPT)
    assert all(set(p) == {PROMPT} for p, _ in calls)
    # Per segment with a proposal: one call for the draft, one batched call for all top-k variants.
    assert any(len(r) == 60 for _, r in calls)
    assert result.usage.reward_calls == len(calls)


def test_raising_scorer_gives_clear_error_and_next_call_works() -> None:
    state = {"fail": True}

    def flaky(prompts: list[str], responses: list[str]) -> list[float]:
        if state["fail"]:
            raise ConnectionError("scoring API unreachable")
        return count_good(prompts, responses)

    dec = _decoder(flaky)
    with pytest.raises(RewardError, match="reward 'rule' failed: scoring API unreachable"):
        dec.generate(PROMPT)
    state["fail"] = False
    assert dec.generate(PROMPT)[0].segments


@pytest.mark.parametrize(
    ("fn", "message"),
    [
        (lambda p, r: [1.0] * (len(r) + 1), r"expected \d+ scores, got \d+"),
        (lambda p, r: None, "expected a sequence of"),
        (lambda p, r: ["high"] * len(r), "expected a sequence of"),
    ],
)
def test_bad_scorer_output_is_a_clear_error(fn, message: str) -> None:
    with pytest.raises(RewardError, match=message):
        _decoder(fn).generate(PROMPT)


def test_nan_scores_never_win() -> None:
    def nan_for_good(prompts: list[str], responses: list[str]) -> list[float]:
        return [math.nan if GOOD in r else 1.0 for r in responses]

    (result,) = _decoder(nan_for_good).generate(PROMPT)
    assert all(not n.kept or n.nudge_token_id != 40 for n in result.nudges)
    for seg in result.segments:
        kept_reward = seg.candidate_rewards[seg.kept_refinement]
        assert kept_reward is None or math.isfinite(kept_reward)


def test_standalone_score_needs_a_tokenizer() -> None:
    with pytest.raises(RewardError, match="needs a tokenizer"):
        CallableReward(count_good).score([[40, 41]])
    assert CallableReward(count_good, tokenizer=TinyTokenizer()).score([[40, 41, 40], [5]]) == [2.0, 0.0]


def test_not_callable_is_rejected() -> None:
    with pytest.raises(TypeError, match="fn must be callable"):
        CallableReward("not a function")  # type: ignore[arg-type]
