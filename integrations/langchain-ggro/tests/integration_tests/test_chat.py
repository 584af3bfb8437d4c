"""`ChatGGRO` on tiny models: chat template, every call path's `ggro_nudge` events, metadata, usage."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from ggro import GGRODecoder
from ggro.testing import tiny_decoder
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage, SystemMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate

from langchain_ggro import NUDGES_KEY, ChatGGRO
from tests.recorder import RunRecorder

CONVERSATION = [SystemMessage("Be brief."), HumanMessage("Hi"), AIMessage("Hello!"), HumanMessage("Why is it rainy?")]


@pytest.fixture(scope="module")
def decoder() -> GGRODecoder:
    return tiny_decoder()


@pytest.fixture
def chat(decoder: GGRODecoder) -> ChatGGRO:
    return ChatGGRO.from_decoder(decoder, max_tokens=32, refinement_steps=3)


def reference(decoder: GGRODecoder) -> Any:
    roles = ["system", "user", "assistant", "user"]
    conversation = [{"role": r, "content": str(m.content)} for r, m in zip(roles, CONVERSATION, strict=True)]
    return decoder.generate([conversation], max_new_tokens=32, refinement_steps=3)[0]


def test_invoke_renders_the_chat_template_and_reports_metadata(chat: ChatGGRO, decoder: GGRODecoder) -> None:
    expected = reference(decoder)
    recorder = RunRecorder()
    message = chat.invoke(CONVERSATION, config={"callbacks": [recorder]})
    assert message.content == expected.text
    assert message.usage_metadata == {
        "input_tokens": expected.usage.prompt_tokens,
        "output_tokens": expected.usage.completion_tokens,
        "total_tokens": expected.usage.total_tokens,
    }
    meta = message.response_metadata
    assert meta["model_name"] == "custom" and meta["model_provider"] == "ggro"
    assert meta["finish_reason"] == expected.finish_reason
    assert meta["ggro"]["nudges_tried"] == len(expected.nudges) == len(meta[NUDGES_KEY])
    assert recorder.assert_events_match_results(runs=1) == len(expected.nudges)


def test_stream_and_astream_deliver_nudges_without_a_run_manager(chat: ChatGGRO, decoder: GGRODecoder) -> None:
    expected = reference(decoder)
    recorder = RunRecorder()
    chunks = list(chat.stream(CONVERSATION, config={"callbacks": [recorder]}))

    async def collect() -> list[AIMessageChunk]:
        return [c async for c in chat.astream(CONVERSATION, config={"callbacks": [recorder]})]

    for stream in (chunks, asyncio.run(collect())):
        assert len(stream) > 2 and stream[-1].chunk_position == "last"
        full = stream[0]
        for chunk in stream[1:]:
            full = full + chunk
        assert full.content == expected.text
        assert full.usage_metadata is not None and full.usage_metadata["output_tokens"] == len(expected.token_ids)
        assert len(full.response_metadata[NUDGES_KEY]) == len(expected.nudges)
        assert full.response_metadata["model_name"] == "custom"
    recorder.assert_events_match_results(runs=2)


def test_invoke_with_streaming_and_async_invoke_batch(chat: ChatGGRO, decoder: GGRODecoder) -> None:
    expected = reference(decoder).text
    recorder = RunRecorder()
    streaming = ChatGGRO.from_decoder(decoder, max_tokens=32, refinement_steps=3, streaming=True)
    assert streaming.invoke(CONVERSATION, config={"callbacks": [recorder]}).content == expected

    async def run() -> list[Any]:
        one = await chat.ainvoke(CONVERSATION, config={"callbacks": [recorder]})
        streamed = await streaming.ainvoke(CONVERSATION, config={"callbacks": [recorder]})
        many = await chat.abatch([CONVERSATION, "Hi"], config={"callbacks": [recorder]})
        return [one, streamed, *many]

    messages = asyncio.run(run())
    assert [m.content for m in messages[:3]] == [expected] * 3
    assert [m.content for m in chat.batch([CONVERSATION, "Hi"], config={"callbacks": [recorder]})] == [
        m.content for m in messages[2:]
    ]
    recorder.assert_events_match_results(runs=1 + 1 + 1 + 2 + 2)


def test_astream_events_v2_on_the_model_and_in_a_chain(chat: ChatGGRO) -> None:
    prompt = ChatPromptTemplate.from_messages([("system", "Answer briefly."), ("human", "{q}")])
    chain = prompt | chat | StrOutputParser()

    async def run(runnable: Any, value: Any) -> list[dict[str, Any]]:
        return [e async for e in runnable.astream_events(value, version="v2")]

    for events in (asyncio.run(run(chat, CONVERSATION)), asyncio.run(run(chain, {"q": "Why is it rainy?"}))):
        nudges = [e for e in events if e["event"] == "on_custom_event" and e["name"] == "ggro_nudge"]
        (end,) = [e for e in events if e["event"] == "on_chat_model_end"]
        streamed = [e for e in events if e["event"] == "on_chat_model_stream"]
        output = end["data"]["output"]
        assert len(streamed) > 2
        assert [e["data"] for e in nudges] == output.response_metadata[NUDGES_KEY]
        assert len(nudges) > 0 and {e["run_id"] for e in nudges} == {end["run_id"]}


def test_stop_sequences(decoder: GGRODecoder) -> None:
    greedy = ChatGGRO.from_decoder(decoder, max_tokens=32, refinement_steps=1)
    free = str(greedy.invoke("Hi").content)
    stop = free[6:9]
    cut = free[: free.find(stop)]
    message = greedy.invoke("Hi", stop=[stop])
    assert message.content == cut and message.response_metadata["finish_reason"] == "stop_sequence"
    assert "".join(str(c.content) for c in greedy.stream("Hi", stop=[stop])) == cut


def test_text_blocks_are_accepted_and_other_content_is_refused(chat: ChatGGRO) -> None:
    blocks = HumanMessage(content=[{"type": "text", "text": "Why is it "}, {"type": "text", "text": "rainy?"}])
    assert chat.invoke([blocks]).content == chat.invoke("Why is it rainy?").content
    image = HumanMessage(content=[{"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}])
    with pytest.raises(TypeError, match="text content only"):
        chat.invoke([image])
