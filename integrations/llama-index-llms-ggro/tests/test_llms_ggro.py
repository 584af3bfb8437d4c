"""`GGRO` as a LlamaIndex LLM, on tiny random models: every call path, stop sequences, usage, nudge events
and their span ids, bad input and failures."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from llama_index.core.base.llms.base import BaseLLM
from llama_index.core.base.llms.generic_utils import messages_to_prompt
from llama_index.core.base.llms.types import ImageBlock
from llama_index.core.bridge.pydantic import ValidationError
from llama_index.core.callbacks import CallbackManager, TokenCountingHandler
from llama_index.core.instrumentation.span import active_span_id
from llama_index.core.llms import ChatMessage, CustomLLM
from llama_index.llms.ggro import GGRO, GGRONudgeCollector, GGRONudgeEvent

from ggro import CallableReward, GGROConfig, GGRODecoder, RewardError
from ggro.testing import save_tiny_models, tiny_decoder, tiny_policy, tiny_reward, tiny_tokenizer
from tests.conftest import EventRecorder

OPTIONS: dict[str, Any] = {"max_new_tokens": 24, "refinement_steps": 3}
PROMPT = "Tell me about the sea."
MESSAGES = [
    ChatMessage(role="system", content="You are brief."),
    ChatMessage(role="user", content="Tell me about rivers."),
]
TURNS = [{"role": "system", "content": "You are brief."}, {"role": "user", "content": "Tell me about rivers."}]


@pytest.fixture(scope="module")
def decoder() -> GGRODecoder:
    return tiny_decoder()


@pytest.fixture
def llm(decoder: GGRODecoder) -> GGRO:
    return GGRO.from_decoder(decoder, **OPTIONS)


def core_result(llm: GGRO, prompt: Any, **overrides: Any) -> Any:
    """What the core decoder itself returns for this prompt and the LLM's configuration."""
    return llm.decoder.generate([prompt], config=llm.ggro_config(**overrides))[0]


def call_span(recorder: EventRecorder, start_event: str, method: str) -> str:
    """The span id of the one LLM call recorded (from its start event)."""
    starts = recorder.of(start_event)
    assert len(starts) == 1
    span_id = starts[0].span_id
    assert span_id is not None and span_id.startswith(f"GGRO.{method}-"), span_id
    return str(span_id)


def assert_events_are_nudges(collector: GGRONudgeCollector, raw: dict[str, Any], span_id: str) -> None:
    assert raw["nudges"], "the tiny models nudge: no nudge means this test checks nothing"
    assert [e.payload for e in collector.events] == raw["nudges"]
    assert {e.span_id for e in collector.events} == {span_id}
    assert len(raw["nudges"]) == raw["ggro"]["nudges_tried"]


# ---------------------------------------------------------------------------------------------- the class
def test_is_a_llama_index_llm() -> None:
    assert BaseLLM.__name__ in [b.__name__ for b in GGRO.__mro__]
    assert issubclass(GGRO, CustomLLM)
    assert GGRO.class_name() == "GGRO_LLM"


def test_every_ggro_config_field_is_a_described_field() -> None:
    for name, info in GGROConfig.model_fields.items():
        field = GGRO.model_fields[name]
        assert field.description == info.description and field.description
        assert field.get_default(call_default_factory=True) == info.get_default(call_default_factory=True)
    for name in ("model_id", "reward_model", "device", "dtype", "context_window", "is_chat_model"):
        assert GGRO.model_fields[name].description


def test_no_arguments_means_the_embedded_defaults_loaded_lazily() -> None:
    llm = GGRO()
    assert llm.model_id is None and llm.reward_model is None
    assert llm.model_name == "SmolLM2-135M-Instruct"
    assert llm._decoder is None  # nothing loads at construction
    assert llm.to_payload()["model_name"] == "SmolLM2-135M-Instruct"  # callbacks' payload does not load either
    assert llm._decoder is None


def test_construction_errors_name_the_field() -> None:
    with pytest.raises(ValidationError, match="refinement_steps"):
        GGRO(refinement_steps=0)
    with pytest.raises(ValidationError, match="stop_sequences"):
        GGRO(stop_sequences=[""])
    with pytest.raises(ValidationError, match="temperatur"):
        GGRO(temperatur=0.5)  # a typo is an error, not silently ignored


def test_models_by_path_load_once_and_are_shared(tmp_path: Any) -> None:
    policy_dir, reward_dir = save_tiny_models(tmp_path)
    a = GGRO(model_id=str(policy_dir), reward_model=str(reward_dir), **OPTIONS)
    b = GGRO(model_id=str(policy_dir), reward_model=str(reward_dir), max_new_tokens=8)
    assert a._decoder is None and b._decoder is None
    assert a.decoder is b.decoder
    metadata = a.metadata
    assert metadata.context_window == a.decoder.policy.config.max_position_embeddings
    assert metadata.num_output == OPTIONS["max_new_tokens"]
    assert metadata.is_chat_model is True
    assert metadata.model_name == str(policy_dir)
    assert b.metadata.num_output == 8
    assert a.complete(PROMPT).text == core_result(a, PROMPT).text
    # LlamaIndex serialisation: the fields round-trip, and the copy uses the same loaded models.
    copy = GGRO.from_dict(a.to_dict())
    assert copy.model_dump() == a.model_dump() and copy.decoder is a.decoder


def test_metadata_overrides_and_model_without_chat_template(decoder: GGRODecoder) -> None:
    llm = GGRO.from_decoder(decoder, context_window=512, is_chat_model=False)
    assert (llm.metadata.context_window, llm.metadata.is_chat_model) == (512, False)

    tokenizer = tiny_tokenizer()
    tokenizer.chat_template = None
    plain = GGRO.from_decoder(GGRODecoder(tiny_policy(tokenizer), tokenizer, tiny_reward(tokenizer)), **OPTIONS)
    assert plain.metadata.is_chat_model is False
    # Without a template, chat messages are rendered by LlamaIndex's generic messages_to_prompt.
    response = plain.chat(MESSAGES)
    expected = core_result(plain, messages_to_prompt(MESSAGES))
    assert response.message.content == expected.text
    assert response.raw["usage"]["prompt_tokens"] == expected.usage.prompt_tokens


# ---------------------------------------------------------------------------------------------- sync paths
def test_complete(llm: GGRO, collector: GGRONudgeCollector, recorder: EventRecorder) -> None:
    response = llm.complete(PROMPT)
    expected = core_result(llm, PROMPT)  # a string prompt is one user turn of the chat template
    assert response.text == expected.text and response.text
    assert response.raw["usage"] == {
        "prompt_tokens": expected.usage.prompt_tokens,
        "completion_tokens": expected.usage.completion_tokens,
        "total_tokens": expected.usage.total_tokens,
    }
    assert response.additional_kwargs["completion_tokens"] == expected.usage.completion_tokens
    assert response.additional_kwargs["finish_reason"] == expected.finish_reason == "length"
    summary = {k: v for k, v in expected.summary().items() if k != "seconds"}
    assert {k: v for k, v in response.raw["ggro"].items() if k != "seconds"} == summary
    assert response.raw["nudges"] == [n.model_dump(mode="json") for n in expected.nudges]
    assert_events_are_nudges(collector, response.raw, call_span(recorder, "LLMCompletionStartEvent", "complete"))
    assert all(isinstance(e, GGRONudgeEvent) and e.model_name == llm.model_name for e in collector.events)


def test_stream_complete(llm: GGRO, collector: GGRONudgeCollector, recorder: EventRecorder) -> None:
    chunks = []
    for chunk in llm.stream_complete(PROMPT):
        chunks.append(chunk)
        # Nudge events arrive as decoding goes, not at the end: by each chunk, those of the chunks so far.
        assert len(collector.events) == sum(len(c.additional_kwargs.get("ggro_nudges", [])) for c in chunks)
    expected = core_result(llm, PROMPT)
    assert len(chunks) > 1
    assert "".join(c.delta or "" for c in chunks) == expected.text == chunks[-1].text
    cumulative = ""
    for chunk in chunks:
        cumulative += chunk.delta or ""
        assert chunk.text == cumulative
    assert all(c.raw is None for c in chunks[:-1])
    assert chunks[-1].raw["usage"]["completion_tokens"] == expected.usage.completion_tokens
    assert chunks[-1].additional_kwargs["total_tokens"] == expected.usage.total_tokens
    span_id = call_span(recorder, "LLMCompletionStartEvent", "stream_complete")
    assert_events_are_nudges(collector, chunks[-1].raw, span_id)
    # Each chunk carries the nudges that arrived with it.
    assert [n for c in chunks for n in c.additional_kwargs.get("ggro_nudges", [])] == chunks[-1].raw["nudges"]
    assert active_span_id.get() is None  # the generator left no span behind


def test_chat(llm: GGRO, collector: GGRONudgeCollector, recorder: EventRecorder) -> None:
    response = llm.chat(MESSAGES)
    expected = core_result(llm, TURNS)
    assert response.message.role == "assistant"
    assert response.message.content == expected.text and expected.text
    assert response.raw["usage"]["prompt_tokens"] == expected.usage.prompt_tokens
    assert_events_are_nudges(collector, response.raw, call_span(recorder, "LLMChatStartEvent", "chat"))


def test_stream_chat(llm: GGRO, collector: GGRONudgeCollector, recorder: EventRecorder) -> None:
    chunks = list(llm.stream_chat(MESSAGES))
    expected = core_result(llm, TURNS)
    assert "".join(c.delta or "" for c in chunks) == expected.text == chunks[-1].message.content
    assert all(c.message.content == "".join(x.delta or "" for x in chunks[: i + 1]) for i, c in enumerate(chunks))
    assert_events_are_nudges(collector, chunks[-1].raw, call_span(recorder, "LLMChatStartEvent", "stream_chat"))


def test_system_prompt_and_custom_prompt_functions(decoder: GGRODecoder) -> None:
    with_system = GGRO.from_decoder(decoder, system_prompt="You are brief.", **OPTIONS)
    assert with_system.complete("Tell me about rivers.").text == core_result(with_system, TURNS).text

    # A completion_to_prompt of one's own replaces the chat template: its text is decoded as it is.
    custom = GGRO.from_decoder(decoder, completion_to_prompt=lambda p: f"Q: {p}\nA:", **OPTIONS)
    response = custom.complete(PROMPT)
    expected = custom.decoder.generate([f"Q: {PROMPT}\nA:"], config=custom.ggro_config(), chat_template=False)[0]
    assert response.text == expected.text
    assert response.raw["usage"]["prompt_tokens"] == expected.usage.prompt_tokens


def test_per_call_options(llm: GGRO, collector: GGRONudgeCollector) -> None:
    greedy = llm.complete(PROMPT, refinement_steps=1, max_tokens=10)  # max_tokens: alias of max_new_tokens
    assert greedy.raw["usage"]["completion_tokens"] == 10
    assert greedy.raw["nudges"] == [] and collector.events == []
    assert greedy.text == core_result(llm, PROMPT, refinement_steps=1, max_new_tokens=10).text
    assert llm.refinement_steps == OPTIONS["refinement_steps"]  # per-call options do not stick


def test_token_counting_handler_reads_the_real_usage(decoder: GGRODecoder) -> None:
    counter = TokenCountingHandler()
    llm = GGRO.from_decoder(decoder, callback_manager=CallbackManager([counter]), **OPTIONS)
    response = llm.complete(PROMPT)
    streamed = list(llm.stream_chat(MESSAGES))[-1]
    usage, streamed_usage = response.raw["usage"], streamed.raw["usage"]
    assert counter.prompt_llm_token_count == usage["prompt_tokens"] + streamed_usage["prompt_tokens"]
    assert counter.completion_llm_token_count == usage["completion_tokens"] + streamed_usage["completion_tokens"]


# ---------------------------------------------------------------------------------------------- stop sequences
def test_stop_sequences(llm: GGRO) -> None:
    # Greedy (one candidate per segment): the stopped answer is the free answer cut where the stop begins.
    greedy = {"refinement_steps": 1}
    free = llm.complete(PROMPT, **greedy).text
    stop = free[10:12]  # a string that the free answer contains
    cut = free[: free.index(stop)]
    response = llm.complete(PROMPT, stop=[stop], **greedy)
    assert response.text == cut
    assert response.raw["finish_reason"] == "stop_sequence"
    chunks = list(llm.stream_complete(PROMPT, stop=stop, **greedy))
    assert "".join(c.delta or "" for c in chunks) == cut == chunks[-1].text

    as_field = GGRO.from_decoder(llm.decoder, stop_sequences=[stop], **{**OPTIONS, **greedy})
    assert as_field.chat([ChatMessage(role="user", content=PROMPT)]).message.content == cut
    assert as_field.complete(PROMPT, stop=["\x7f"]).text == cut  # a call's stops add to the field's

    # With nudging, candidates that reach a stop end there and are scored so: the answer can differ from
    # the free one, but it never holds the stop, and every path agrees with the core decoder.
    stops = [free[4:6], free[12:14]]
    nudged = llm.complete(PROMPT, stop=stops)
    expected = core_result(llm, PROMPT, stop_sequences=stops)
    assert nudged.text == expected.text and not any(s in nudged.text for s in stops)
    assert nudged.raw["finish_reason"] == expected.finish_reason
    streamed = list(llm.stream_chat([ChatMessage(role="user", content=PROMPT)], stop=stops))
    assert "".join(c.delta or "" for c in streamed) == expected.text


# ---------------------------------------------------------------------------------------------- async paths
async def test_acomplete(llm: GGRO, collector: GGRONudgeCollector, recorder: EventRecorder) -> None:
    response = await llm.acomplete(PROMPT)
    assert response.text == core_result(llm, PROMPT).text
    assert_events_are_nudges(collector, response.raw, call_span(recorder, "LLMCompletionStartEvent", "acomplete"))


async def test_astream_complete(llm: GGRO, collector: GGRONudgeCollector, recorder: EventRecorder) -> None:
    chunks = [c async for c in await llm.astream_complete(PROMPT)]
    assert "".join(c.delta or "" for c in chunks) == core_result(llm, PROMPT).text == chunks[-1].text
    span_id = call_span(recorder, "LLMCompletionStartEvent", "astream_complete")
    assert_events_are_nudges(collector, chunks[-1].raw, span_id)


async def test_achat(llm: GGRO, collector: GGRONudgeCollector, recorder: EventRecorder) -> None:
    response = await llm.achat(MESSAGES)
    assert response.message.content == core_result(llm, TURNS).text
    assert_events_are_nudges(collector, response.raw, call_span(recorder, "LLMChatStartEvent", "achat"))


async def test_astream_chat(llm: GGRO, collector: GGRONudgeCollector, recorder: EventRecorder) -> None:
    chunks = [c async for c in await llm.astream_chat(MESSAGES)]
    assert "".join(c.delta or "" for c in chunks) == core_result(llm, TURNS).text == chunks[-1].message.content
    assert_events_are_nudges(collector, chunks[-1].raw, call_span(recorder, "LLMChatStartEvent", "astream_chat"))


async def test_async_calls_do_not_block_the_event_loop(llm: GGRO) -> None:
    ticks = 0
    running = True

    async def ticker() -> None:
        nonlocal ticks
        while running:
            ticks += 1
            await asyncio.sleep(0.002)

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    before = ticks
    await llm.acomplete(PROMPT, max_new_tokens=64)
    during_complete = ticks - before
    before = ticks
    async for _ in await llm.astream_chat(MESSAGES, max_new_tokens=64):
        pass
    during_stream = ticks - before
    running = False
    await task
    # A blocking call would let the ticker run about once; these take tens of milliseconds each.
    assert during_complete >= 5 and during_stream >= 5, (during_complete, during_stream)


async def test_concurrent_calls_keep_their_own_span_ids(llm: GGRO, collector: GGRONudgeCollector) -> None:
    completed, chatted = await asyncio.gather(llm.acomplete(PROMPT), llm.achat(MESSAGES))
    by_span = collector.by_span
    assert len(by_span) == 2
    for response, method in ((completed, "acomplete"), (chatted, "achat")):
        (span_id,) = [s for s in by_span if s and s.startswith(f"GGRO.{method}-")]
        assert [e.payload for e in by_span[span_id]] == response.raw["nudges"] != []


# ---------------------------------------------------------------------------------------------- bad input
BAD_CALLS: list[tuple[str, Any, dict[str, Any], type[Exception], str]] = [
    ("complete", "", {}, ValueError, "non-empty"),
    ("complete", "   \n", {}, ValueError, "non-empty"),
    ("complete", 123, {}, TypeError, "prompt must be a string"),
    ("complete", PROMPT, {"temperature": 0.7}, TypeError, "unknown option.*temperature.*allowed per call"),
    ("complete", PROMPT, {"max_new_tokens": 0}, ValueError, "max_new_tokens"),
    ("complete", PROMPT, {"stop": [""]}, ValueError, "stop_sequences"),
    ("stream_complete", "", {}, ValueError, "non-empty"),
    ("stream_complete", PROMPT, {"nudge_selection": "best"}, ValueError, "nudge_selection"),
    ("chat", [], {}, ValueError, "messages must not be empty"),
    ("chat", "hello", {}, ValueError, "messages"),  # rejected by LlamaIndex's own call wrapper
    ("stream_chat", ChatMessage(role="user", content="hi"), {}, ValueError, "messages"),
    ("chat", [{"role": "user", "content": "hi"}], {}, TypeError, r"messages\[0\] must be a ChatMessage"),
    ("chat", [ChatMessage(role="user", content=123)], {}, ValueError, "every message is empty"),
    ("chat", [ChatMessage(role="user", content=[ImageBlock(url="http://x/y.png")])], {}, TypeError, "text only"),
    ("stream_chat", [ChatMessage(role="user", content="  ")], {}, ValueError, "every message is empty"),
    ("stream_chat", MESSAGES, {"foo": 1}, TypeError, "unknown option"),
]


@pytest.mark.parametrize(("method", "arg", "kwargs", "error", "match"), BAD_CALLS)
def test_bad_input_is_a_clear_error_and_the_next_call_works(
    llm: GGRO,
    collector: GGRONudgeCollector,
    recorder: EventRecorder,
    method: str,
    arg: Any,
    kwargs: dict[str, Any],
    error: type[Exception],
    match: str,
) -> None:
    with pytest.raises(error, match=match):
        getattr(llm, method)(arg, **kwargs)  # streaming calls raise here, before any iteration
    assert active_span_id.get() is None
    recorder.clear()
    response = llm.complete(PROMPT)
    assert_events_are_nudges(collector, response.raw, call_span(recorder, "LLMCompletionStartEvent", "complete"))


@pytest.mark.parametrize("method", ["acomplete", "astream_complete", "achat", "astream_chat"])
async def test_bad_input_async(llm: GGRO, collector: GGRONudgeCollector, method: str) -> None:
    bad: Any = 42 if "complete" in method else [ChatMessage(role="user", content="")]
    with pytest.raises((TypeError, ValueError)):
        await getattr(llm, method)(bad)
    with pytest.raises(TypeError, match="unknown option"):
        await getattr(llm, method)(PROMPT if "complete" in method else MESSAGES, bogus=True)
    response = await llm.achat(MESSAGES)
    assert [e.payload for e in collector.events] == response.raw["nudges"] != []


# ---------------------------------------------------------------------------------------------- failures
class FlakyScorer:
    """A text reward that raises from its ``fail_at``-th call on (None: never)."""

    def __init__(self) -> None:
        self.calls = 0
        self.fail_at: int | None = None

    def __call__(self, prompts: list[str], responses: list[str]) -> list[float]:
        self.calls += 1
        if self.fail_at is not None and self.calls >= self.fail_at:
            raise ConnectionError("scorer offline")
        return [float(sum(map(ord, r)) % 17) for r in responses]


@pytest.fixture
def flaky() -> tuple[GGRO, FlakyScorer]:
    tokenizer = tiny_tokenizer()
    scorer = FlakyScorer()
    decoder = GGRODecoder(tiny_policy(tokenizer), tokenizer, CallableReward(scorer, name="flaky"))
    return GGRO.from_decoder(decoder, **OPTIONS), scorer


def _fail_soon(scorer: FlakyScorer) -> None:
    scorer.fail_at = scorer.calls + 4  # a few segments in


def _recover(scorer: FlakyScorer) -> None:
    scorer.fail_at = None


def test_reward_failure_mid_call(
    flaky: tuple[GGRO, FlakyScorer], collector: GGRONudgeCollector, recorder: EventRecorder
) -> None:
    llm, scorer = flaky
    _fail_soon(scorer)
    with pytest.raises(RewardError, match="scorer offline"):
        llm.complete(PROMPT)
    assert recorder.of("SpanDropEvent")  # the failed call's span was closed as failed

    _fail_soon(scorer)
    chunks = llm.stream_complete(PROMPT)
    with pytest.raises(RewardError, match="scorer offline"):
        for _ in chunks:
            pass
    assert recorder.of("ExceptionEvent")
    assert active_span_id.get() is None

    _recover(scorer)
    collector.clear()
    recorder.clear()
    response = llm.complete(PROMPT)
    assert_events_are_nudges(collector, response.raw, call_span(recorder, "LLMCompletionStartEvent", "complete"))
    collector.clear()
    recorder.clear()
    chunks_after = list(llm.stream_chat(MESSAGES))
    span_id = call_span(recorder, "LLMChatStartEvent", "stream_chat")
    assert_events_are_nudges(collector, chunks_after[-1].raw, span_id)


async def test_reward_failure_mid_async_call(flaky: tuple[GGRO, FlakyScorer], collector: GGRONudgeCollector) -> None:
    llm, scorer = flaky
    _fail_soon(scorer)
    with pytest.raises(RewardError, match="scorer offline"):
        await llm.achat(MESSAGES)
    _fail_soon(scorer)
    with pytest.raises(RewardError, match="scorer offline"):
        async for _ in await llm.astream_complete(PROMPT):
            pass
    _recover(scorer)
    collector.clear()
    response = await llm.acomplete(PROMPT)
    assert [e.payload for e in collector.events] == response.raw["nudges"] != []
    assert len(collector.by_span) == 1


def test_stream_left_early_then_the_next_call(
    llm: GGRO, collector: GGRONudgeCollector, recorder: EventRecorder
) -> None:
    stream = llm.stream_complete(PROMPT)
    first = next(stream)
    assert first.delta
    stream.close()
    collector.clear()
    recorder.clear()
    response = llm.complete(PROMPT)
    assert_events_are_nudges(collector, response.raw, call_span(recorder, "LLMCompletionStartEvent", "complete"))


async def test_async_stream_left_early_then_the_next_call(llm: GGRO, collector: GGRONudgeCollector) -> None:
    stream = await llm.astream_chat(MESSAGES)
    async for _ in stream:
        break
    await stream.aclose()
    collector.clear()
    response = await llm.achat(MESSAGES)
    assert [e.payload for e in collector.events] == response.raw["nudges"] != []


def test_collector_calls_on_nudge_and_a_failing_handler_breaks_nothing(
    llm: GGRO, collector: GGRONudgeCollector
) -> None:
    from llama_index.core.instrumentation import get_dispatcher

    seen: list[GGRONudgeEvent] = []

    def boom(event: GGRONudgeEvent) -> None:
        seen.append(event)
        raise RuntimeError("handler bug")

    broken = GGRONudgeCollector(on_nudge=boom)
    root = get_dispatcher()
    root.add_event_handler(broken)
    try:
        response = llm.complete(PROMPT)
    finally:
        root.event_handlers.remove(broken)
    assert [e.payload for e in seen] == response.raw["nudges"] == [e.payload for e in collector.events] != []
