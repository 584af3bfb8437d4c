"""Tool calling, structured output, token counting and truncation of `ChatGGRO`, on tiny random models.

The tiny policy writes noise, so what is checked is what the wrapper guarantees for any model: with a
`tool_choice` or a schema the output is a valid call or object (the grammar), whatever the model writes the
call never raises, messages round-trip, streamed chunks add up to the invoked message, token counts come from
the policy's tokenizer and template, and an agent loop that never ends stops at its recursion limit.
"""

from __future__ import annotations

import asyncio
import time
import warnings
from typing import Any

import pytest
from ggro import GGRODecoder
from ggro.testing import tiny_decoder
from langchain_core.exceptions import OutputParserException
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.tools import tool
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import BaseModel, Field
from typing_extensions import TypedDict

from langchain_ggro import ChatGGRO
from langchain_ggro.chat_models import to_chat_messages
from tests.recorder import RunRecorder

# One token per character: a call or a JSON object needs 50 to 80 tokens, and the grammar refuses a budget too
# small for its shortest output.
BUDGET = 96


@tool
def multiply(a: int, b: int) -> int:
    """Multiply two integers."""
    return a * b


@tool
def lookup(city: str) -> str:
    """Look up the weather in a city."""
    return f"It is sunny in {city}."


class Person(BaseModel):
    """A person."""

    name: str = Field(description="The person's name")
    age: int = Field(description="Age in years")
    nickname: str | None = Field(default=None, description="An optional nickname")


class PersonDict(TypedDict):
    """A person."""

    name: str
    age: int


PERSON_SCHEMA: dict[str, Any] = {
    "title": "Person",
    "description": "A person.",
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"],
}


@pytest.fixture(scope="module")
def decoder() -> GGRODecoder:
    return tiny_decoder()


@pytest.fixture
def chat(decoder: GGRODecoder) -> ChatGGRO:
    return ChatGGRO.from_decoder(decoder, max_tokens=BUDGET, refinement_steps=3)


def _summed(chunks: list[AIMessageChunk]) -> AIMessageChunk:
    full = chunks[0]
    for chunk in chunks[1:]:
        full = full + chunk
    return full


def _without_ids(calls: list[Any]) -> list[dict[str, Any]]:
    return [{k: v for k, v in dict(c).items() if k != "id"} for c in calls]


# ---------------------------------------------------------------------------------------------- bad input
def test_a_malformed_tool_schema_is_refused_at_bind_time_naming_it(chat: ChatGGRO) -> None:
    bad = {
        "type": "function",
        "function": {"name": "f", "parameters": {"type": "object", "properties": {"a": {"type": "strng"}}}},
    }
    with pytest.raises(ValueError, match=r"tools\[1\]\.function\.parameters\.properties\.a\.type"):
        chat.bind_tools([multiply, bad])
    with pytest.raises(ValueError, match=r"tools\[0\]\.function\.name"):
        chat.bind_tools([{"type": "function", "function": {"name": "bad name!", "parameters": {"type": "object"}}}])
    with pytest.raises(ValueError, match=r"tools\[0\]"):
        chat.bind_tools([42])  # type: ignore[list-item]


def test_an_unknown_tool_choice_is_refused_naming_it(chat: ChatGGRO) -> None:
    with pytest.raises(ValueError, match=r"tool_choice: no tool named 'divide'; the tools are multiply, lookup"):
        chat.bind_tools([multiply, lookup], tool_choice="divide")
    with pytest.raises(ValueError, match="tool_choice"):
        chat.bind_tools([multiply], tool_choice=3.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="tool_choice"):
        chat.invoke("Hi", tools=[multiply], tool_choice={"type": "function", "function": {"name": "divide"}})


def test_a_repeated_tool_name_is_refused_when_called(chat: ChatGGRO) -> None:
    bound = chat.bind_tools([Person, Person.model_json_schema()])  # binding the same schema twice is allowed...
    with pytest.raises(ValueError, match=r"tools\[1\]\.function\.name: duplicate tool name 'Person'"):
        bound.invoke("Hi")  # ...calling with it is not


def test_tools_and_a_response_format_together_are_refused(chat: ChatGGRO) -> None:
    with pytest.raises(ValueError, match="response_format"):
        chat.bind_tools([multiply]).invoke("Hi", response_format={"type": "json_object"})


def test_a_schema_the_engine_cannot_compile_is_refused_naming_it(chat: ChatGGRO) -> None:
    impossible = {"type": "object", "properties": {"a": {"type": "string", "pattern": "(?<=x)a"}}, "required": ["a"]}
    with pytest.raises(ValueError, match="response_format"):
        chat.with_structured_output(impossible, method="json_schema").invoke("Hi")


def test_unknown_structured_output_method_is_refused(chat: ChatGGRO) -> None:
    with pytest.raises(ValueError, match="method: expected"):
        chat.with_structured_output(Person, method="xml")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------- tool calls
@pytest.mark.parametrize(
    "tool_choice", ["any", "required", True, "multiply", {"type": "function", "function": {"name": "multiply"}}]
)
def test_a_forced_tool_call_is_always_valid(chat: ChatGGRO, tool_choice: Any) -> None:
    tools = [multiply] if tool_choice is True else [multiply, lookup]
    message = chat.bind_tools(tools, tool_choice=tool_choice).invoke("What is 17 times 23?")
    assert message.tool_calls and not message.invalid_tool_calls
    for call in message.tool_calls:
        assert call["type"] == "tool_call" and call["id"]
        if call["name"] == "multiply":
            assert set(call["args"]) == {"a", "b"} and all(type(v) is int for v in call["args"].values())
        else:
            assert call["name"] == "lookup" and isinstance(call["args"]["city"], str)
    if tool_choice not in ("any", "required"):
        assert {c["name"] for c in message.tool_calls} == {"multiply"}


def test_tool_choice_none_offers_no_tools(chat: ChatGGRO, decoder: GGRODecoder) -> None:
    message = chat.bind_tools([multiply], tool_choice="none").invoke("Hi", max_tokens=8)
    assert not message.tool_calls and not message.invalid_tool_calls
    assert message.usage_metadata is not None
    assert message.usage_metadata["input_tokens"] == chat.get_num_tokens_from_messages([HumanMessage("Hi")])


def test_whatever_the_model_writes_under_auto_is_text_or_invalid_calls_never_an_error(chat: ChatGGRO) -> None:
    auto = chat.bind_tools([multiply, lookup])
    text = auto.invoke("What is 17 times 23?")
    assert isinstance(text.content, str)
    assert text.content or text.tool_calls or text.invalid_tool_calls
    # A stop sequence cuts a call short: what remains is text or an invalid call, never an exception.
    for stop in ([":"], [","], ["}"]):
        for bound in (auto, chat.bind_tools([multiply], tool_choice="any")):
            message = bound.invoke("What is 17 times 23?", stop=stop)
            assert not message.tool_calls
            assert message.content or message.invalid_tool_calls
            streamed = _summed(list(bound.stream("What is 17 times 23?", stop=stop)))
            assert streamed.content == message.content


def test_a_custom_tool_call_parser_is_used(chat: ChatGGRO) -> None:
    from ggro.tools import ParsedResponse, ToolCall

    def parser(text: str) -> ParsedResponse:
        return ParsedResponse("", (ToolCall("lookup", {"city": text[:5]}, "call_custom"),))

    message = chat.bind_tools([lookup], tool_call_parser=parser).invoke("Weather?", max_tokens=8)
    assert message.tool_calls == [
        {"name": "lookup", "args": message.tool_calls[0]["args"], "id": "call_custom", "type": "tool_call"}
    ]


def test_streamed_chunks_add_up_to_the_invoked_message(chat: ChatGGRO) -> None:
    for bound in (chat.bind_tools([multiply, lookup], tool_choice="any"), chat.bind_tools([multiply])):
        invoked = bound.invoke("What is 17 times 23?")
        chunks = list(bound.stream("What is 17 times 23?"))

        async def collect(runnable: Any = bound) -> list[AIMessageChunk]:
            return [c async for c in runnable.astream("What is 17 times 23?")]

        for stream in (chunks, asyncio.run(collect())):
            assert stream[-1].chunk_position == "last"
            full = _summed(stream)
            assert full.content == invoked.content
            assert _without_ids(full.tool_calls) == _without_ids(invoked.tool_calls)
            assert full.invalid_tool_calls == invoked.invalid_tool_calls == []
            assert full.usage_metadata == invoked.usage_metadata


def test_tool_calls_keep_the_nudge_events(chat: ChatGGRO) -> None:
    recorder = RunRecorder()
    bound = chat.bind_tools([multiply, lookup], tool_choice="lookup")  # a free-text value: steered
    bound.invoke("What is 17 times 23?", config={"callbacks": [recorder]})
    list(bound.stream("What is 17 times 23?", config={"callbacks": [recorder]}))
    asyncio.run(bound.ainvoke("What is 17 times 23?", config={"callbacks": [recorder]}))
    recorder.assert_events_match_results(runs=3)
    nudges = bound.invoke("Weather in Oslo?").response_metadata["ggro_nudges"]
    assert nudges and {n["landed_in"] for n in nudges} == {"value"}


# ---------------------------------------------------------------------------------------------- messages
def test_tool_calls_and_results_round_trip_through_messages(chat: ChatGGRO, decoder: GGRODecoder) -> None:
    bound = chat.bind_tools([multiply], tool_choice="any")
    question = HumanMessage("What is 17 times 23?")
    called = bound.invoke([question])
    call = called.tool_calls[0]
    result = multiply.invoke(call)
    assert isinstance(result, ToolMessage) and result.tool_call_id == call["id"]
    history: list[BaseMessage] = [SystemMessage("Use the tools."), question, called, result]
    converted = to_chat_messages(history)
    assert converted[2] == {
        "role": "assistant",
        "content": called.content,
        "tool_calls": [
            {"id": call["id"], "type": "function", "function": {"name": "multiply", "arguments": call["args"]}}
        ],
    }
    assert converted[3] == {
        "role": "tool",
        "content": str(result.content),
        "tool_call_id": call["id"],
        "name": "multiply",
    }
    # The tiny template renders neither calls nor tool turns: the library writes them as text it can read.
    prompt = decoder.tokenizer.decode(decoder.encode_prompt(converted, tools=[]))
    assert '"name": "multiply"' in prompt and str(result.content) in prompt
    answer = bound.invoke(history)  # the next turn runs on that history
    assert answer.tool_calls


def test_message_forms_of_other_providers_are_kept(chat: ChatGGRO) -> None:
    anthropic = AIMessage(
        [
            {"type": "text", "text": "Let me compute."},
            {"type": "tool_use", "id": "t1", "name": "multiply", "input": {"a": 1, "b": 2}},
            {"type": "tool_use", "id": "t2", "name": "lookup", "input": {"city": "Oslo"}},
        ],
        tool_calls=[{"name": "multiply", "args": {"a": 1, "b": 2}, "id": "t1", "type": "tool_call"}],
    )
    converted = to_chat_messages([HumanMessage("Go"), anthropic, ToolMessage("2", tool_call_id="t1")])
    assert converted[1]["content"] == "Let me compute."
    assert [c["function"]["name"] for c in converted[1]["tool_calls"]] == ["multiply", "lookup"]
    assert converted[1]["tool_calls"][1]["function"]["arguments"] == {"city": "Oslo"}
    assert converted[2] == {"role": "tool", "content": "2", "tool_call_id": "t1"}
    invalid = AIMessage(
        "",
        invalid_tool_calls=[
            {"name": "multiply", "args": '{"a": 1,', "id": "x", "error": "bad", "type": "invalid_tool_call"}
        ],
    )
    assert (
        to_chat_messages([invalid])[0]["content"]
        == '<tool_call>\n{"name": "multiply", "arguments": {"a": 1,}\n</tool_call>'
    )
    error = ToolMessage("Error: missing b", tool_call_id="t1", status="error", name="multiply")
    assert to_chat_messages([error])[0]["content"] == "Error: missing b"
    assert chat.bind_tools([multiply, lookup]).invoke(
        [HumanMessage("Go"), anthropic, ToolMessage("2", tool_call_id="t1")], max_tokens=8
    )


# ---------------------------------------------------------------------------------------------- structured output
@pytest.mark.parametrize("method", ["function_calling", "json_schema"])
@pytest.mark.parametrize("schema", [Person, PersonDict, PERSON_SCHEMA], ids=["pydantic", "typeddict", "json_schema"])
def test_structured_output_always_validates(chat: ChatGGRO, schema: Any, method: str) -> None:
    structured = chat.with_structured_output(schema, method=method)  # type: ignore[arg-type]
    for result in (structured.invoke("Describe Ada."), list(structured.stream("Describe Ada."))[-1]):
        if schema is Person:
            assert isinstance(result, Person)
        else:
            assert isinstance(result, dict) and isinstance(result["name"], str) and type(result["age"]) is int


def test_structured_output_include_raw(chat: ChatGGRO) -> None:
    out = chat.with_structured_output(Person, include_raw=True).invoke("Describe Ada.")
    assert set(out) == {"raw", "parsed", "parsing_error"}
    assert isinstance(out["raw"], AIMessage) and out["raw"].tool_calls[0]["name"] == "Person"
    assert isinstance(out["parsed"], Person) and out["parsing_error"] is None


def test_json_mode_gives_a_json_object_and_a_parse_error_is_reported(chat: ChatGGRO) -> None:
    as_dict = chat.with_structured_output(None, method="json_mode").invoke("Describe Ada in JSON.")  # type: ignore[arg-type]
    assert isinstance(as_dict, dict)
    # The tiny model does not follow the prompt's keys: validation fails, reported or raised.
    out = chat.with_structured_output(Person, method="json_mode", include_raw=True).invoke("Describe Ada in JSON.")
    assert out["parsed"] is None and isinstance(out["parsing_error"], OutputParserException)
    with pytest.raises(OutputParserException):
        chat.with_structured_output(Person, method="json_mode").invoke("Describe Ada in JSON.")


# ---------------------------------------------------------------------------------------------- token counting
def test_token_counts_use_the_policys_tokenizer_and_template(chat: ChatGGRO, decoder: GGRODecoder) -> None:
    messages: list[BaseMessage] = [SystemMessage("Be brief."), HumanMessage("What is 17 times 23?")]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # LangChain's GPT-2 fallback warns (and downloads)
        assert chat.get_token_ids("héllo") == decoder.tokenizer.encode("héllo", add_special_tokens=False)
        assert chat.get_num_tokens("hello world") == 11  # one token per character
        counted = chat.get_num_tokens_from_messages(messages)
        with_tools = chat.get_num_tokens_from_messages(messages, tools=[multiply])
    conversation = to_chat_messages(messages)
    assert counted == len(decoder.encode_prompt(conversation))
    sent = convert_to_openai_tool(multiply)
    assert with_tools == len(decoder.encode_prompt(conversation, tools=[sent])) > counted
    assert chat.get_num_tokens_from_messages([]) == 0
    # What a call reports as its input is what was counted.
    usage = chat.bind_tools([multiply]).invoke(messages, max_tokens=4).usage_metadata
    assert usage is not None and usage["input_tokens"] == with_tools


def test_truncate_prompt_cuts_the_oldest_messages_and_keeps_the_system_one(decoder: GGRODecoder) -> None:
    window = decoder.context_window
    assert window is not None
    history: list[BaseMessage] = [SystemMessage("Be brief.")]
    for i in range(window // 400 + 2):
        history += [HumanMessage(f"Question {i}: " + "x" * 200), AIMessage(f"Answer {i}: " + "y" * 200)]
    history.append(HumanMessage("Last question?"))
    chat = ChatGGRO.from_decoder(decoder, max_tokens=4, refinement_steps=3)
    assert chat.get_num_tokens_from_messages(history) > window
    with pytest.raises(ValueError, match="context window"):
        chat.invoke(history)
    for model in (ChatGGRO.from_decoder(decoder, max_tokens=4, refinement_steps=3, truncate_prompt=True),
                  chat.bind(truncate_prompt=True)):  # fmt: skip
        message = model.invoke(history)
        assert message.usage_metadata is not None
        assert message.usage_metadata["input_tokens"] < window
    # The fewest oldest messages are dropped; the system message stays.
    fits = next(
        count
        for j in range(1, len(history))
        if (count := chat.get_num_tokens_from_messages(history[:1] + history[1 + j :])) < window
    )
    assert message.usage_metadata["input_tokens"] == fits


# ---------------------------------------------------------------------------------------------- agents
def test_a_react_agent_that_never_stops_calling_ends_at_its_recursion_limit(chat: ChatGGRO) -> None:
    from langgraph.errors import GraphRecursionError
    from langgraph.prebuilt import create_react_agent

    # With tool_choice forced, every model turn is a call: the loop can only end at the limit.
    model = chat.bind_tools([multiply, lookup], tool_choice="any")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # create_react_agent moved to langchain.agents
        agent = create_react_agent(model, [multiply, lookup])
    started = time.perf_counter()
    with pytest.raises(GraphRecursionError):
        agent.invoke({"messages": [("user", "What is 17 times 23?")]}, {"recursion_limit": 5})
    assert time.perf_counter() - started < 120
