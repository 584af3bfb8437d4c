"""One shared model behind LangChain: 4 concurrent callers, cancelled streams and tasks, a failing reward
model under both policies. Each output must equal its sequential output, and each run's handlers must get
exactly that run's `ggro_nudge` events."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from ggro import GGRODecoder
from ggro.rewards import CallableReward
from ggro.testing import tiny_decoder, tiny_policy, tiny_tokenizer
from langchain_core.messages import HumanMessage

from langchain_ggro import GGROLLM, ChatGGRO
from tests.recorder import RunRecorder

PROMPTS = ["Hello there", "What is rain?", "Name a colour", "How do I pick a lock?", "Tips for sleep?", "Say hi"]
OPTIONS: dict[str, Any] = {"max_new_tokens": 24, "refinement_steps": 3}


@pytest.fixture(scope="module")
def decoder() -> GGRODecoder:
    return tiny_decoder()


@pytest.fixture(scope="module")
def sequential(decoder: GGRODecoder) -> dict[str, str]:
    return {p: decoder.generate(p, **OPTIONS)[0].text for p in PROMPTS}


def test_chat_batch_with_max_concurrency_4_runs_4_threads_and_keeps_runs_apart(
    decoder: GGRODecoder, sequential: dict[str, str]
) -> None:
    chat = ChatGGRO.from_decoder(decoder, max_tokens=24, refinement_steps=3)
    threads: set[str] = set()
    original = decoder.stream_ids  # every chat call starts its decoding run here

    def recording_stream_ids(*args: Any, **kwargs: Any) -> Any:
        threads.add(threading.current_thread().name)
        return original(*args, **kwargs)

    object.__setattr__(decoder, "stream_ids", recording_stream_ids)
    recorders = [RunRecorder() for _ in range(12)]
    calls = [PROMPTS[i % len(PROMPTS)] for i in range(12)]
    try:
        messages = chat.batch(
            [[HumanMessage(p)] for p in calls],
            config=[{"callbacks": [r], "max_concurrency": 4} for r in recorders],
        )
    finally:
        object.__delattr__(decoder, "stream_ids")
    assert len(threads) == 4  # ChatModel.batch runs invoke in a pool of max_concurrency threads
    assert [m.content for m in messages] == [sequential[p] for p in calls]
    for recorder in recorders:  # each handler saw one run: its own, with exactly its nudges
        recorder.assert_events_match_results(runs=1)


def test_llm_from_4_threads_equals_sequential(decoder: GGRODecoder, sequential: dict[str, str]) -> None:
    llm = GGROLLM.from_decoder(decoder, max_tokens=24, refinement_steps=3)
    calls = [PROMPTS[i % len(PROMPTS)] for i in range(12)]
    recorders = [RunRecorder() for _ in calls]
    with ThreadPoolExecutor(max_workers=4) as pool:
        texts = list(pool.map(lambda i: llm.invoke(calls[i], config={"callbacks": [recorders[i]]}), range(12)))
    assert texts == [sequential[p] for p in calls]
    for recorder in recorders:
        recorder.assert_events_match_results(runs=1)
    # batch(max_concurrency=4) on the LLM: chunks of 4 prompts, each decoded as one batch.
    recorder = RunRecorder()
    assert llm.batch(calls, config={"callbacks": [recorder], "max_concurrency": 4}) == texts
    recorder.assert_events_match_results(runs=12)


@pytest.mark.parametrize("cls", [GGROLLM, ChatGGRO])
def test_stream_closed_after_its_first_chunk_leaves_the_model_ready(
    cls: type[GGROLLM] | type[ChatGGRO], decoder: GGRODecoder, sequential: dict[str, str]
) -> None:
    model = cls.from_decoder(decoder, max_tokens=24, refinement_steps=3)
    stream = model.stream(PROMPTS[3])
    next(stream)
    stream.close()
    answer = model.invoke(PROMPTS[3])
    assert (answer if isinstance(answer, str) else answer.content) == sequential[PROMPTS[3]]


@pytest.mark.parametrize("cls", [GGROLLM, ChatGGRO])
def test_cancelled_ainvoke_stops_its_worker_and_the_next_call_is_correct(
    cls: type[GGROLLM] | type[ChatGGRO], decoder: GGRODecoder, sequential: dict[str, str]
) -> None:
    model = cls.from_decoder(decoder, max_tokens=400, refinement_steps=3)
    recorder = RunRecorder()

    async def scenario() -> Any:
        task = asyncio.create_task(model.ainvoke(PROMPTS[3], config={"callbacks": [recorder]}))
        deadline = time.monotonic() + 120
        while not recorder.nudge_events and time.monotonic() < deadline:  # mid-generation: a nudge arrived
            await asyncio.sleep(0.01)
        assert recorder.nudge_events
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        while any(t.name == "ggro-decode" for t in threading.enumerate()) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert not any(t.name == "ggro-decode" for t in threading.enumerate())
        return await model.ainvoke(PROMPTS[3], max_tokens=24)

    answer = asyncio.run(scenario())
    assert (answer if isinstance(answer, str) else answer.content) == sequential[PROMPTS[3]]


def test_failing_reward_policies_through_langchain() -> None:
    tokenizer = tiny_tokenizer()
    state = {"fail": True}

    def score(prompts: list[str], responses: list[str]) -> list[float]:
        if state["fail"] and any("lock" in p for p in prompts):
            raise ConnectionError("scorer unavailable")
        return [len(set(r)) / 10 for r in responses]

    decoder = GGRODecoder(tiny_policy(tokenizer), tokenizer, CallableReward(score, name="flaky-scorer"))
    raising = ChatGGRO.from_decoder(decoder, max_tokens=16, refinement_steps=3)
    with pytest.raises(Exception, match="reward 'flaky-scorer' failed: scorer unavailable"):
        raising.invoke(PROMPTS[3])
    fallback = ChatGGRO.from_decoder(decoder, max_tokens=16, refinement_steps=3, reward_failure="fallback")
    degraded = fallback.invoke(PROMPTS[3])
    summary = degraded.response_metadata["ggro"]
    assert summary["reward_error"] == "reward 'flaky-scorer' failed: scorer unavailable"
    assert summary["reward_fallbacks"] >= 1 and summary["nudges_tried"] == 0 and degraded.content
    state["fail"] = False  # the scorer is back: the same model steers again, with no trace of the failure
    # The first draft's score failed, so the whole answer is the policy's greedy text.
    assert degraded.content == decoder.generate(PROMPTS[3], max_new_tokens=16, refinement_steps=1)[0].text
    healthy = fallback.invoke(PROMPTS[3]).response_metadata["ggro"]
    assert healthy["reward_error"] is None and healthy["reward_fallbacks"] == 0
