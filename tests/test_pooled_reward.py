"""The mean-pooled linear-head reward: pooling over the response, the prefix-cached session, the file format."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import LlamaModel

from conftest import EOS, TEST_DEVICE, TinyTokenizer, float64_copy, place, tiny_llama, tiny_llama_config
from ggro import GGROConfig, GGRODecoder
from ggro.rewards import MeanPooledHeadReward
from ggro.rewards.pooled import response_start

MARKER = [3, 4]
PROMPT = [10, 11, 3, 4]  # "user text", then the assistant header: the response starts at index 4


def _reward(seed: int = 3, float64: bool = False) -> MeanPooledHeadReward:
    """``float64``: on a float64 copy of the backbone, for comparisons of differently shaped passes (their
    float32 rounding differs by kernel and CPU; in float64 they agree far below the tolerances)."""
    torch.manual_seed(seed)
    backbone = place(LlamaModel(tiny_llama_config()).eval())
    if float64:
        backbone = float64_copy(backbone)
    weight = torch.randn(32)
    return MeanPooledHeadReward(backbone, weight, 0.25, response_marker=MARKER, excluded_ids=[EOS], name="tiny-pooled")


def _reference(rm: MeanPooledHeadReward, ids: list[int]) -> float:
    """The definition, computed the slow way: one full pass, mean of the pooled rows, the head."""
    with torch.no_grad():
        hidden = rm.backbone(input_ids=torch.tensor([ids], device=TEST_DEVICE)).last_hidden_state[0].float()
    rows = [hidden[i] for i, t in enumerate(ids) if i >= response_start(ids, MARKER) and t != EOS]
    if not rows:
        return rm.bias
    return float(torch.stack(rows).mean(0) @ rm.weight + rm.bias)


def test_continuations_of_different_lengths_are_scored_in_one_padded_pass() -> None:
    rm = _reward(float64=True)
    session = rm.open_session()
    prefix = [*PROMPT, 20, 21]
    continuations = [[30], [31, 32, 33], [], [34, EOS], [35, 36, 37, 38, 39]]
    scores = session.score_continuations(prefix, continuations)
    assert scores == pytest.approx([_reference(rm, prefix + c) for c in continuations], abs=1e-5)
    # The prefix once, the four non-empty continuations in one pass, the empty one alone (the prefix itself).
    assert session.calls == 3
    assert session.score_continuations(prefix, [[30], [31, 32, 33]]) == pytest.approx(scores[:2], abs=1e-5)
    before = session.calls
    again = session.score_continuations(prefix, [[], [30], [31, 32, 33], []])  # two empty: the prefix scored once
    assert again == pytest.approx([scores[2], scores[0], scores[1], scores[2]], abs=1e-5)
    assert session.calls - before == 2


def test_response_start() -> None:
    assert response_start([1, 3, 4, 9, 3, 4, 7], [3, 4]) == 6
    assert response_start([1, 2], [3, 4]) == 0
    assert response_start([3, 4], [3, 4]) == 2
    assert response_start([5, 6], []) == 0


def test_pooling_skips_prompt_and_end_of_turn() -> None:
    rm = _reward()
    assert rm.pooling_mask([*PROMPT, 20, 21, EOS]).tolist() == [0, 0, 0, 0, 1, 1, 0]
    # The prompt alone pools nothing: the bias is the reward.
    assert rm.score([PROMPT])[0] == pytest.approx(0.25)


def test_cached_session_matches_full_passes() -> None:
    rm = _reward(float64=True)
    session = rm.open_session()
    prefix = [*PROMPT, 20, 21, 22]
    for segment, grad_at in (([30, 31, 32], 0), ([33, 34], 1), ([35, EOS], None)):
        got = session.score_segment(prefix, segment, grad_at)
        assert got.reward == pytest.approx(_reference(rm, prefix + segment), abs=1e-5)
        if grad_at is not None:
            reward, grads = rm.embedding_gradients(prefix + segment, [len(prefix) + grad_at])
            assert reward == pytest.approx(got.reward, abs=1e-5)
            assert got.gradient is not None
            torch.testing.assert_close(got.gradient, grads[0], atol=1e-5, rtol=1e-4)
    # Rolling the prefix back (a different accepted segment) keeps the pooled states consistent.
    other = [*PROMPT, 20, 40]
    assert session.score_segment(other, [41], None).reward == pytest.approx(_reference(rm, [*other, 41]), abs=1e-5)
    assert session.score_sequence([*other, 41, 42]) == pytest.approx(_reference(rm, [*other, 41, 42]), abs=1e-5)


def test_a_growing_prefix_costs_one_pass_per_segment_and_a_failed_pass_leaves_no_trace() -> None:
    from ggro import RewardError

    rm = _reward(float64=True)
    session = rm.open_session()
    prefix = [*PROMPT, 20]
    session.score_segment(prefix, [21, 22], 0)
    # As in decoding: the segment accepted last joins the prefix, and is fed in the same pass as the next one.
    for segment in ([23, 24, 25], [26, 27], [28, 29, 30]):
        calls = session.calls
        got = session.score_segment(prefix, segment, 1)
        assert session.calls - calls == 1
        reward, grads = rm.embedding_gradients(prefix + segment, [len(prefix) + 1])
        assert got.reward == pytest.approx(_reference(rm, prefix + segment), abs=1e-5)
        assert got.reward == pytest.approx(reward, abs=1e-5)
        assert got.gradient is not None
        torch.testing.assert_close(got.gradient, grads[0], atol=1e-5, rtol=1e-4)
        prefix = prefix + segment
    # A pass that fails midway (here in the last layer, after the others extended their caches) is reported, and
    # the next call scores as a fresh session would.
    last = rm.backbone.layers[-1]
    original = last.forward

    def broken(*args: object, **kwargs: object) -> object:
        raise RuntimeError("out of memory")

    last.forward = broken
    with pytest.raises(RewardError, match="out of memory"):
        session.score_segment([*prefix, 31], [32, 33], 0)
    last.forward = original
    got = session.score_segment([*prefix, 31], [32, 33], 0)
    assert got.reward == pytest.approx(_reference(rm, [*prefix, 31, 32, 33]), abs=1e-5)
    assert session.score_sequence([*prefix, 31, 32]) == pytest.approx(_reference(rm, [*prefix, 31, 32]), abs=1e-5)


def test_batched_score_equals_definition() -> None:
    rm = _reward(float64=True)
    seqs = [[*PROMPT, 20], [*PROMPT, 20, 21, 22, 23, EOS], [9, 8, 7]]
    assert rm.score(seqs) == pytest.approx([_reference(rm, s) for s in seqs], abs=1e-5)


def test_gradient_changes_with_the_head() -> None:
    rm = _reward()
    flipped = MeanPooledHeadReward(rm.backbone, -rm.weight, 0.0, response_marker=MARKER)
    ids = [*PROMPT, 20, 21]
    _, g = rm.embedding_gradients(ids, [4])
    _, g_flipped = flipped.embedding_gradients(ids, [4])
    torch.testing.assert_close(g_flipped, -g)


def test_head_size_is_checked() -> None:
    backbone = LlamaModel(tiny_llama_config()).eval()
    with pytest.raises(ValueError, match="weight has 16 values but the backbone's hidden size is 32"):
        MeanPooledHeadReward(backbone, torch.zeros(16), 0.0)


def test_decoder_steers_with_pooled_reward() -> None:
    rm = _reward()
    decoder = GGRODecoder(tiny_llama(), TinyTokenizer(), rm, GGROConfig(entropy_threshold=0.5, max_new_tokens=16))
    (result,) = decoder.generate_ids([PROMPT])
    assert result.segments and len(result.token_ids) <= 16
    assert any(len(s.candidate_rewards) > 1 for s in result.segments)
    assert result.final_reward is not None and math.isfinite(result.final_reward)
    full = PROMPT + result.token_ids + ([EOS] if result.finish_reason == "stop" else [])
    assert result.final_reward == pytest.approx(rm.score([full])[0], abs=1e-3)
