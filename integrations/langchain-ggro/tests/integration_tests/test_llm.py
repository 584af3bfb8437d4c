"""`GGROLLM` on tiny models: every call path, stop sequences, usage, and one `ggro_nudge` event per nudge."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from ggro import GGRODecoder
from ggro.testing import tiny_decoder

from langchain_ggro import GGROLLM, NUDGES_KEY, GGRONudgeCollector
from tests.recorder import RunRecorder
from tests.tiny import tiny_params

PROMPTS = ["Hello there", "What is rain?", "Name a colour"]


@pytest.fixture(scope="module")
def decoder() -> GGRODecoder:
    return tiny_decoder()


@pytest.fixture
def llm(decoder: GGRODecoder) -> GGROLLM:
    return GGROLLM.from_decoder(decoder, max_tokens=32, refinement_steps=3)


def expected(decoder: GGRODecoder, prompts: list[str], **options: Any) -> list[Any]:
    return decoder.generate(prompts, max_new_tokens=32, refinement_steps=3, **options)


def test_invoke_and_generate_report_text_usage_and_nudges(llm: GGROLLM, decoder: GGRODecoder) -> None:
    recorder = RunRecorder()
    reference = expected(decoder, PROMPTS)
    assert llm.invoke(PROMPTS[0], config={"callbacks": [recorder]}) == reference[0].text
    result = llm.generate(PROMPTS, callbacks=[recorder])
    assert [g[0].text for g in result.generations] == [r.text for r in reference]
    assert result.llm_output is not None
    assert result.llm_output["token_usage"] == {
        "prompt_tokens": sum(r.usage.prompt_tokens for r in reference),
        "completion_tokens": sum(r.usage.completion_tokens for r in reference),
        "total_tokens": sum(r.usage.total_tokens for r in reference),
    }
    info = result.generations[1][0].generation_info
    assert info is not None
    assert info["finish_reason"] == reference[1].finish_reason
    assert info["ggro"]["nudges_tried"] == len(reference[1].nudges) == len(info[NUDGES_KEY])
    assert info["ggro"]["nudges_kept"] == reference[1].num_nudges
    assert recorder.assert_events_match_results(runs=4) == sum(len(r.nudges) for r in reference) + len(
        reference[0].nudges
    )


def test_batch_decodes_as_one_batch_and_routes_each_prompts_nudges_to_its_run(llm: GGROLLM) -> None:
    recorder = RunRecorder()
    calls: list[int] = []
    original = llm.decoder.generate

    def counting_generate(prompts: Any, **kwargs: Any) -> Any:
        calls.append(len(prompts))
        return original(prompts, **kwargs)

    object.__setattr__(llm.decoder, "generate", counting_generate)
    try:
        texts = llm.batch(PROMPTS, config={"callbacks": [recorder]})
    finally:
        object.__delattr__(llm.decoder, "generate")
    assert calls == [3]  # one decoder call for the whole batch
    assert texts == [r.text for r in expected(llm.decoder, PROMPTS)]
    recorder.assert_events_match_results(runs=3)


def test_batch_with_max_concurrency_keeps_each_calls_events_apart(llm: GGROLLM) -> None:
    recorder = RunRecorder()
    texts = llm.batch(PROMPTS, config={"callbacks": [recorder], "max_concurrency": 2})
    assert texts == [r.text for r in expected(llm.decoder, PROMPTS)]
    recorder.assert_events_match_results(runs=3)


def test_stream_yields_segments_that_add_up_to_invoke(llm: GGROLLM) -> None:
    recorder = RunRecorder()
    chunks = list(llm.stream(PROMPTS[2], config={"callbacks": [recorder]}))
    assert len(chunks) > 2
    assert "".join(chunks) == llm.invoke(PROMPTS[2])
    recorder.assert_events_match_results(runs=1)
    (run_id,) = recorder.result_nudges
    assert "".join(recorder.tokens[run_id]) == "".join(chunks)


def test_async_paths(llm: GGROLLM) -> None:
    reference = [r.text for r in expected(llm.decoder, PROMPTS)]
    recorder = RunRecorder()

    async def run() -> tuple[str, list[str], list[str], list[str]]:
        one = await llm.ainvoke(PROMPTS[0], config={"callbacks": [recorder]})
        many = await llm.abatch(PROMPTS, config={"callbacks": [recorder]})
        streamed = [chunk async for chunk in llm.astream(PROMPTS[1], config={"callbacks": [recorder]})]
        gathered = await asyncio.gather(*(llm.ainvoke(p, config={"callbacks": [recorder]}) for p in PROMPTS))
        return one, many, streamed, list(gathered)

    one, many, streamed, gathered = asyncio.run(run())
    assert one == reference[0]
    assert many == gathered == reference
    assert "".join(streamed) == reference[1]
    recorder.assert_events_match_results(runs=1 + 3 + 1 + 3)


def test_async_decoding_leaves_the_event_loop_free(llm: GGROLLM) -> None:
    async def run() -> int:
        ticks = 0
        stop = asyncio.Event()

        async def ticker() -> None:
            nonlocal ticks
            while not stop.is_set():
                ticks += 1
                await asyncio.sleep(0.005)

        task = asyncio.create_task(ticker())
        await llm.ainvoke(PROMPTS[0], max_tokens=96)
        stop.set()
        await task
        return ticks

    assert asyncio.run(run()) > 5


def test_astream_events_v2_shows_each_nudge(llm: GGROLLM) -> None:
    async def run() -> list[dict[str, Any]]:
        return [event async for event in llm.astream_events(PROMPTS[0], version="v2")]

    events = asyncio.run(run())
    nudges = [e for e in events if e["event"] == "on_custom_event" and e["name"] == "ggro_nudge"]
    (end,) = [e for e in events if e["event"] == "on_llm_end"]
    generation = end["data"]["output"]["generations"][0][0]
    assert len(nudges) == len(generation["generation_info"][NUDGES_KEY]) > 0
    assert {e["run_id"] for e in nudges} == {end["run_id"]}
    assert [e["data"] for e in nudges] == generation["generation_info"][NUDGES_KEY]


def test_stop_sequences_cut_where_they_begin(llm: GGROLLM) -> None:
    # Greedy decoding (one candidate per segment) makes the cut checkable against the free-running text.
    greedy = GGROLLM.from_decoder(llm.decoder, max_tokens=32, refinement_steps=1)
    free = greedy.invoke(PROMPTS[0])
    stop = free[10:13]  # three characters: three tokens of the tiny tokenizer
    cut = free[: free.find(stop)]
    assert greedy.invoke(PROMPTS[0], stop=[stop]) == cut
    assert "".join(greedy.stream(PROMPTS[0], stop=[stop])) == cut
    with_field = GGROLLM.from_decoder(llm.decoder, max_tokens=32, refinement_steps=1, stop=[stop])
    result = with_field.generate([PROMPTS[0]])
    assert result.generations[0][0].text == cut
    assert result.generations[0][0].generation_info["finish_reason"] == "stop_sequence"  # type: ignore[index]
    # With nudging, candidates that reach the stop end there and compete with the others: the text may take
    # another path, but never holds the stop, and streaming gives the same text.
    for text in (llm.invoke(p, stop=[stop, "a"]) for p in PROMPTS):
        assert stop not in text and "a" not in text
    assert "".join(llm.stream(PROMPTS[0], stop=[stop, "a"])) == llm.invoke(PROMPTS[0], stop=[stop, "a"])


def test_per_call_options_and_streaming_field(llm: GGROLLM) -> None:
    greedy = llm.decoder.generate(PROMPTS[0], max_new_tokens=12, refinement_steps=1)[0]
    assert llm.invoke(PROMPTS[0], max_tokens=12, refinement_steps=1) == greedy.text
    recorder = RunRecorder()
    streaming = GGROLLM.from_decoder(llm.decoder, max_tokens=32, refinement_steps=3, streaming=True)
    assert streaming.invoke(PROMPTS[1], config={"callbacks": [recorder]}) == llm.invoke(PROMPTS[1])
    recorder.assert_events_match_results(runs=1)
    (run_id,) = recorder.result_nudges
    assert len(recorder.tokens[run_id]) > 2  # tokens streamed to handlers, one per accepted segment


def test_collector_groups_by_run(llm: GGROLLM) -> None:
    seen: list[int] = []
    collector = GGRONudgeCollector(on_nudge=lambda run_id, data: seen.append(data["segment_index"]))
    llm.batch(PROMPTS[:2], config={"callbacks": [collector]})
    assert len(collector.by_run) == 2
    assert len(collector.events) == len(seen) == sum(len(v) for v in collector.by_run.values())
    collector.clear()
    assert collector.events == []


def test_loads_by_path_once_and_shares_weights() -> None:
    first = GGROLLM(**tiny_params(), max_tokens=16)
    second = GGROLLM(**tiny_params(), max_tokens=16, entropy_threshold=2.0)
    assert first._decoder is None  # constructing loads nothing
    assert first.invoke("Hi")
    assert second.decoder is first.decoder
    assert first.model_name == tiny_params()["model"]
    params = first._get_ls_params(stop=["x"])
    assert params["ls_provider"] == "ggro" and params["ls_model_type"] == "llm" and params["ls_max_tokens"] == 16
