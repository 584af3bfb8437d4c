"""The decoder on tiny random models: agreement with the release-structure oracle, batching, speculation,
streaming, events, and bad input."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import EOS, TinyTokenizer, float64_copy, tiny_gpt2, tiny_llama, tiny_reward
from ggro import GGROConfig, GGRODecoder, HFRewardModel, RewardError
from ggro.lab.baseline import naive_ggro_generate
from ggro.rewards.base import RewardModel, RewardSession, SegmentScore

PROMPTS = [[5, 6, 7, 8], [9, 10, 11], [12, 13, 14, 15, 16, 17], [20, 21, 30]]


def _decoder(policy_factory=tiny_llama, exact: bool = False, **cfg) -> GGRODecoder:
    """A decoder on the tiny models. ``exact``: on float64 copies of them, for the tests that compare tokens
    across differently shaped passes (batched or not, cached or not, speculative or not): in float32 their
    rounding differs by kernel, so a near-tie between two tokens or candidates could fall either way on
    another CPU; in float64 the passes agree to ~1e-15, far inside any margin these decisions have."""
    base = dict(
        entropy_threshold=1.5,
        max_new_tokens=40,
        refinement_steps=4,
        first_insertion_offset=4,
        nudge_score_baseline="zero",
        refinement="sequential",  # the release's structure, which the oracle below reimplements
    )
    base.update(cfg)
    policy, reward = policy_factory(), tiny_reward()
    if exact:
        policy, reward = float64_copy(policy), HFRewardModel(float64_copy(reward.model), name=reward.name)
    return GGRODecoder(policy, TinyTokenizer(), reward, GGROConfig(**base))


def _ids(result) -> list[int]:
    return result.token_ids + ([EOS] if result.finish_reason == "stop" else [])


@pytest.mark.parametrize("factory", [tiny_llama, tiny_gpt2])
@pytest.mark.parametrize("threshold", [0.5, 2.5])
def test_matches_release_structure_oracle(factory, threshold: float) -> None:
    dec = _decoder(factory, exact=True, entropy_threshold=threshold)
    total_nudges = 0
    for prompt in PROMPTS:
        (ours,) = dec.generate_ids([prompt])
        naive = naive_ggro_generate(
            dec.policy,
            dec.reward.model,
            None,
            prompt,
            max_new_tokens=40,
            entropy_threshold=threshold,
            refinement_steps=4,
            first_insertion_offset=4,
            eos_token_id=EOS,
        )
        assert _ids(ours) == naive.response_ids
        assert [s.kept_refinement for s in ours.segments] == [s.kept for s in naive.segments]
        for seg, nseg in zip(ours.segments, naive.segments, strict=False):
            assert len(seg.candidate_rewards) == len(nseg.candidates)
            for a, b in zip(seg.candidate_rewards, nseg.candidates, strict=False):
                assert a is not None and math.isclose(a, b.reward, abs_tol=1e-4)
        total_nudges += ours.num_nudges
        # Fewer policy forward passes than re-prefilling for every refinement.
        assert ours.usage.policy_forward_passes < naive.policy_forward_passes
    assert total_nudges > 0


@pytest.mark.parametrize("factory", [tiny_llama, tiny_gpt2])
def test_batch_equals_one_at_a_time(factory) -> None:
    dec = _decoder(factory, exact=True)
    batched = dec.generate_ids(PROMPTS)
    singles = [dec.generate_ids([p])[0] for p in PROMPTS]
    assert [r.token_ids for r in batched] == [r.token_ids for r in singles]
    assert [[s.kept_refinement for s in r.segments] for r in batched] == [
        [s.kept_refinement for s in r.segments] for r in singles
    ]
    # One batched forward serves every sequence: the batch needs fewer passes than the sum.
    assert max(r.usage.policy_forward_passes for r in batched) < sum(r.usage.policy_forward_passes for r in singles)


@pytest.mark.parametrize("refinement", ["sequential", "parallel"])
def test_speculation_changes_cost_not_output(refinement: str) -> None:
    on = _decoder(exact=True, speculative_refinement=True, refinement=refinement)
    off = _decoder(exact=True, speculative_refinement=False, refinement=refinement)
    for prompt in PROMPTS:
        (a,) = on.generate_ids([prompt])
        (b,) = off.generate_ids([prompt])
        assert a.token_ids == b.token_ids
        ra = [x for s in a.segments for x in s.candidate_rewards]
        rb = [x for s in b.segments for x in s.candidate_rewards]
        assert ra == pytest.approx(rb, abs=1e-4)
    on_passes = sum(on.generate_ids([p])[0].usage.policy_forward_passes for p in PROMPTS)
    off_passes = sum(off.generate_ids([p])[0].usage.policy_forward_passes for p in PROMPTS)
    if refinement == "sequential":
        assert on_passes < off_passes
    else:  # parallel branches never speculate: their guesses from the draft were rarely right
        assert on_passes == off_passes


def test_single_refinement_is_plain_greedy() -> None:
    dec = _decoder(exact=True, refinement_steps=1)
    for prompt in PROMPTS:
        (r,) = dec.generate_ids([prompt])
        x = torch.tensor([prompt], device=dec.policy.device)
        y = dec.policy.generate(
            x, attention_mask=torch.ones_like(x), do_sample=False, max_new_tokens=40, eos_token_id=EOS, pad_token_id=0
        )
        assert _ids(r) == y[0, len(prompt) :].tolist()
        assert r.num_nudges == 0 and r.nudges == []


def test_stream_events_listener_and_result_agree() -> None:
    dec = _decoder()
    heard = []
    stream = dec.stream_ids(PROMPTS[:2], listener=heard.append)
    streamed = []
    while True:
        try:
            streamed.append(next(stream))
        except StopIteration as stop:
            results = stop.value
            break
    assert streamed == heard
    for i, r in enumerate(results):
        assert [e for e in streamed if e.sequence_index == i] == r.events
        assert "".join(s.text for s in r.segments) == r.text
        assert r.segments[-1].finished and not any(s.finished for s in r.segments[:-1])
        assert r.usage.completion_tokens == len(r.token_ids) <= 40
        assert r.usage.prompt_tokens == len(PROMPTS[i])
        assert r.usage.reward_calls > 0 and r.timing.seconds > 0
        for n in r.nudges:
            assert n.kept == (n.kept_refinement > 0)
            assert n.draft_token_id != n.nudge_token_id
        assert r.num_nudges == sum(s.nudged for s in r.segments)


def test_sampled_nudges_are_seedable() -> None:
    dec = _decoder(nudge_selection="sample", nudge_temperature=1.0, seed=7)
    a = dec.generate_ids(PROMPTS)
    b = dec.generate_ids(PROMPTS)
    assert [r.token_ids for r in a] == [r.token_ids for r in b]


def test_default_preset_keeps_nudges_and_max_nudges_bounds_them_exactly() -> None:
    # The default preset (current-token baseline, offset 0) on a prompt where it keeps many nudges.
    cfg = GGROConfig(entropy_threshold=0.5, max_new_tokens=40)
    dec = GGRODecoder(tiny_llama(), TinyTokenizer(), tiny_reward(), cfg)

    def run(**update: object):
        return dec.generate_ids([PROMPTS[0]], config=cfg.model_copy(update=update))[0]

    free = run(max_nudges=None)
    assert free.num_nudges >= 3, "the unbounded run must keep nudges for the bound to mean anything"
    kept_segments = [s.segment_index for s in free.segments if s.nudged]
    for bound in (1, 2):
        r = run(max_nudges=bound)
        assert r.num_nudges == bound == sum(n.kept for n in r.nudges)
        # Up to the bound-th kept nudge the run is the unbounded one; after it no nudge is even tried.
        last = kept_segments[bound - 1]
        assert r.nudges == [n for n in free.nudges if n.segment_index <= last]
        assert r.segments[: last + 1] == free.segments[: last + 1]
        assert r.token_ids != free.token_ids  # the unbounded run's later nudges changed its text
    none = run(max_nudges=0)
    assert none.num_nudges == 0 and none.nudges == []
    assert none.token_ids == run(refinement_steps=1).token_ids


# ----------------------------------------------------------------------------- bad input
def test_empty_prompt_is_rejected() -> None:
    dec = _decoder()
    with pytest.raises(ValueError, match="prompt: must be a non-empty string"):
        dec.generate("   ")
    with pytest.raises(ValueError, match="prompt: tokenises to no tokens"):
        dec.generate_ids([[]])


def test_prompt_longer_than_context_is_rejected() -> None:
    dec = _decoder()
    with pytest.raises(ValueError, match="do not fit the model's context window of 512"):
        dec.generate_ids([[5] * 600])


def test_budget_is_clamped_to_context_window() -> None:
    dec = _decoder(refinement_steps=2)
    (r,) = dec.generate_ids([[5] * 500])
    assert len(r.token_ids) <= 12 and r.finish_reason in ("length", "stop")


def test_unknown_override_is_rejected() -> None:
    dec = _decoder()
    with pytest.raises(TypeError, match=r"GGRODecoder: unknown option 'refinement_stepz'; allowed per call: \["):
        dec.generate("t5 t6", refinement_stepz=3)


class _Wrapped(RewardModel):
    """Delegates to a real tiny RM but corrupts or fails some candidate scores."""

    def __init__(self, mode: str, after: int = 1) -> None:
        self.inner = tiny_reward()
        self.mode = mode
        self.after = after
        self.name = f"broken-{mode}"

    def open_session(self, context=None) -> RewardSession:
        inner = self.inner.open_session(context)
        outer = self

        class S(RewardSession):
            calls = 0
            tokens_processed = 0

            def score_segment(self, prefix_ids, segment_ids, grad_position):
                self.calls += 1
                score = inner.score_segment(prefix_ids, segment_ids, grad_position)
                if self.calls > outer.after:
                    if outer.mode == "raise":
                        raise RuntimeError("reward server down")
                    if outer.mode == "nan":
                        return SegmentScore(float("nan"), score.gradient)
                    if outer.mode == "inf":
                        return SegmentScore(float("inf"), score.gradient)
                    if outer.mode == "nograd":
                        return SegmentScore(score.reward, None)
                    if outer.mode == "nangrad" and score.gradient is not None:
                        return SegmentScore(score.reward, torch.full_like(score.gradient, float("nan")))
                return score

            def score_sequence(self, ids):
                return inner.score_sequence(ids)

            def score_continuations(self, prefix_ids, continuations):  # parallel refinement's branches
                return [self.score_segment(prefix_ids, c, None).reward for c in continuations]

        return S()

    def candidate_scores(self, gradient: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
        return self.inner.candidate_scores(gradient, token_ids)

    def score(self, sequences):
        return self.inner.score(sequences)

    def embedding_gradients(self, ids, positions):
        return self.inner.embedding_gradients(ids, positions)


@pytest.mark.parametrize("mode", ["nan", "inf", "nangrad"])
def test_nonfinite_reward_never_wins_and_is_reported(mode: str) -> None:
    cfg = GGROConfig(entropy_threshold=0.5, max_new_tokens=30, refinement_steps=4, first_insertion_offset=0)
    # Every reward after the first draft (every gradient, for 'nangrad') is broken: the drafts must stand,
    # flagged in the events.
    # A float64 policy: the refinements' passes are shaped differently from plain greedy decoding (see _decoder).
    policy = float64_copy(tiny_llama())
    dec = GGRODecoder(policy, TinyTokenizer(), _Wrapped(mode, after=0 if mode == "nangrad" else 1), cfg)
    (r,) = dec.generate_ids([PROMPTS[0]])
    plain = GGRODecoder(policy, TinyTokenizer(), tiny_reward(), cfg.model_copy(update={"refinement_steps": 1}))
    (greedy,) = plain.generate_ids([PROMPTS[0]])
    assert r.token_ids == greedy.token_ids
    assert r.num_nudges == 0
    assert any(s.reward_fallback for s in r.segments)


def test_nonfinite_reward_can_raise() -> None:
    cfg = GGROConfig(entropy_threshold=0.5, max_new_tokens=30, nonfinite_reward="raise")
    dec = GGRODecoder(tiny_llama(), TinyTokenizer(), _Wrapped("nan", after=0), cfg)
    with pytest.raises(RewardError, match="non-finite reward"):
        dec.generate_ids([PROMPTS[0]])


def test_missing_gradient_is_a_clear_error() -> None:
    cfg = GGROConfig(entropy_threshold=0.5, max_new_tokens=30)
    dec = GGRODecoder(tiny_llama(), TinyTokenizer(), _Wrapped("nograd", after=0), cfg)
    with pytest.raises(RewardError, match="'broken-nograd' returned no gradient for a finite reward"):
        dec.generate_ids([PROMPTS[0]])


def test_raising_reward_gives_clear_error_and_next_call_works() -> None:
    cfg = GGROConfig(entropy_threshold=0.5, max_new_tokens=30, refinement_steps=3)
    broken = _Wrapped("raise", after=2)
    dec = GGRODecoder(tiny_llama(), TinyTokenizer(), broken, cfg)
    with pytest.raises(RuntimeError, match="reward server down"):
        dec.generate_ids(PROMPTS)
    broken.mode = "ok"
    healthy = GGRODecoder(dec.policy, TinyTokenizer(), broken.inner, cfg)
    assert [r.token_ids for r in dec.generate_ids(PROMPTS)] == [r.token_ids for r in healthy.generate_ids(PROMPTS)]


def test_rm_exception_is_wrapped_with_its_name() -> None:
    rm = tiny_reward()

    def boom(*args, **kwargs):
        raise RuntimeError("CUDA out of memory (simulated)")

    dec = GGRODecoder(tiny_llama(), TinyTokenizer(), rm, GGROConfig(max_new_tokens=10))
    rm.model.forward = boom  # type: ignore[method-assign]
    with pytest.raises(RewardError, match="reward model 'tiny-rm' failed: CUDA out of memory"):
        dec.generate_ids([PROMPTS[0]])


def test_vocabulary_mismatch_is_rejected() -> None:
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from ggro import HFRewardModel

    small = LlamaForSequenceClassification(
        LlamaConfig(
            vocab_size=50,
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
            num_labels=1,
            pad_token_id=0,
        )
    )
    with pytest.raises(ValueError, match="embedding has 50 rows but the policy's vocabulary has 96"):
        GGRODecoder(tiny_llama(), TinyTokenizer(), HFRewardModel(small), GGROConfig())


def test_bf16_models_decode_within_budget() -> None:
    policy = tiny_llama().to(torch.bfloat16)
    rm = tiny_reward()
    rm.model.to(torch.bfloat16)
    dec = GGRODecoder(policy, TinyTokenizer(), rm, GGROConfig(entropy_threshold=0.5, max_new_tokens=24))
    results = dec.generate_ids(PROMPTS[:2])
    for r in results:
        assert 0 < len(r.token_ids) <= 24
        assert all(x is None or math.isfinite(x) for s in r.segments for x in s.candidate_rewards)
