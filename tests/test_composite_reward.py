"""The weighted-sum reward: values, reported terms, split gradients, non-differentiable terms, bad input."""

from __future__ import annotations

import math
from typing import Any, cast

import pytest
import torch
from transformers import LlamaConfig, LlamaModel

from conftest import VOCAB, TinyTokenizer, place, tiny_llama, tiny_reward
from ggro import CallableReward, GGROConfig, GGRODecoder, RewardError
from ggro.rewards import MeanPooledHeadReward
from ggro.rewards.base import RewardContext
from ggro.rewards.composite import CompositeReward
from ggro.rewards.judge import LMJudgeReward

PROMPT = [5, 17, 33, 9]
TOK = TinyTokenizer()
CONTEXT = RewardContext(tuple(PROMPT), TOK.decode(PROMPT, skip_special_tokens=True), TOK)
WEIGHTS = {"rm": 0.7, "judge": -1.5, "wide": 2.0}


def _wide_pooled() -> MeanPooledHeadReward:
    """A term with another hidden size (48), so the split of the concatenated gradient is exercised."""
    torch.manual_seed(7)
    cfg = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=48,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        initializer_range=0.3,
    )
    return MeanPooledHeadReward(place(LlamaModel(cfg).eval()), torch.randn(48), 0.1, name="wide")


def _judge() -> LMJudgeReward:
    template = "t10 t11 {prompt} t12 {response} t13 t14"
    return LMJudgeReward(tiny_llama(seed=4), TOK, template=template, answers=("t7", "t8"), name="judge")


def _composite() -> CompositeReward:
    return CompositeReward([("rm", 0.7, tiny_reward()), ("judge", -1.5, _judge()), ("wide", 2.0, _wide_pooled())])


def _count_40(prompts: list[str], responses: list[str]) -> list[float]:
    return [float(r.count(" t40")) for r in responses]


def test_value_is_the_weighted_sum_and_terms_are_reported() -> None:
    composite = _composite()
    assert composite.differentiable
    seqs = [[*PROMPT, 20, 21], [*PROMPT, 30, 31, 32]]
    per_term = {n: r.score(seqs) for n, r in zip(composite.names, composite.rewards, strict=True)}
    expected = [sum(WEIGHTS[n] * per_term[n][i] for n in WEIGHTS) for i in range(2)]
    assert composite.score(seqs) == pytest.approx(expected, abs=1e-5)

    session = composite.open_session(CONTEXT)
    subs = [r.open_session(CONTEXT) for r in composite.rewards]
    prefix, segment = [*PROMPT, 20, 21], [22, 23, 24]
    got = session.score_segment(prefix, segment, 1)
    singles = [s.score_segment(prefix, segment, 1) for s in subs]
    assert got.terms == pytest.approx({n: s.reward for n, s in zip(composite.names, singles, strict=True)}, abs=1e-5)
    assert got.reward == pytest.approx(sum(WEIGHTS[n] * v for n, v in got.terms.items()), abs=1e-5)
    assert session.score_sequence(prefix + segment) == pytest.approx(got.reward, abs=1e-4)
    variants = [[*prefix, v, 23, 24] for v in (22, 40, 41)]
    many = [s.score_many(variants) for s in subs]
    expected_many = [sum(w * m[i] for w, m in zip(composite.weights, many, strict=True)) for i in range(3)]
    assert session.score_many(variants) == pytest.approx(expected_many, abs=1e-4)
    assert session.calls == sum(s.calls for s in cast(Any, session).sessions)


def test_gradient_is_concatenated_and_candidate_scores_are_weighted() -> None:
    composite = _composite()
    session = composite.open_session(CONTEXT)
    subs = [r.open_session(CONTEXT) for r in composite.rewards]
    prefix, segment = [*PROMPT, 20, 21], [22, 23, 24]
    got = session.score_segment(prefix, segment, 0)
    singles = [s.score_segment(prefix, segment, 0) for s in subs]
    assert got.gradient is not None and got.gradient.shape == (32 + 32 + 48,)
    parts = [s.gradient for s in singles if s.gradient is not None]
    assert len(parts) == 3
    torch.testing.assert_close(got.gradient, torch.cat(parts), atol=1e-5, rtol=1e-4)
    tokens = torch.tensor([22, 40, 41, 60])
    expected = sum(
        w * r.candidate_scores(p, tokens).float().cpu()
        for w, r, p in zip(composite.weights, composite.rewards, parts, strict=True)
    )
    torch.testing.assert_close(composite.candidate_scores(got.gradient, tokens), expected, atol=1e-5, rtol=1e-4)

    reward, grads = composite.embedding_gradients(prefix + segment, [len(prefix), len(prefix) + 1])
    assert grads.shape == (2, 112)
    assert reward == pytest.approx(composite.score([prefix + segment])[0], abs=1e-4)
    with pytest.raises(RewardError, match="expected a gradient of 112 values"):
        composite.candidate_scores(got.gradient[:100], tokens)


@pytest.mark.parametrize("refinement", ["sequential", "parallel"])
def test_decoder_runs_with_a_differentiable_composite(refinement: str) -> None:
    composite = _composite()
    cfg = GGROConfig(entropy_threshold=0.5, max_new_tokens=16, refinement=refinement)
    (result,) = GGRODecoder(tiny_llama(), TOK, composite, cfg).generate_ids([PROMPT])
    assert result.segments and any(len(s.candidate_rewards) > 1 for s in result.segments)
    assert result.final_reward is not None and math.isfinite(result.final_reward)
    expected = composite.open_session(CONTEXT).score_sequence(PROMPT + result.token_ids)
    assert result.final_reward == pytest.approx(expected, abs=1e-3)
    # Every candidate's term values reach the segment events, and the weighted sum is the candidate reward.
    for seg in result.segments:
        assert len(seg.candidate_reward_terms) == len(seg.candidate_rewards)
        for terms, reward in zip(seg.candidate_reward_terms, seg.candidate_rewards, strict=True):
            assert set(terms) == set(composite.names)
            weighted = sum(w * terms[n] for n, w in zip(composite.names, composite.weights, strict=True))
            assert reward == pytest.approx(weighted, abs=1e-5)


def test_a_callable_term_makes_proposals_exact() -> None:
    batches: list[int] = []

    def spy(prompts: list[str], responses: list[str]) -> list[float]:
        batches.append(len(responses))
        return _count_40(prompts, responses)

    composite = CompositeReward([("rule", 1.0, CallableReward(spy, name="rule")), ("rm", 0.1, tiny_reward())])
    assert not composite.differentiable
    with pytest.raises(RewardError, match="a term has no gradient \\('rule'\\)"):
        composite.candidate_scores(torch.zeros(32), torch.tensor([1]))
    cfg = GGROConfig(entropy_threshold=0.5, max_new_tokens=24, nudge_top_k=60)
    (result,) = GGRODecoder(tiny_llama(), TOK, composite, cfg).generate(" ".join(f"t{i}" for i in PROMPT))
    # Each proposal scores every top-k variant exactly, in one call per term.
    assert 60 in batches
    assert result.num_nudges > 0
    assert any(n.kept and n.nudge_token_id == 40 for n in result.nudges)
    assert result.final_reward is not None and math.isfinite(result.final_reward)


def test_a_nonfinite_term_makes_the_sum_nonfinite() -> None:
    def nan_rule(prompts: list[str], responses: list[str]) -> list[float]:
        return [math.nan] * len(responses)

    composite = CompositeReward([("rm", 1.0, tiny_reward()), ("nan", 0.0, CallableReward(nan_rule, tokenizer=TOK))])
    assert all(math.isnan(x) for x in composite.score([[*PROMPT, 20]]))
    session = composite.open_session(CONTEXT)
    got = session.score_segment(PROMPT, [20, 21], None)
    assert math.isnan(got.reward) and got.terms is not None and math.isfinite(got.terms["rm"])
    cfg = GGROConfig(entropy_threshold=0.5, max_new_tokens=8)
    (result,) = GGRODecoder(tiny_llama(), TOK, composite, cfg).generate_ids([PROMPT])
    assert result.final_reward is None and all(s.reward_fallback for s in result.segments)
    with pytest.raises(RewardError, match="non-finite reward"):
        GGRODecoder(tiny_llama(), TOK, composite, cfg.model_copy(update={"nonfinite_reward": "raise"})).generate_ids(
            [PROMPT]
        )


def test_a_raising_term_is_named() -> None:
    def down(prompts: list[str], responses: list[str]) -> list[float]:
        raise ConnectionError("scoring API unreachable")

    composite = CompositeReward([("rm", 1.0, tiny_reward()), ("api", 1.0, CallableReward(down, tokenizer=TOK))])
    with pytest.raises(RewardError, match=r"term 'api' failed: .*scoring API unreachable"):
        composite.score([[*PROMPT, 20]])
    with pytest.raises(RewardError, match="term 'api' failed"):
        GGRODecoder(tiny_llama(), TOK, composite, GGROConfig(max_new_tokens=8)).generate_ids([PROMPT])

    wrong = CompositeReward([("short", 1.0, CallableReward(lambda p, r: [1.0], tokenizer=TOK))])
    with pytest.raises(RewardError, match=r"term 'short' failed: .*expected 2 scores, got 1"):
        wrong.score([[20], [21]])


@pytest.mark.parametrize(
    ("terms", "message"),
    [
        ([], "at least one term"),
        ([("a", 1.0, "rm")], r"terms\[0\]\.reward \('a'\): expected a RewardModel"),
        ([("a", 1.0)], r"terms\[0\]: expected \(name, weight, reward\)"),
        ([("", 1.0, None)], r"terms\[0\]\.name: expected a non-empty string"),
        ([("a", 1.0, None), ("a", 2.0, None)], r"terms\[1\]\.name: 'a' is used twice"),
        ([("a", math.nan, None)], r"terms\[0\]\.weight \('a'\): expected a finite number, got nan"),
        ([("a", math.inf, None)], r"terms\[0\]\.weight \('a'\): expected a finite number, got inf"),
        ([("a", "1", None)], r"terms\[0\]\.weight \('a'\): expected a finite number"),
        ([("a", True, None)], r"terms\[0\]\.weight \('a'\): expected a finite number"),
    ],
)
def test_bad_terms_are_rejected(terms: list[tuple[object, ...]], message: str) -> None:
    rm = tiny_reward()
    filled = [tuple(rm if x is None else x for x in t) for t in terms]
    with pytest.raises(ValueError, match=message):
        CompositeReward(cast(Any, filled))


def test_a_term_that_cannot_read_the_policy_vocabulary_is_named() -> None:
    composite = CompositeReward([("rm", 1.0, tiny_reward()), ("judge", 1.0, _judge())])
    composite.check_vocabulary(VOCAB)
    with pytest.raises(ValueError, match=r"term 'rm': .*embedding has 96 rows"):
        composite.check_vocabulary(VOCAB + 4)
