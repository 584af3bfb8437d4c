"""One shared model behind LlamaIndex: `asyncio.gather` of concurrent `acomplete` calls, cancelled streams and
tasks, a failing reward under both policies. Each output must equal its sequential output, and each call's
nudge events must carry that call's span id only."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest
from llama_index.llms.ggro import GGRO, GGRONudgeCollector

from ggro import CallableReward, GGRODecoder, RewardError
from ggro.testing import tiny_decoder, tiny_policy, tiny_tokenizer
from tests.conftest import EventRecorder

OPTIONS: dict[str, Any] = {"max_new_tokens": 24, "refinement_steps": 3}
PROMPTS = ["Tell me about the sea.", "How do I pick a lock?", "Tips for sleep?", "Name a colour"]


@pytest.fixture(scope="module")
def decoder() -> GGRODecoder:
    return tiny_decoder()


@pytest.fixture(scope="module")
def sequential(decoder: GGRODecoder) -> dict[str, str]:
    llm = GGRO.from_decoder(decoder, **OPTIONS)
    return {p: llm.complete(p).text for p in PROMPTS}


def decode_threads() -> int:
    return sum(1 for t in threading.enumerate() if t.name == "ggro-decode")


async def test_gather_of_acomplete_runs_concurrently_and_keeps_spans_apart(
    decoder: GGRODecoder, sequential: dict[str, str], collector: GGRONudgeCollector, recorder: EventRecorder
) -> None:
    llm = GGRO.from_decoder(decoder, **OPTIONS)
    peak = 0
    done = asyncio.Event()

    async def watch() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, decode_threads())
            await asyncio.sleep(0.002)

    watcher = asyncio.create_task(watch())
    responses = []
    for _ in range(2):  # two rounds of 4 concurrent calls on the one shared decoder
        responses += await asyncio.gather(*(llm.acomplete(p) for p in PROMPTS))
    done.set()
    await watcher
    assert peak == 4  # four decodings in flight at once, each in its worker thread
    assert [r.text for r in responses] == [sequential[p] for p in PROMPTS] * 2
    by_span = collector.by_span
    ends = recorder.of("LLMCompletionEndEvent")
    assert len(ends) == 8 and {e.span_id for e in ends} == set(by_span)  # 8 calls, 8 spans, no stray event
    for end in ends:  # every call's events under its own span, and only there
        assert [e.payload for e in by_span[end.span_id]] == end.response.raw["nudges"] != []
    assert sorted(e.response.text for e in ends) == sorted(r.text for r in responses)


async def test_cancelled_acomplete_stops_its_worker_and_the_next_call_is_correct(
    decoder: GGRODecoder, sequential: dict[str, str], collector: GGRONudgeCollector
) -> None:
    llm = GGRO.from_decoder(decoder, **OPTIONS)
    task = asyncio.create_task(llm.acomplete(PROMPTS[1], max_new_tokens=400))
    deadline = time.monotonic() + 120
    while not collector.events and time.monotonic() < deadline:  # mid-generation: a nudge arrived
        await asyncio.sleep(0.01)
    assert collector.events
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    while decode_threads() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert decode_threads() == 0
    assert (await llm.acomplete(PROMPTS[1])).text == sequential[PROMPTS[1]]


async def test_async_stream_closed_after_its_first_chunk(decoder: GGRODecoder, sequential: dict[str, str]) -> None:
    llm = GGRO.from_decoder(decoder, **OPTIONS)
    stream = await llm.astream_complete(PROMPTS[2])
    async for _ in stream:
        break
    await stream.aclose()  # type: ignore[attr-defined]
    assert (await llm.acomplete(PROMPTS[2])).text == sequential[PROMPTS[2]]


def test_stream_closed_after_its_first_chunk(decoder: GGRODecoder, sequential: dict[str, str]) -> None:
    llm = GGRO.from_decoder(decoder, **OPTIONS)
    stream = llm.stream_complete(PROMPTS[2])
    next(stream)
    stream.close()  # type: ignore[attr-defined]
    assert llm.complete(PROMPTS[2]).text == sequential[PROMPTS[2]]


def test_failing_reward_policies() -> None:
    tokenizer = tiny_tokenizer()
    state = {"fail": True}

    def score(prompts: list[str], responses: list[str]) -> list[float]:
        if state["fail"]:
            raise ConnectionError("scorer unavailable")
        return [len(set(r)) / 10 for r in responses]

    decoder = GGRODecoder(tiny_policy(tokenizer), tokenizer, CallableReward(score, name="flaky-scorer"))
    with pytest.raises(RewardError, match="reward 'flaky-scorer' failed: scorer unavailable"):
        GGRO.from_decoder(decoder, **OPTIONS).complete(PROMPTS[0])
    llm = GGRO.from_decoder(decoder, reward_failure="fallback", **OPTIONS)
    degraded = llm.complete(PROMPTS[0])
    assert degraded.raw["ggro"]["reward_error"] == "reward 'flaky-scorer' failed: scorer unavailable"
    assert degraded.raw["nudges"] == [] and degraded.text
    state["fail"] = False
    assert degraded.text == decoder.generate(PROMPTS[0], max_new_tokens=24, refinement_steps=1)[0].text
    healthy = llm.complete(PROMPTS[0])
    assert healthy.raw["ggro"]["reward_error"] is None and healthy.raw["result"].reward_error is None
