"""The policy batch's passes that skip work: a pass over the fed rows only (idle rows are not computed) and the
reward gradient taken through the policy's own cache. Both must give what the plain computation gives; they run
on float64 copies of the models, so the comparisons hold on any CPU's kernels."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import ggro._batch as batch_module
from conftest import EOS, float64_copy, tiny_llama
from ggro import CompositeReward
from ggro._batch import FeedRequest, GradientFeed, PolicyBatch, shared_homes
from ggro.rewards import MeanPooledHeadReward

MARKER = [3, 4]
PROMPTS = [[10, 11, 12, 3, 4], [20, 21, 3, 4], [30, 31, 32, 33, 3, 4], [40, 3, 4]]


def _policy() -> Any:
    return float64_copy(tiny_llama(seed=0))


def _head(policy: Any, seed: int, name: str) -> MeanPooledHeadReward:
    torch.manual_seed(seed)
    return MeanPooledHeadReward(
        policy.get_decoder(), torch.randn(32), 0.25, response_marker=MARKER, excluded_ids=[EOS], name=name
    )


def _prefilled(policy: Any, rows: int) -> PolicyBatch:
    batch = PolicyBatch(policy, rows)
    batch.step({i: FeedRequest(PROMPTS[i % len(PROMPTS)]) for i in range(rows)})
    return batch


@pytest.mark.parametrize("fed", [[1], [0, 5], [2, 3, 4, 5, 6, 7]])
def test_a_pass_over_the_fed_rows_only_gives_the_logits_and_cache_of_a_full_pass(fed: list[int]) -> None:
    policy = _policy()
    results = []
    for share in (0.0, 1.0):  # never, always: only the fed rows
        batch = _prefilled(policy, 8)
        batch.rollback(3, 2)  # holes: the rows no longer line up
        feeds = {i: FeedRequest([7 + i, 9], all_logits=True, hidden=True) for i in fed}
        saved, batch_module.FED_ROW_SHARE = batch_module.FED_ROW_SHARE, share
        try:
            logits = batch.step(feeds)
            after = batch.step({i: FeedRequest([5]) for i in fed})  # reads the KV the first pass wrote
        finally:
            batch_module.FED_ROW_SHARE = saved
        results.append((logits, after, {i: feeds[i].states for i in fed}))
    (full, full_after, full_states), (only, only_after, only_states) = results
    for i in fed:
        torch.testing.assert_close(only[i], full[i], rtol=0, atol=1e-10)
        torch.testing.assert_close(only_after[i], full_after[i], rtol=0, atol=1e-10)
        torch.testing.assert_close(only_states[i], full_states[i], rtol=0, atol=1e-10)


def _gradient_request(
    reward: MeanPooledHeadReward | CompositeReward, batch: PolicyBatch, row: int, segment: list[int]
) -> GradientFeed:
    """A gradient of the reward of row ``row``'s prompt + ``segment`` at the segment's first token, as the decoder
    asks for it: the prompt's states come from the policy's own pass."""
    prompt = PROMPTS[row % len(PROMPTS)]
    request = FeedRequest(prompt, hidden=True)
    PolicyBatch(batch.model, 1).step({0: request})
    before = request.states
    assert before is not None

    def objective(states: torch.Tensor) -> torch.Tensor:
        return reward.terms_from_states([*prompt, *segment], torch.cat([before, states]))

    return GradientFeed(len(prompt), segment, objective)


@pytest.mark.parametrize("composite", [False, True])
def test_gradients_through_the_policys_cache_equal_the_reward_sessions(composite: bool) -> None:
    policy = _policy()
    head = _head(policy, 3, "harm")
    reward: MeanPooledHeadReward | CompositeReward = head
    if composite:
        reward = CompositeReward([("harm", 1.0, head), ("help", 2.0, _head(policy, 4, "help"))], name="two heads")
    batch = _prefilled(policy, 4)
    batch.rollback(1, 2)  # row 1 re-fed after a roll-back: its slots have a hole
    batch.step({1: FeedRequest(PROMPTS[1][2:])})
    batch.step({2: FeedRequest([41, 42])})  # row 2 holds tokens after the prompt: the gradient must not see them
    segments = {0: [15, 16, 17], 1: [25], 2: [35, 36], 3: [45, 46, 47, 48]}
    requests = {i: _gradient_request(reward, batch, i, s) for i, s in segments.items()}
    batch.gradient_pass(requests)  # all four rows in one pass
    for i, segment in segments.items():
        request = requests[i]
        assert request.error is None and request.values is not None and request.gradients is not None
        fused = reward.score_from_term_gradients(request.values, request.gradients)
        expected = reward.open_session().score_segment(PROMPTS[i], segment, 0)
        assert fused.reward == pytest.approx(expected.reward, abs=1e-10)
        assert fused.gradient is not None and expected.gradient is not None
        torch.testing.assert_close(fused.gradient, expected.gradient.float(), rtol=1e-5, atol=1e-6)
        if composite:
            assert fused.terms == pytest.approx(expected.terms, abs=1e-10)


def test_a_failing_objective_is_its_own_rows_error_alone() -> None:
    policy = _policy()
    reward = _head(policy, 3, "harm")
    batch = _prefilled(policy, 2)
    good = _gradient_request(reward, batch, 0, [15, 16])

    def broken(states: torch.Tensor) -> torch.Tensor:
        raise ValueError("head exploded")

    bad = GradientFeed(len(PROMPTS[1]), [25, 26], broken)
    batch.gradient_pass({0: good, 1: bad})
    assert isinstance(bad.error, ValueError) and bad.values is None and bad.gradients is None
    assert good.error is None and good.gradients is not None
    expected = reward.open_session().score_segment(PROMPTS[0], [15, 16], 0)
    assert expected.gradient is not None
    torch.testing.assert_close(good.gradients[0], expected.gradient.float(), rtol=1e-5, atol=1e-6)


def test_a_non_finite_or_constant_objective_leaves_the_other_rows_gradients_alone() -> None:
    policy = _policy()
    reward = _head(policy, 3, "harm")
    batch = _prefilled(policy, 3)
    good = _gradient_request(reward, batch, 0, [15, 16])
    nan = GradientFeed(len(PROMPTS[1]), [25], lambda states: states.sum(-1)[:1] * float("nan"))
    constant = GradientFeed(len(PROMPTS[2]), [35, 36], lambda states: torch.ones(1, dtype=torch.float64))
    batch.gradient_pass({0: good, 1: nan, 2: constant})
    assert nan.values is not None and nan.values[0] != nan.values[0]  # NaN, reported as it is
    assert constant.gradients is not None and not constant.gradients.any()
    expected = reward.open_session().score_segment(PROMPTS[0], [15, 16], 0)
    assert good.gradients is not None and expected.gradient is not None
    torch.testing.assert_close(good.gradients[0], expected.gradient.float(), rtol=1e-5, atol=1e-6)
    only_constant = GradientFeed(len(PROMPTS[2]), [35, 36], lambda states: torch.ones(1, dtype=torch.float64))
    batch.gradient_pass({2: only_constant})  # nothing to differentiate at all: zeros, not an autograd error
    assert only_constant.gradients is not None and not only_constant.gradients.any()


def test_a_gradient_request_beyond_its_row_is_refused() -> None:
    batch = _prefilled(_policy(), 1)
    with pytest.raises(ValueError, match="gradient request: length 99"):
        batch.gradient_pass({0: GradientFeed(99, [5], lambda states: states.sum(-1)[:1])})


def test_a_compacted_cache_gives_each_row_the_logits_of_its_own_tokens_alone() -> None:
    policy = _policy()
    batch = _prefilled(policy, 4)
    tokens = {i: list(PROMPTS[i]) for i in range(4)}
    for t in range(12):  # row 0 advances alone: every other row gathers a dead slot each pass
        batch.step({0: FeedRequest([13 + t])})
        tokens[0].append(13 + t)
    batch.step({2: FeedRequest([6, 7, 8])})
    tokens[2] += [6, 7, 8]
    slots_before = batch.num_slots
    batch.rollback(0, len(PROMPTS[0]) + 2)  # a rejected candidate: most of row 0's slots die
    del tokens[0][len(PROMPTS[0]) + 2 :]
    longest = max(len(t) for t in tokens.values())
    assert batch.num_slots <= longest + batch_module.COMPACT_SLACK < slots_before  # it compacted
    assert [batch.length(i) for i in range(4)] == [len(tokens[i]) for i in range(4)]
    logits = batch.step({i: FeedRequest([9]) for i in range(4)})
    for i in range(4):
        alone = PolicyBatch(policy, 1).step({0: FeedRequest([*tokens[i], 9])})
        torch.testing.assert_close(logits[i], alone[0], rtol=0, atol=1e-10)


@pytest.mark.parametrize("attention", ["sdpa", "eager", "copies"])
def test_a_forks_rows_share_their_parents_cache_row_and_each_sees_its_own_tokens_alone(attention: str) -> None:
    """The "copies" case is the fallback for attention kernels that take no 4-D mask: a cache row per branch."""
    policy = _policy()
    policy.set_attn_implementation("sdpa" if attention == "copies" else attention)
    # Eager attention takes its softmax in float32 whatever the model's dtype, so keys of another length (the
    # fork's slots) change its rounding: at most about (keys + 2) * 1.2e-7 = 5e-6 relative on each attention
    # weight over these <= 40 keys, which two layers of weights of order 1 carry to ~1e-5 on logits of order 1.
    # A wrong mask moves them by ~0.1.
    atol = 1e-5 if attention == "eager" else 1e-10
    batch = _prefilled(policy, 2)
    batch.tree_forks = attention != "copies"
    tokens = {i: list(PROMPTS[i]) for i in range(2)}
    batch.step({0: FeedRequest([13, 14])})  # row 0's draft: the branches must not see it
    tokens[0] += [13, 14]
    length = len(PROMPTS[0]) + 1
    branches = batch.fork(0, 3, length)
    assert batch.num_homes == (5 if attention == "copies" else 2)  # else no KV copied: they live in row 0's
    for row in branches:
        tokens[row] = tokens[0][:length]
    for t in range(3):  # the branches advance together (ragged: branch 2 feeds two tokens at first), row 1 too
        feeds = {
            row: FeedRequest([20 + 3 * b + t] + ([7] if (b, t) == (2, 0) else []), all_logits=True)
            for b, row in enumerate(branches)
        }
        feeds[1] = FeedRequest([30 + t], all_logits=True)
        logits = batch.step(feeds)
        for row, request in feeds.items():
            tokens[row] += request.tokens
            alone = PolicyBatch(policy, 1).step({0: FeedRequest(tokens[row], all_logits=True)})
            n = len(request.tokens)
            torch.testing.assert_close(logits[row], alone[0][-n:], rtol=0, atol=atol)
    batch.rollback(branches[1], length + 1)  # a branch cut back: the others keep their tokens
    del tokens[branches[1]][length + 1 :]
    batch.adopt_row(0, branches[1])  # the kept branch becomes row 0; the others leave
    tokens[0] = tokens[branches[1]]
    batch.drop_rows([0, 1])
    assert batch.num_homes == 2
    assert batch.num_slots <= max(len(tokens[0]), len(tokens[1])) + batch_module.COMPACT_SLACK
    logits = batch.step({0: FeedRequest([9]), 1: FeedRequest([9])})
    for i in range(2):
        alone = PolicyBatch(policy, 1).step({0: FeedRequest([*tokens[i], 9])})
        torch.testing.assert_close(logits[i], alone[0], rtol=0, atol=atol)


def test_sequences_sharing_a_cache_row_each_see_their_own_tokens_alone() -> None:
    """Rows 0-2 share one cache row (their tokens side by side in each pass, unpadded), row 3 has its own: ragged
    feeds, a roll-back, a compaction, a gradient and a row leaving must all read as each row's tokens alone."""
    policy = _policy()
    batch = PolicyBatch(policy, 4, homes=[0, 0, 0, 1])
    assert batch.num_homes == 2
    tokens = {i: list(PROMPTS[i]) for i in range(4)}
    logits = batch.step({i: FeedRequest(PROMPTS[i], all_logits=True) for i in range(4)})
    for t in range(6):  # row 0 feeds two tokens a pass, row 2 one every other pass, rows 1 and 3 one each
        feeds = {0: [13 + t, 7], 1: [20 + t], 3: [30 + t]} | ({2: [40 + t]} if t % 2 else {})
        logits = batch.step({i: FeedRequest(f, all_logits=True) for i, f in feeds.items()})
        for i, fed in feeds.items():
            tokens[i] += fed
            alone = PolicyBatch(policy, 1).step({0: FeedRequest(tokens[i], all_logits=True)})
            torch.testing.assert_close(logits[i], alone[0][-len(fed) :], rtol=0, atol=1e-10)
    slots_before = batch.num_slots
    batch.rollback(0, len(PROMPTS[0]) + 1)  # most of row 0's slots die, in the middle of the shared row
    del tokens[0][len(PROMPTS[0]) + 1 :]
    assert batch.num_slots < slots_before  # compacted
    reward = _head(policy, 3, "harm")
    request = _gradient_request(reward, batch, 1, [15, 16])
    assert request.length == len(PROMPTS[1]) < batch.length(1)  # row 1 holds more: the gradient sees its prompt
    batch.gradient_pass({1: request})
    expected = reward.open_session().score_segment(PROMPTS[1], [15, 16], 0)
    assert request.gradients is not None and expected.gradient is not None
    torch.testing.assert_close(request.gradients[0], expected.gradient.float(), rtol=1e-5, atol=1e-6)
    batch.drop_rows([0, 2, 3])  # row 1 leaves; its home stays with rows 0 and 2
    del tokens[1]
    assert batch.num_homes == 2
    logits = batch.step({i: FeedRequest([9]) for i in range(3)})
    for i, t in enumerate(tokens.values()):
        alone = PolicyBatch(policy, 1).step({0: FeedRequest([*t, 9])})
        torch.testing.assert_close(logits[i], alone[0], rtol=0, atol=1e-10)


def test_sequences_share_a_cache_row_while_their_prompts_fit_the_hidden_size() -> None:
    policy = _policy()  # hidden size 32: a home holds up to 64 tokens of prompts and new tokens
    assert batch_module.HOME_SLOTS_PER_HIDDEN == 2
    assert shared_homes(policy, [10, 10, 10, 30, 40, 70, 2]) == [0, 0, 0, 0, 1, 2, 3]  # 70 alone: over budget
    assert shared_homes(policy, [10, 10, 10], new_tokens=20) == [0, 0, 1]  # what each may add counts too
    assert shared_homes(policy, []) == []
    policy.config._attn_implementation = "flash_attention_2"  # no 4-D mask: a row each
    assert shared_homes(policy, [3, 3, 3]) == [0, 1, 2]
    with pytest.raises(ValueError, match="only where the attention takes a 4-D mask"):
        PolicyBatch(policy, 2, homes=[0, 0])


@pytest.mark.parametrize("homes", [[0, 2], [1, 1], [0], [1, 0]])
def test_homes_must_count_up_from_zero(homes: list[int]) -> None:
    with pytest.raises(ValueError, match="homes: expected 2 home numbers"):
        PolicyBatch(_policy(), 2, homes=homes)
