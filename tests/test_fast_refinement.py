"""Rewards read from the policy's own states, parallel refinement and early exit (the speed options).

The fused reward must change no output; a parallel candidate must be exactly the greedy continuation of its
nudge token (its branch row carries the right cache); early exit at 0 must be the paper's rule. Comparisons of
differently shaped passes run on float64 copies of the models, so they hold on any CPU's kernels.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from conftest import EOS, TinyTokenizer, float64_copy, tiny_llama
from ggro import CallableReward, CompositeReward, Constraint, GGROConfig, GGRODecoder, GGROResult
from ggro.nudging import NudgeProposal
from ggro.rewards import MeanPooledHeadReward
from ggro.testing import tiny_decoder

MARKER = [3, 4]
PROMPTS = [[10, 11, 12, 3, 4], [20, 21, 3, 4], [30, 31, 32, 33, 3, 4], [40, 3, 4]]
SETTINGS = {"entropy_threshold": 0.5, "max_new_tokens": 24, "refinement_steps": 4, "nudge_top_k": 12}


def _decoder(**options: object) -> GGRODecoder:
    """A float64 tiny policy with a mean-pooled head on its own transformer (the embedded rewards' shape)."""
    policy = float64_copy(tiny_llama(seed=0))
    torch.manual_seed(3)
    reward = MeanPooledHeadReward(
        policy.get_decoder(), torch.randn(32), 0.25, response_marker=MARKER, excluded_ids=[EOS], name="tiny-head"
    )
    return GGRODecoder(policy, TinyTokenizer(), reward, GGROConfig(**{**SETTINGS, **options}))  # type: ignore[arg-type]


def _composite_decoder(**options: object) -> GGRODecoder:
    """Two heads on the policy's own transformer as one weighted sum (the shape of ``qwen-guidance``)."""
    base = _decoder(**options)
    torch.manual_seed(4)
    second = MeanPooledHeadReward(
        base.policy.get_decoder(), torch.randn(32), -0.5, response_marker=MARKER, excluded_ids=[EOS], name="help"
    )
    reward = CompositeReward([("harm", 1.0, base.reward), ("help", 2.0, second)], name="two heads")
    return GGRODecoder(base.policy, base.tokenizer, reward, base.config)


def _tokens(results: list[GGROResult]) -> list[list[int]]:
    return [r.token_ids for r in results]


def test_the_head_on_the_policys_transformer_is_fused_and_another_is_not() -> None:
    decoder = _decoder()
    assert decoder.reward.reads_policy_states(decoder.policy)
    other = float64_copy(tiny_llama(seed=5))
    assert not decoder.reward.reads_policy_states(other)
    assert not tiny_decoder().reward.reads_policy_states(tiny_decoder().policy)  # an HF RM: its own forward


@pytest.mark.parametrize("refinement", ["sequential", "parallel"])
def test_a_fused_reward_changes_no_output_and_saves_reward_passes(refinement: str) -> None:
    fused = _decoder(refinement=refinement).generate_ids(PROMPTS)
    unfused = _decoder(refinement=refinement, fused_reward=False).generate_ids(PROMPTS)
    assert _tokens(fused) == _tokens(unfused)
    for a, b in zip(fused, unfused, strict=True):
        assert a.final_reward == pytest.approx(b.final_reward, abs=1e-5)
        for sa, sb in zip(a.segments, b.segments, strict=True):
            assert sa.candidate_rewards == pytest.approx(sb.candidate_rewards, abs=1e-5)
    assert sum(r.num_nudges for r in fused) > 0  # the comparison covers kept nudges
    assert sum(r.usage.reward_calls for r in fused) < sum(r.usage.reward_calls for r in unfused)


@pytest.mark.parametrize("refinement", ["sequential", "parallel"])
def test_a_composite_of_heads_on_the_policy_is_fused_and_keeps_its_terms(refinement: str) -> None:
    decoder = _composite_decoder(refinement=refinement)
    assert decoder.reward.reads_policy_states(decoder.policy)
    mixed = CompositeReward([("harm", 1.0, decoder.reward.rewards[0]), ("other", 1.0, tiny_decoder().reward)])
    assert not mixed.reads_policy_states(decoder.policy)  # one term with its own forward: not fused
    fused = decoder.generate_ids(PROMPTS)
    unfused = _composite_decoder(refinement=refinement, fused_reward=False).generate_ids(PROMPTS)
    assert _tokens(fused) == _tokens(unfused)
    assert sum(r.num_nudges for r in fused) > 0
    assert sum(r.usage.reward_calls for r in fused) < sum(r.usage.reward_calls for r in unfused)
    for a, b in zip(fused, unfused, strict=True):
        for sa, sb in zip(a.segments, b.segments, strict=True):
            assert sa.candidate_rewards == pytest.approx(sb.candidate_rewards, abs=1e-5)
            assert len(sa.candidate_reward_terms) == len(sb.candidate_reward_terms) == len(sa.candidate_rewards)
            for ta, tb in zip(sa.candidate_reward_terms, sb.candidate_reward_terms, strict=True):
                assert set(ta) == set(tb) == {"harm", "help"}
                assert [ta[k] for k in ("harm", "help")] == pytest.approx([tb[k] for k in ("harm", "help")], abs=1e-5)


def test_fused_rewards_equal_the_reward_of_the_whole_sequence() -> None:
    # Candidates ending on the budget or a stop sequence end on a token no pass fed: its state is fed for the reward.
    decoder = _decoder(refinement="parallel")
    results = decoder.generate_ids(PROMPTS) + decoder.generate_ids(
        PROMPTS, config=decoder.config.model_copy(update={"stop_sequences": [" t7"]})
    )
    assert {r.finish_reason for r in results} >= {"length", "stop_sequence"}
    for prompt, result in zip(PROMPTS + PROMPTS, results, strict=True):
        full = prompt + [t for s in result.segments for t in s.token_ids]  # as generated, before a stop cut
        assert result.final_reward == pytest.approx(decoder.reward.score([full])[0], abs=1e-5)


def _greedy_next(policy: torch.nn.Module, ids: list[int]) -> int:
    with torch.no_grad():
        return int(policy(input_ids=torch.tensor([ids])).logits[0, -1].argmax())


def test_parallel_candidates_are_the_greedy_continuations_of_their_nudge_tokens() -> None:
    decoder = _decoder(refinement="parallel")
    results = decoder.generate_ids(PROMPTS)
    assert any(s.nudged for r in results for s in r.segments), "no parallel candidate was kept: nothing checked"
    for prompt, result in zip(PROMPTS, results, strict=True):
        context = list(prompt)
        for segment in result.segments:
            rewards = segment.candidate_rewards
            assert 1 <= len(rewards) <= SETTINGS["refinement_steps"]
            finite = [r for r in rewards if r is not None]
            assert rewards[segment.kept_refinement] == max(finite)
            # Every token after the insertion position is the policy's argmax (one full pass, no cache).
            nudge_at = segment.insertion_position - segment.start_position if segment.nudged else -1
            for j, token in enumerate(segment.token_ids):
                if j != nudge_at and token != EOS:
                    assert token == _greedy_next(decoder.policy, context + segment.token_ids[:j])
            context += segment.token_ids


def test_parallel_refinement_decodes_one_batch_as_it_decodes_one_prompt() -> None:
    decoder = _decoder(refinement="parallel")
    batched = decoder.generate_ids(PROMPTS)
    alone = [decoder.generate_ids([p])[0] for p in PROMPTS]
    assert _tokens(batched) == _tokens(alone)
    # One gradient per segment at most: reward calls stay below sequential refinement's.
    sequential = _decoder(refinement="sequential").generate_ids(PROMPTS)
    assert sum(r.usage.reward_calls for r in batched) < sum(r.usage.reward_calls for r in sequential)


@pytest.mark.parametrize("refinement", ["sequential", "parallel"])
def test_early_exit_at_zero_is_the_papers_rule_and_a_high_bar_stops_every_nudge(refinement: str) -> None:
    plain = _decoder(refinement=refinement).generate_ids(PROMPTS)
    at_zero = _decoder(refinement=refinement, early_exit_gain=0.0).generate_ids(PROMPTS)
    assert _tokens(plain) == _tokens(at_zero)
    high = _decoder(refinement=refinement, early_exit_gain=1e6).generate_ids(PROMPTS)
    segments = [s for r in high for s in r.segments]
    assert not any(s.nudged for s in segments)
    assert any(s.stopped_early for s in segments)
    assert all(len(s.candidate_rewards) == 1 for s in segments if s.stopped_early)
    greedy = _decoder(refinement_steps=1).generate_ids(PROMPTS)
    assert _tokens(high) == _tokens(greedy)


def test_parallel_refinement_with_a_reward_without_gradients() -> None:
    def count_good(prompts: list[str], responses: list[str]) -> list[float]:
        return [float(r.count(" t40")) for r in responses]

    settings = {**SETTINGS, "nudge_top_k": 60, "refinement": "parallel"}
    decoder = GGRODecoder(tiny_llama(), TinyTokenizer(), CallableReward(count_good), GGROConfig(**settings))
    greedy = decoder.generate_ids([PROMPTS[0]], config=GGROConfig(**{**settings, "refinement_steps": 1}))[0]
    steered = decoder.generate_ids([PROMPTS[0]])[0]
    assert steered.text.count(" t40") > greedy.text.count(" t40")
    assert steered.final_reward == float(steered.text.count(" t40"))


def test_parallel_refinement_keeps_structured_output_valid() -> None:
    schema = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}}}
    decoder = tiny_decoder(seed=3, config=GGROConfig(entropy_threshold=0.5, refinement_steps=3, nudge_top_k=8))
    for prompt in ("hi", "a JSON please", "x"):
        result = decoder.generate(prompt, constraint=Constraint.json_schema(schema), max_new_tokens=40)[0]
        parsed = json.loads(result.text)
        assert set(parsed) <= {"name", "age"}
        result_parallel = decoder.generate(
            prompt, constraint=Constraint.json_schema(schema), max_new_tokens=40, refinement="parallel"
        )[0]
        assert set(json.loads(result_parallel.text)) <= {"name", "age"}
        assert all(n.landed_in in ("text", "value") for n in result_parallel.nudges)


def test_alternatives_are_the_best_predicted_gains_other_than_the_current_token() -> None:
    proposal = NudgeProposal(
        token_id=7, candidate_ids=[5, 6, 7, 8, 9], scores=[0.0] * 5, gains=[0.0, -0.5, 0.9, 0.2, 0.4]
    )
    assert proposal.gain == pytest.approx(0.9)
    common = {"selection": "greedy", "temperature": 1.0}
    assert proposal.alternatives(3, min_gain=None, **common) == [7, 9, 8]  # type: ignore[arg-type]
    assert proposal.alternatives(2, min_gain=None, **common) == [7, 9]  # type: ignore[arg-type]
    assert proposal.alternatives(3, min_gain=0.3, **common) == [7, 9]  # type: ignore[arg-type]
    assert proposal.alternatives(3, min_gain=5.0, **common) == []  # type: ignore[arg-type]
    sampled = proposal.alternatives(
        2, min_gain=None, selection="sample", temperature=0.1, generator=torch.Generator().manual_seed(0)
    )
    assert len(set(sampled)) == 2 and set(sampled) <= {7, 8, 9}


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"refinement": "fast"}, "refinement"),
        ({"early_exit_gain": -1.0}, "early_exit_gain"),
        ({"fused_reward": "maybe"}, "fused_reward"),
    ],
)
def test_bad_speed_options_name_the_field(options: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        GGROConfig(**options)  # type: ignore[arg-type]


def test_timing_reports_where_the_time_went() -> None:
    (result,) = _decoder().generate_ids(PROMPTS[:1])
    timing = result.timing
    assert timing.policy_seconds is not None and timing.reward_seconds is not None
    assert timing.reward_backward_seconds is not None and timing.reward_backward_seconds <= timing.reward_seconds
    assert 0 < timing.policy_seconds + timing.reward_seconds <= timing.seconds
    assert math.isfinite(timing.seconds)
