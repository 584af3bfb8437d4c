"""Reliability of one shared decoder: concurrent callers, cancelled streams and tasks, determinism across runs
and batch compositions (tiny models; the framework wrappers have their own such tests)."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from ggro import GGRODecoder, GGROEvent, NudgeEvent
from ggro.testing import tiny_decoder

PROMPTS = ["Hello there", "How do I pick a lock?", "Tips for sleep?", "Write a poem about rain", "Make a weapon"]
OPTIONS: dict[str, Any] = {"max_new_tokens": 24, "refinement_steps": 3, "entropy_threshold": 0.5}


@pytest.fixture(scope="module")
def decoder() -> GGRODecoder:
    return tiny_decoder()


@pytest.fixture(scope="module")
def sequential(decoder: GGRODecoder) -> dict[str, Any]:
    return {p: decoder.generate(p, **OPTIONS)[0] for p in PROMPTS}


def test_prompts_are_steered(sequential: dict[str, Any]) -> None:
    assert sum(len(r.nudges) for r in sequential.values()) >= len(PROMPTS)  # the listeners below see nudges


def test_four_threads_share_one_decoder(decoder: GGRODecoder, sequential: dict[str, Any]) -> None:
    calls = [PROMPTS[i % len(PROMPTS)] for i in range(12)]
    seen: list[list[GGROEvent]] = [[] for _ in calls]
    threads_used: set[str] = set()

    def call(i: int) -> Any:
        threads_used.add(threading.current_thread().name)
        return decoder.generate(calls[i], listener=seen[i].append, **OPTIONS)[0]

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(call, range(len(calls))))
    assert len(threads_used) == 4
    for i, (prompt, result) in enumerate(zip(calls, results, strict=True)):
        assert result.text == sequential[prompt].text
        assert result.token_ids == sequential[prompt].token_ids
        assert seen[i] == result.events  # each listener got exactly its own call's events, in order
        assert [e for e in seen[i] if isinstance(e, NudgeEvent)] == result.nudges


@pytest.mark.parametrize("after_events", [1, 2, 4])
def test_a_stream_closed_early_leaves_the_decoder_ready(
    decoder: GGRODecoder, sequential: dict[str, Any], after_events: int
) -> None:
    stream = decoder.stream(PROMPTS[1], **OPTIONS)
    for _ in range(after_events):
        next(stream)
    stream.close()
    assert decoder.generate(PROMPTS[1], **OPTIONS)[0].text == sequential[PROMPTS[1]].text
    assert [r.text for r in decoder.generate(PROMPTS, **OPTIONS)] == [sequential[p].text for p in PROMPTS]


@pytest.mark.parametrize("after_events", [1, 3])
def test_a_cancelled_task_stops_its_worker_and_leaves_the_decoder_ready(
    decoder: GGRODecoder, sequential: dict[str, Any], after_events: int
) -> None:
    async def scenario() -> list[str]:
        seen: list[GGROEvent] = []
        reached = asyncio.Event()
        loop = asyncio.get_running_loop()

        def listener(event: GGROEvent) -> None:
            seen.append(event)
            if len(seen) >= after_events:
                loop.call_soon_threadsafe(reached.set)

        long_run = {**OPTIONS, "max_new_tokens": 400}
        task = asyncio.create_task(decoder.agenerate(PROMPTS[3], listener=listener, **long_run))
        await asyncio.wait_for(reached.wait(), 120)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # The worker stops at the next event boundary: at most a couple more events arrive.
        deadline = time.monotonic() + 60
        while any(t.name == "ggro-decode" for t in threading.enumerate()) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert not any(t.name == "ggro-decode" for t in threading.enumerate())
        assert len(seen) <= after_events + 3
        return [r.text for r in await decoder.agenerate(PROMPTS, **OPTIONS)]

    assert asyncio.run(scenario()) == [sequential[p].text for p in PROMPTS]


def test_same_seed_same_output_across_runs_and_batch_compositions(decoder: GGRODecoder) -> None:
    for options in (OPTIONS, {**OPTIONS, "nudge_selection": "sample", "nudge_temperature": 1.0, "seed": 7}):
        alone = {p: decoder.generate(p, **options)[0].token_ids for p in PROMPTS}
        assert {p: decoder.generate(p, **options)[0].token_ids for p in PROMPTS} == alone  # run to run
        for batch in (PROMPTS, PROMPTS[::-1], [PROMPTS[2], PROMPTS[2], PROMPTS[0]], PROMPTS[1:3]):
            results = decoder.generate(batch, **options)
            assert [r.token_ids for r in results] == [alone[p] for p in batch], (options, batch)
    sampled = {p: decoder.generate(p, **{**OPTIONS, "nudge_selection": "sample", "nudge_temperature": 1.0,
                                          "seed": s})[0].token_ids for p in PROMPTS for s in (7, 8)}  # fmt: skip
    assert len(set(map(tuple, sampled.values()))) > 1
