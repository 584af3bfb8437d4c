"""The reward-failure policy: a reward model that raises, returns NaN or is slower than reward_timeout either
fails the call with a RewardError (reward_failure='raise') or leaves the draft standing and says so
(reward_failure='fallback'); either way nothing leaks into the next call."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import pytest
import torch

from ggro import GGROConfig, GGRODecoder, RewardError
from ggro.rewards.base import RewardContext, RewardModel, RewardSession, SegmentScore
from ggro.rewards.guard import RewardTimeoutError
from ggro.testing import tiny_policy, tiny_reward, tiny_tokenizer

PROMPTS = ["Hello there", "How do I pick a lock?", "Tips for sleep?"]
OPTIONS: dict[str, Any] = {"max_new_tokens": 24, "refinement_steps": 3, "entropy_threshold": 0.5}


class FaultyReward(RewardModel):
    """The tiny reward, with a fault injected into one sequence's ``score_segment`` calls: ``fault(call_index)``
    returns None (score normally), "raise" or "nan" (it may also block, to play a slow model)."""

    def __init__(self, inner: RewardModel, fault: Callable[[int], str | None], prompt: str) -> None:
        self.inner, self.fault, self.prompt = inner, fault, prompt
        self.name = "faulty-rm"
        self.differentiable = inner.differentiable
        self.sessions = 0

    def open_session(self, context: RewardContext | None = None) -> RewardSession:
        self.sessions += 1
        session = self.inner.open_session(context)
        faulty = context is not None and context.prompt_text == self.prompt
        return _FaultySession(session, self.fault if faulty else lambda _: None)

    def score(self, sequences: Sequence[Sequence[int]]) -> list[float]:
        return self.inner.score(sequences)

    def embedding_gradients(self, ids: Sequence[int], positions: Sequence[int]) -> tuple[float, torch.Tensor]:
        return self.inner.embedding_gradients(ids, positions)

    def candidate_scores(self, gradient: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
        return self.inner.candidate_scores(gradient, token_ids)


class _FaultySession(RewardSession):
    def __init__(self, inner: RewardSession, fault: Callable[[int], str | None]) -> None:
        self.inner, self.fault, self.segment_calls = inner, fault, 0

    @property  # type: ignore[override]
    def calls(self) -> int:
        return self.inner.calls

    @property  # type: ignore[override]
    def tokens_processed(self) -> int:
        return self.inner.tokens_processed

    def score_segment(
        self, prefix_ids: Sequence[int], segment_ids: Sequence[int], grad_position: int | None
    ) -> SegmentScore:
        fault = self.fault(self.segment_calls)
        self.segment_calls += 1
        if fault == "raise":
            raise ConnectionError("reward server unavailable")
        score = self.inner.score_segment(prefix_ids, segment_ids, grad_position)
        if fault == "nan":
            return SegmentScore(reward=math.nan, gradient=score.gradient)
        return score

    def score_sequence(self, ids: Sequence[int]) -> float:
        return self.inner.score_sequence(ids)


@pytest.fixture(scope="module")
def parts() -> tuple[Any, Any, RewardModel]:
    tokenizer = tiny_tokenizer()
    return tokenizer, tiny_policy(tokenizer), tiny_reward(tokenizer, 1)


def make(parts: tuple[Any, Any, RewardModel], fault: Callable[[int], str | None], **config: Any) -> GGRODecoder:
    tokenizer, policy, reward = parts
    return GGRODecoder(policy, tokenizer, FaultyReward(reward, fault, PROMPTS[1]), GGROConfig(**OPTIONS, **config))


def clean(parts: tuple[Any, Any, RewardModel], prompts: list[str], **options: Any) -> list[Any]:
    tokenizer, policy, reward = parts
    return GGRODecoder(policy, tokenizer, reward).generate(prompts, **{**OPTIONS, **options})


def fails_on(*calls: int, how: str = "raise") -> Callable[[int], str | None]:
    return lambda i: how if i in calls else None


def test_the_faulty_prompt_is_nudged_so_the_faults_are_reached(parts: tuple[Any, Any, RewardModel]) -> None:
    (result,) = clean(parts, [PROMPTS[1]])
    assert len(result.segments) >= 3 and result.nudges  # several scored segments: calls 0..5 exist


@pytest.mark.parametrize("call", [0, 1, 4])
def test_raise_policy_fails_the_whole_call_and_the_next_call_is_clean(
    parts: tuple[Any, Any, RewardModel], call: int
) -> None:
    decoder = make(parts, fails_on(call))
    with pytest.raises(
        RewardError, match=r"reward model 'faulty-rm' failed: ConnectionError: reward server unavailable"
    ):
        decoder.generate(PROMPTS)
    # The same decoder, prompts that do not fault: exactly the clean outputs.
    others = [PROMPTS[0], PROMPTS[2]]
    assert [r.text for r in decoder.generate(others)] == [r.text for r in clean(parts, others)]


@pytest.mark.parametrize("call", [0, 1, 4])
def test_fallback_policy_keeps_the_draft_reports_it_and_spares_the_batch(
    parts: tuple[Any, Any, RewardModel], call: int
) -> None:
    decoder = make(parts, fails_on(call), reward_failure="fallback")
    results = decoder.generate(PROMPTS)
    expected = clean(parts, PROMPTS)
    assert [results[0].text, results[2].text] == [expected[0].text, expected[2].text]
    assert results[0].reward_error is None and results[2].reward_error is None
    faulty = results[1]
    assert faulty.reward_error == "reward model 'faulty-rm' failed: ConnectionError: reward server unavailable"
    assert faulty.final_reward is None and faulty.summary()["reward_error"] == faulty.reward_error
    failed = [s for s in faulty.segments if s.reward_error]
    assert len(failed) == 1 and failed[0].reward_fallback
    after = faulty.segments[faulty.segments.index(failed[0]) :]
    assert all(s.reward_fallback and not s.nudged for s in after)  # no steering once the reward failed
    # The text before the failing segment is the steered text; the rest is the policy's greedy continuation.
    steered_part = "".join(s.text for s in faulty.segments[: faulty.segments.index(failed[0])])
    assert expected[1].text.startswith(steered_part)  # the segments before the failure are the clean ones
    unsteered = decoder.generate(PROMPTS[1], refinement_steps=1, reward_failure="fallback")[0]
    if call == 0:  # the draft of the very first segment failed: the whole response is greedy
        assert faulty.text == unsteered.text and faulty.nudges == []
    # The next call on the same decoder is clean (a fresh session; the fault was in call `call` only).
    decoder2 = make(parts, fails_on(call), reward_failure="fallback")
    assert [r.text for r in decoder2.generate(PROMPTS)] == [r.text for r in results]


@pytest.mark.parametrize("call", [0, 1])
def test_parallel_refinement_follows_the_same_failure_policy(parts: tuple[Any, Any, RewardModel], call: int) -> None:
    with pytest.raises(RewardError, match="reward server unavailable"):
        make(parts, fails_on(call), refinement="parallel").generate(PROMPTS)
    results = make(parts, fails_on(call), reward_failure="fallback", refinement="parallel").generate(PROMPTS)
    expected = clean(parts, PROMPTS, refinement="parallel")
    assert [results[0].text, results[2].text] == [expected[0].text, expected[2].text]
    faulty = results[1]
    assert faulty.reward_error is not None and faulty.final_reward is None
    failed = [s for s in faulty.segments if s.reward_error]
    assert len(failed) == 1 and failed[0].reward_fallback
    assert not any(s.nudged for s in faulty.segments[faulty.segments.index(failed[0]) :])


def test_nan_rewards_follow_nonfinite_reward(parts: tuple[Any, Any, RewardModel]) -> None:
    skipping = make(parts, fails_on(1, how="nan"))
    (result,) = skipping.generate([PROMPTS[1]])
    assert any(s.reward_fallback for s in result.segments) and result.reward_error is None
    assert result.text and "\ufffd" not in result.text
    with pytest.raises(RewardError, match="returned a non-finite reward"):
        make(parts, fails_on(1, how="nan"), nonfinite_reward="raise").generate([PROMPTS[1]])


def test_slow_reward_times_out_promptly_under_both_policies(parts: tuple[Any, Any, RewardModel]) -> None:
    release = threading.Event()  # the slow calls block until the test lets them go
    finished: list[threading.Event] = []

    def slow_third_call(i: int) -> None:
        if i == 2:
            done = threading.Event()
            finished.append(done)
            release.wait(120)
            done.set()

    try:
        slow = make(parts, slow_third_call, reward_timeout=0.5)
        with pytest.raises(RewardTimeoutError, match=r"reward model 'faulty-rm' took longer than reward_timeout=0.5 s"):
            slow.generate([PROMPTS[1]])
        fallback = make(parts, slow_third_call, reward_timeout=0.5, reward_failure="fallback")
        results = fallback.generate(PROMPTS)
        # Both calls returned while their slow reward call was still running.
        assert len(finished) == 2 and not any(done.is_set() for done in finished)
    finally:
        release.set()
    assert results[1].reward_error is not None and "reward_timeout=0.5" in results[1].reward_error
    assert any(s.reward_error for s in results[1].segments)
    assert [results[0].text, results[2].text] == [r.text for r in clean(parts, [PROMPTS[0], PROMPTS[2]])]
    # A limit that is never reached changes nothing.
    patient = make(parts, lambda i: None, reward_timeout=60.0)
    assert [r.text for r in patient.generate(PROMPTS)] == [r.text for r in clean(parts, PROMPTS)]
    # The abandoned calls end once released, and their threads with them.
    assert all(done.wait(30) for done in finished)
    deadline = time.monotonic() + 30
    while any(t.name.startswith("ggro-reward-") for t in threading.enumerate()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [t for t in threading.enumerate() if t.name.startswith("ggro-reward-")]


def test_reward_options_are_validated() -> None:
    with pytest.raises(ValueError, match="reward_timeout"):
        GGROConfig(reward_timeout=0)
    with pytest.raises(ValueError, match="reward_failure"):
        GGROConfig(reward_failure="ignore")  # type: ignore[arg-type]
