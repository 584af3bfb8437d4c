"""`GGRO` as a LlamaIndex `FunctionCallingLLM`, on tiny random models: tool calls made valid by the grammar,
`FunctionAgent` runs (the tool's result goes back; a loop that never ends stops at the framework's limit),
structured output into pydantic classes, messages with tool calls and tool results, bad tools, token counting
and prompt truncation."""

from __future__ import annotations

import enum
import json
import time
from typing import Any

import pytest
import torch
from llama_index.core.agent.workflow import FunctionAgent
from llama_index.core.base.llms.types import ChatMessage, MessageRole, TextBlock, ToolCallBlock
from llama_index.core.bridge.pydantic import BaseModel, Field
from llama_index.core.llms import CustomLLM
from llama_index.core.llms.function_calling import FunctionCallingLLM
from llama_index.core.prompts import PromptTemplate
from llama_index.core.tools import FunctionTool, ToolMetadata
from llama_index.core.tools.types import BaseTool, ToolOutput
from llama_index.core.workflow.errors import WorkflowRuntimeError
from llama_index.llms.ggro import GGRO, GGRONudgeCollector
from transformers import PreTrainedTokenizerBase

from ggro import GGRODecoder
from ggro.testing import HERMES_CHAT_TEMPLATE, tiny_decoder, tiny_policy, tiny_reward, tiny_tokenizer
from ggro.tools import ParsedResponse, parse_tool_calls
from tests.conftest import EventRecorder

HERMES_TEMPLATE = HERMES_CHAT_TEMPLATE  # modelled on Qwen2.5's hermes template (ggro.testing)

# Room for a call on the one-character-per-token tiny tokenizer (the shortest multiply call is ~70 tokens).
OPTIONS: dict[str, Any] = {"max_new_tokens": 112, "refinement_steps": 2}
QUESTION = "What is 17 times 23? Use the multiply tool."


def tool_tokenizer() -> PreTrainedTokenizerBase:
    tokenizer = tiny_tokenizer()
    tokenizer.chat_template = HERMES_TEMPLATE
    return tokenizer


@pytest.fixture(scope="module")
def decoder() -> GGRODecoder:
    tokenizer = tool_tokenizer()
    return GGRODecoder(tiny_policy(tokenizer), tokenizer, tiny_reward(tokenizer))


@pytest.fixture
def llm(decoder: GGRODecoder) -> GGRO:
    return GGRO.from_decoder(decoder, **OPTIONS)


def multiply_tool(calls: list[dict[str, int]] | None = None) -> FunctionTool:
    def multiply(a: int, b: int) -> int:
        """Multiply two integers."""
        if calls is not None:
            calls.append({"a": a, "b": b})
        return a * b

    return FunctionTool.from_defaults(multiply)


def prompt_of(response: Any) -> str:
    """The prompt the model read for a response, as text."""
    result = response.raw["result"]
    return str(tool_tokenizer().decode(result.prompt_token_ids))


# ---------------------------------------------------------------------------------------------- the class
def test_is_a_function_calling_llm_when_the_template_takes_tools(decoder: GGRODecoder) -> None:
    assert issubclass(GGRO, FunctionCallingLLM) and issubclass(GGRO, CustomLLM)
    assert GGRO.from_decoder(decoder).metadata.is_function_calling_model is True
    assert GGRO.from_decoder(tiny_decoder()).metadata.is_function_calling_model is False  # plain ChatML
    # Without a template that takes tools, they go in through a system prompt (and the grammar still holds).
    fallback = GGRO.from_decoder(tiny_decoder(), is_function_calling_model=True, **OPTIONS)
    assert fallback.metadata.is_function_calling_model
    response = fallback.chat_with_tools([multiply_tool()], user_msg=QUESTION, tool_required=True)
    assert prompt_of(response).startswith("<|im_start|>system\n# Tools\n\nYou can call functions")
    assert [s.tool_name for s in fallback.get_tool_calls_from_response(response)] == ["multiply"]
    for name in ("is_function_calling_model", "tool_call_parser", "truncate_prompt"):
        assert GGRO.model_fields[name].description


def test_tool_call_parser_field(decoder: GGRODecoder) -> None:
    assert GGRO.from_decoder(decoder).tool_call_parser == "hermes"
    with pytest.raises(ValueError, match="tool_call_parser"):
        GGRO.from_decoder(decoder, tool_call_parser="xml")

    llama3 = GGRO.from_decoder(decoder, tool_call_parser="llama3_json", **OPTIONS)
    response = llama3.chat_with_tools([multiply_tool()], user_msg=QUESTION, tool_required=True)
    assert response.raw["result"].text.startswith('{"name":"multiply","parameters":{')  # Llama 3's format
    assert [s.tool_name for s in llama3.get_tool_calls_from_response(response)] == ["multiply"]

    seen: list[str] = []

    def parser(text: str) -> ParsedResponse:  # a parser of one's own (the grammar is hermes')
        seen.append(text)
        return parse_tool_calls(text, "hermes")

    custom = GGRO.from_decoder(decoder, tool_call_parser=parser, **OPTIONS)
    response = custom.chat_with_tools([multiply_tool()], user_msg=QUESTION, tool_required=True)
    assert seen == [response.raw["result"].text]
    assert [s.tool_name for s in custom.get_tool_calls_from_response(response)] == ["multiply"]
    assert json.loads(custom.model_dump_json())["tool_call_parser"].endswith("parser")  # serialisable by name


# ---------------------------------------------------------------------------------------------- tool calls
def test_chat_with_tools_forced_call_is_valid(
    llm: GGRO, collector: GGRONudgeCollector, recorder: EventRecorder
) -> None:
    tool = multiply_tool()
    response = llm.chat_with_tools([tool], user_msg=QUESTION, tool_required=True)
    (selection,) = llm.get_tool_calls_from_response(response)
    assert selection.tool_name == "multiply"
    # Exactly the function's arguments (a LlamaIndex tool's schema is closed), of the right types.
    assert set(selection.tool_kwargs) == {"a", "b"} and all(type(v) is int for v in selection.tool_kwargs.values())
    assert selection.tool_id.startswith("call_")
    (block,) = [b for b in response.message.blocks if isinstance(b, ToolCallBlock)]
    assert (block.tool_call_id, block.tool_name, block.tool_kwargs) == (
        selection.tool_id,
        "multiply",
        selection.tool_kwargs,
    )
    (legacy,) = response.message.additional_kwargs["tool_calls"]  # as LlamaIndex's OpenAI LLM carries them
    assert legacy["function"]["name"] == "multiply"
    assert json.loads(legacy["function"]["arguments"]) == selection.tool_kwargs
    assert "<tools>" in prompt_of(response) and '"name": "multiply"' in prompt_of(response)  # the template's tools
    assert tool.call(**selection.tool_kwargs).raw_output == selection.tool_kwargs["a"] * selection.tool_kwargs["b"]
    # Nudge events still belong to the call's span.
    (start,) = recorder.of("LLMChatStartEvent")
    assert [e.payload for e in collector.by_span.get(start.span_id, [])] == response.raw["nudges"]

    named = llm.chat_with_tools([tool], user_msg=QUESTION, tool_choice="multiply")
    assert [s.tool_name for s in llm.get_tool_calls_from_response(named)] == ["multiply"]
    # predict_and_call: the call, then the tool's output as the answer.
    answered = llm.predict_and_call([tool], user_msg=QUESTION, tool_required=True)
    (source,) = answered.sources
    assert source.tool_name == "multiply" and answered.response == str(source.raw_output)


async def test_streamed_tool_call_matches_the_whole_one(llm: GGRO) -> None:
    tool = multiply_tool()
    whole = await llm.achat_with_tools([tool], user_msg=QUESTION, tool_required=True)
    chunks = [c async for c in await llm.astream_chat_with_tools([tool], user_msg=QUESTION, tool_required=True)]
    final = llm.get_tool_calls_from_response(chunks[-1])
    expected = llm.get_tool_calls_from_response(whole)
    assert [(s.tool_name, s.tool_kwargs) for s in final] == [(s.tool_name, s.tool_kwargs) for s in expected]
    # Calls in progress stream as ToolCallBlocks with the arguments so far, under the call's one id.
    in_progress = [llm.get_tool_calls_from_response(c, error_on_no_tool_call=False) for c in chunks[:-1]]
    assert {s.tool_id for calls in in_progress for s in calls} <= {final[0].tool_id}
    assert chunks[-1].raw["usage"]["completion_tokens"] > 0
    sync_chunks = list(llm.stream_chat_with_tools([tool], user_msg=QUESTION, tool_required=True))
    sync_final = llm.get_tool_calls_from_response(sync_chunks[-1])
    assert [(s.tool_name, s.tool_kwargs) for s in sync_final] == [(s.tool_name, s.tool_kwargs) for s in expected]


def test_no_tool_call_is_text_and_error_on_no_tool_call(llm: GGRO) -> None:
    response = llm.chat_with_tools([multiply_tool()], user_msg=QUESTION, tool_choice="none", max_new_tokens=12)
    assert response.message.content and not response.message.additional_kwargs.get("tool_calls")
    assert llm.get_tool_calls_from_response(response, error_on_no_tool_call=False) == []
    with pytest.raises(ValueError, match="Expected at least one tool call"):
        llm.get_tool_calls_from_response(response)


def test_parallel_calls_are_cut_to_one_unless_allowed(llm: GGRO) -> None:
    message = ChatMessage(
        role="assistant",
        blocks=[
            ToolCallBlock(tool_call_id="call_1", tool_name="multiply", tool_kwargs={"a": 1, "b": 2}),
            ToolCallBlock(tool_call_id="call_2", tool_name="multiply", tool_kwargs={"a": 3, "b": 4}),
        ],
    )
    from llama_index.core.base.llms.types import ChatResponse

    response = ChatResponse(message=message.model_copy(deep=True))
    kept = llm._validate_chat_with_tools_response(response, [], allow_parallel_tool_calls=True)
    assert [s.tool_id for s in llm.get_tool_calls_from_response(kept)] == ["call_1", "call_2"]
    cut = llm._validate_chat_with_tools_response(response, [], allow_parallel_tool_calls=False)
    assert [s.tool_id for s in llm.get_tool_calls_from_response(cut)] == ["call_1"]


def keen_to_call(decoder: GGRODecoder) -> GGRODecoder:
    """A policy that opens every answer with '<' (so, under tool_choice='auto', a <tool_call> block)."""
    tokenizer = decoder.tokenizer
    policy = tiny_policy(tokenizer)
    bias = torch.zeros(len(tokenizer))
    bias[tokenizer.convert_tokens_to_ids("<")] = 50.0
    policy.lm_head.register_forward_hook(lambda module, args, output: output + bias)
    return GGRODecoder(policy, tokenizer, decoder.reward)


def test_malformed_call_under_auto_is_text_not_an_exception(decoder: GGRODecoder) -> None:
    # Greedy: with steering, a nudge at the first token may turn the call's "<" into text.
    llm = GGRO.from_decoder(keen_to_call(decoder), **{**OPTIONS, "refinement_steps": 1})
    tool = multiply_tool()
    # The model starts a call (the grammar makes it a well-formed one) and a stop sequence cuts it short.
    response = llm.chat_with_tools([tool], user_msg=QUESTION, stop=['"arguments"'])
    text = response.raw["result"].text
    assert text.startswith('<tool_call>\n{"name":"multiply",') and response.raw["finish_reason"] == "stop_sequence"
    assert response.message.content == text  # what the model wrote, as text
    assert llm.get_tool_calls_from_response(response, error_on_no_tool_call=False) == []
    (invalid,) = response.additional_kwargs["invalid_tool_calls"]
    assert invalid["name"] == "multiply" and "malformed" in invalid["error"]
    streamed = list(llm.stream_chat_with_tools([tool], user_msg=QUESTION, stop=['"arguments"']))
    assert streamed[-1].message.content == text
    assert llm.get_tool_calls_from_response(streamed[-1], error_on_no_tool_call=False) == []

    # Without a cut, the same policy's call is valid.
    whole = llm.chat_with_tools([tool], user_msg=QUESTION)
    assert [s.tool_name for s in llm.get_tool_calls_from_response(whole)] == ["multiply"]


# ---------------------------------------------------------------------------------------------- bad tools
class _BadMetadata(ToolMetadata):
    def get_parameters_dict(self) -> dict[str, Any]:
        return {"type": "object", "properties": {"x": {"type": "integr"}}}


class _BadTool(BaseTool):
    @property
    def metadata(self) -> ToolMetadata:
        return _BadMetadata(description="A tool with a broken schema.", name="broken_tool")

    def __call__(self, input: Any) -> ToolOutput:  # pragma: no cover - never called
        raise AssertionError


def test_bad_tool_schema_is_a_clear_error_naming_it(llm: GGRO) -> None:
    with pytest.raises(ValueError, match=r"tools\[1\] \('broken_tool'\)\.function\.parameters\.properties\.x\.type"):
        llm.chat_with_tools([multiply_tool(), _BadTool()], user_msg=QUESTION)
    with pytest.raises(ValueError, match="tool_choice: no tool named 'divide'"):
        llm.chat_with_tools([multiply_tool()], user_msg=QUESTION, tool_choice="divide")
    with pytest.raises(TypeError, match=r"tools\[0\]: expected a LlamaIndex BaseTool"):
        llm.chat([ChatMessage(role="user", content=QUESTION)], tools=[42])
    response = llm.chat_with_tools([multiply_tool()], user_msg=QUESTION, tool_required=True)  # the next call works
    assert llm.get_tool_calls_from_response(response)


# ---------------------------------------------------------------------------------------------- FunctionAgent
@pytest.mark.parametrize("streaming", [False, True])
async def test_function_agent_calls_the_tool_and_gets_its_result_back(
    llm: GGRO, recorder: EventRecorder, collector: GGRONudgeCollector, streaming: bool
) -> None:
    calls: list[dict[str, int]] = []
    agent = FunctionAgent(tools=[multiply_tool(calls)], llm=llm, initial_tool_choice="multiply", streaming=streaming)
    started = time.monotonic()
    output = await agent.run(user_msg=QUESTION, max_iterations=6)
    assert time.monotonic() - started < 240

    # The first turn was a call of the tool (the grammar makes it valid), and the tool ran with its arguments.
    assert calls and all(set(c) == {"a", "b"} for c in calls)
    (first_call, *_) = output.tool_calls
    assert first_call.tool_name == "multiply" and first_call.tool_kwargs == calls[0]
    assert first_call.tool_output.raw_output == calls[0]["a"] * calls[0]["b"]
    # The next LLM call read the assistant's call and the tool's result, through the chat template.
    ends = recorder.of("LLMChatEndEvent")
    assert len(ends) == len(calls) + 1
    second = recorder.of("LLMChatStartEvent")[1]
    roles = [m.role for m in second.messages]
    assert roles[-2:] == [MessageRole.ASSISTANT, MessageRole.TOOL]
    assert second.messages[-1].additional_kwargs["tool_call_id"] == first_call.tool_id
    prompt = prompt_of(ends[1].response)
    result = calls[0]["a"] * calls[0]["b"]
    shown = ", ".join(f"{k}={v!r}" for k, v in calls[0].items())  # describe_tool_results (the default)
    assert f"<tool_response>\nmultiply({shown}) returned {result}\n</tool_response>" in prompt
    assert '<tool_call>\n{"name": "multiply", "arguments": ' + json.dumps(calls[0]) in prompt
    # The run ended with the model's text answer; every call's nudges are its own.
    assert not output.tool_calls[len(calls) :] and output.response.content
    for start, end in zip(recorder.of("LLMChatStartEvent"), ends, strict=True):
        assert [e.payload for e in collector.by_span.get(start.span_id, [])] == end.response.raw["nudges"]


class AlwaysCallingAgent(FunctionAgent):
    """A FunctionAgent whose model must call a tool at every turn: a loop that never ends by itself."""

    async def _get_response(self, current_llm_input: list[ChatMessage], tools: Any) -> Any:
        return await self.llm.achat_with_tools(chat_history=current_llm_input, tools=tools, tool_required=True)  # type: ignore[attr-defined]


async def test_a_loop_that_never_ends_stops_at_max_iterations(llm: GGRO, recorder: EventRecorder) -> None:
    calls: list[dict[str, int]] = []
    agent = AlwaysCallingAgent(tools=[multiply_tool(calls)], llm=llm, streaming=False)
    started = time.monotonic()
    with pytest.raises(WorkflowRuntimeError, match="Max iterations of 3 reached"):
        await agent.run(user_msg=QUESTION, max_iterations=3)
    assert time.monotonic() - started < 240
    # Three model turns, each a call; the limit is hit before the third call's tool runs.
    assert len(recorder.of("LLMChatEndEvent")) == 3 and len(calls) == 2


# ---------------------------------------------------------------------------------------------- messages
def test_tool_messages_round_trip_through_the_template(llm: GGRO) -> None:
    call = ToolCallBlock(tool_call_id="call_7", tool_name="multiply", tool_kwargs={"a": 17, "b": 23})
    legacy = {"id": "call_8", "type": "function", "function": {"name": "multiply", "arguments": '{"a": 2, "b": 3}'}}
    history = [
        ChatMessage(role="system", content="Be brief."),
        ChatMessage(role="user", content=QUESTION),
        ChatMessage(role="assistant", blocks=[call]),
        ChatMessage(role="tool", content="391", additional_kwargs={"tool_call_id": "call_7"}),
        ChatMessage(role="user", content="And 2 times 3?"),
        ChatMessage(role="assistant", content="", additional_kwargs={"tool_calls": [legacy]}),  # OpenAI-style
        ChatMessage(role="tool", blocks=[TextBlock(text="6")], additional_kwargs={"tool_call_id": "call_8"}),
    ]
    response = llm.chat(history, max_new_tokens=4, refinement_steps=1)
    prompt = prompt_of(response)
    assert prompt.startswith("<|im_start|>system\nBe brief.<|im_end|>")
    assert '<|im_start|>assistant\n<tool_call>\n{"name": "multiply", "arguments": {"a": 17, "b": 23}}' in prompt
    # Tool results are shown with the call they answer (describe_tool_results, the default).
    assert "<|im_start|>user\n<tool_response>\nmultiply(a=17, b=23) returned 391\n</tool_response><|im_end|>" in prompt
    assert '{"name": "multiply", "arguments": {"a": 2, "b": 3}}' in prompt
    assert prompt.endswith(
        "<tool_response>\nmultiply(a=2, b=3) returned 6\n</tool_response><|im_end|>\n<|im_start|>assistant\n"
    )

    # A response's message (a call) goes back in as the same call.
    answer = llm.chat_with_tools([multiply_tool()], user_msg=QUESTION, tool_required=True)
    (selection,) = llm.get_tool_calls_from_response(answer)
    again = llm.chat([*history[:2], answer.message], max_new_tokens=4, refinement_steps=1)
    arguments = json.dumps(selection.tool_kwargs)
    assert f'<tool_call>\n{{"name": "multiply", "arguments": {arguments}}}\n</tool_call>' in prompt_of(again)


def test_token_counting_uses_the_policy_tokenizer(llm: GGRO) -> None:
    history = [ChatMessage(role="system", content="Be brief."), ChatMessage(role="user", content=QUESTION)]
    tools = [multiply_tool()]
    assert llm.get_token_ids("abc") == [llm.decoder.tokenizer.convert_tokens_to_ids(c) for c in "abc"]
    assert llm.get_num_tokens(QUESTION) == len(QUESTION)  # one token per character
    counted = llm.get_num_tokens_from_messages(history, tools=tools)
    response = llm.chat_with_tools(tools, chat_history=history, tool_required=True)
    assert counted == response.raw["usage"]["prompt_tokens"]
    assert llm.get_num_tokens_from_messages(history) < counted  # the tools take room


def test_truncate_prompt_cuts_the_oldest_messages(decoder: GGRODecoder) -> None:
    old = [ChatMessage(role=r, content=f"old turn {i} " * 40) for i, r in enumerate(["user", "assistant"] * 3)]
    history = [ChatMessage(role="system", content="Be brief."), *old, ChatMessage(role="user", content=QUESTION)]
    plain = GGRO.from_decoder(decoder, max_new_tokens=4, refinement_steps=1)
    assert plain.get_num_tokens_from_messages(history) > 1000
    with pytest.raises(ValueError, match="context window of 4096"):
        plain.chat([*history, *old * 3])  # longer than the model's window: an error without truncation
    cut = GGRO.from_decoder(decoder, max_new_tokens=4, refinement_steps=1, truncate_prompt=True)
    response = cut.chat([*history, *old * 3])
    assert response.raw["usage"]["prompt_tokens"] < 4096
    small = GGRO.from_decoder(decoder, max_new_tokens=4, refinement_steps=1, truncate_prompt=True, context_window=400)
    response = small.chat(history)
    prompt = prompt_of(response)
    assert response.raw["usage"]["prompt_tokens"] < 400
    assert prompt.startswith("<|im_start|>system\nBe brief.") and QUESTION in prompt and "old turn 0" not in prompt


# ---------------------------------------------------------------------------------------------- structured
class Colour(str, enum.Enum):
    RED = "red"
    GREEN = "green"
    BLUE = "blue"


class Size(enum.IntEnum):
    SMALL = 1
    LARGE = 2


class Dimensions(BaseModel):
    width: int
    height: float | None = None


class Product(BaseModel):
    """A product."""

    colour: Colour
    in_stock: bool
    size: Size
    dimensions: Dimensions
    note: str | None = None


class Flags(BaseModel):
    enabled: bool
    mode: Colour | None = None
    tags: list[Colour] = Field(default_factory=list)


class Nested(BaseModel):
    inner: Flags
    items: list[Dimensions]
    label: str


class Listing(BaseModel):
    """A field named like a JSON Schema keyword."""

    properties: Dimensions
    count: int | None = None


STRUCTURED_OPTIONS: dict[str, Any] = {"max_new_tokens": 160, "refinement_steps": 2}
STRUCTURED_PROMPT = PromptTemplate("Describe a product for {topic}.")


@pytest.mark.parametrize("output_cls", [Product, Flags, Nested, Listing])
def test_structured_predict_always_validates(
    decoder: GGRODecoder, output_cls: type[BaseModel], recorder: EventRecorder
) -> None:
    llm = GGRO.from_decoder(decoder, **STRUCTURED_OPTIONS)
    output = llm.structured_predict(output_cls, STRUCTURED_PROMPT, topic="kites")
    assert isinstance(output, output_cls)
    (end,) = recorder.of("LLMChatEndEvent")
    text = end.response.message.content
    assert output_cls.model_validate_json(text) == output
    assert json.dumps(json.loads(text), separators=(",", ":"), ensure_ascii=False) == text  # compact JSON
    assert output.model_dump(mode="json", exclude_unset=True) == json.loads(text)  # no key beyond the fields
    (start,) = recorder.of("LLMChatStartEvent")
    assert "Here's a JSON schema to follow" in (start.messages[-1].content or "")  # the schema is in the prompt
    assert [e.output for e in recorder.of("LLMStructuredPredictEndEvent")] == [output]


async def test_structured_predict_async_streaming_and_as_structured_llm(decoder: GGRODecoder) -> None:
    llm = GGRO.from_decoder(decoder, **STRUCTURED_OPTIONS)
    output = await llm.astructured_predict(Flags, STRUCTURED_PROMPT, topic="kites")
    assert isinstance(output, Flags)
    partials = list(llm.stream_structured_predict(Flags, STRUCTURED_PROMPT, topic="kites"))
    assert partials and isinstance(partials[-1], Flags)
    apartials = [p async for p in await llm.astream_structured_predict(Flags, STRUCTURED_PROMPT, topic="kites")]
    assert isinstance(apartials[-1], Flags)
    structured = llm.as_structured_llm(Product)
    response = structured.chat([ChatMessage(role="user", content="Describe a product for kites.")])
    assert isinstance(response.raw, Product)
    assert Product.model_validate_json(response.message.content or "") == response.raw


def test_structured_predict_with_an_uncompilable_schema_names_it(decoder: GGRODecoder) -> None:
    class Odd(BaseModel):
        code: str

        @classmethod
        def model_json_schema(cls, *args: Any, **kwargs: Any) -> dict[str, Any]:
            return {"type": "object", "properties": {"code": {"type": "string", "pattern": "(unclosed"}}}

    llm = GGRO.from_decoder(decoder, **STRUCTURED_OPTIONS)
    with pytest.raises(ValueError, match=r"output_cls Odd: .*response_format.*properties/code/pattern"):
        llm.structured_predict(Odd, STRUCTURED_PROMPT, topic="kites")
