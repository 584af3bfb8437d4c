"""ggro.tools: tool definitions, tool-call parsing (hermes, Llama 3 JSON, custom) and streaming."""

from __future__ import annotations

import itertools
import json
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ggro.testing import MULTIPLY_TOOL
from ggro.tools import (
    InvalidToolCall,
    ParsedResponse,
    ToolCall,
    ToolCallChunk,
    ToolCallStream,
    check_json_schema,
    json_schema_error,
    normalize_tools,
    parse_tool_calls,
)

MULTIPLY = MULTIPLY_TOOL
LOOKUP = {
    "name": "lookup",
    "description": "Look a word up.",
    "parameters": {
        "type": "object",
        "properties": {"query": {"type": "string"}, "lang": {"enum": ["en", "fr"]}},
        "required": ["query"],
        "additionalProperties": False,
    },
}
TOOLS = [MULTIPLY, LOOKUP]


# ------------------------------------------------------------------------------------------- normalize_tools
def test_tools_are_normalised_to_the_openai_form() -> None:
    tools = normalize_tools([MULTIPLY, LOOKUP, {"name": "now"}])
    assert tools[0] == MULTIPLY
    assert tools[1] == {"type": "function", "function": LOOKUP}
    assert tools[2] == {
        "type": "function",
        "function": {"name": "now", "description": "", "parameters": {"type": "object", "properties": {}}},
    }
    assert normalize_tools(tools) == tools
    tools[0]["function"]["parameters"]["properties"]["a"]["type"] = "string"  # a deep copy
    assert MULTIPLY["function"]["parameters"]["properties"]["a"]["type"] == "integer"  # type: ignore[index]
    assert normalize_tools(None) == []


@pytest.mark.parametrize(
    ("tools", "message"),
    [
        ([{"name": "bad name"}], "tools[0].name: 'bad name' is not a valid tool name"),
        ([{"function": {"name": "x" * 65}}], "tools[0].function.name: 'xxxxx"),
        ([{"function": {"description": "d"}}], "tools[0].function.name: missing"),
        ([MULTIPLY, {"name": "multiply"}], "tools[1].name: duplicate tool name 'multiply' (also tools[0])"),
        ([{"type": "retrieval"}], "tools[0].type: only 'function' tools are supported, got 'retrieval'"),
        (["multiply"], "tools[0]: expected a dict"),
        ([{"function": "multiply"}], "tools[0].function: expected a dict"),
        ([{"name": "f", "description": 3}], "tools[0].description: expected a string, got int"),
        (
            [LOOKUP, {"function": {"name": "f", "parameters": {"type": "array"}}}],
            "tools[1].function.parameters: must be a JSON Schema of type 'object', got type 'array'",
        ),
        ([{"name": "f", "parameters": "{}"}], "tools[0].parameters: expected a JSON Schema (a dict)"),
        (
            [{"name": "f", "parameters": {"type": "object", "properties": {"a": {"type": "integr"}}}}],
            "tools[0].parameters.properties.a.type: 'integr' is not valid under any of the given schemas",
        ),
        (
            [{"name": "f", "parameters": {"type": "object", "required": "a"}}],
            "tools[0].parameters.required: 'a' is not of type 'array'",
        ),
        (
            [{"name": "f", "parameters": {"type": "object", "properties": {"a": {"$ref": "#/$defs/A"}}}}],
            "tools[0].parameters.properties.a.$ref: '#/$defs/A' does not point into this schema",
        ),
        (
            [{"name": "f", "parameters": {"type": "object", "properties": {"a": {"pattern": "("}}}}],
            "tools[0].parameters.properties.a.pattern: '(' is not a 'regex'",
        ),
        (
            [{"name": "f", "parameters": {"type": "object", "properties": {"a": {"prefixItems": [3]}}}}],
            "tools[0].parameters.properties.a.prefixItems[0]: 3 is not of type 'object', 'boolean'",
        ),
        (
            [{"name": "f", "parameters": {"type": "object", "properties": {"a": {"items": [3]}}}}],  # draft 2020-12
            "tools[0].parameters.properties.a.items: [3] is not of type 'object', 'boolean'",
        ),
        (
            [{"name": "f", "parameters": {"type": "object", "patternProperties": {"(": {}}}}],
            "tools[0].parameters.patternProperties: '(' is not a 'regex'",
        ),
        (
            [{"name": "f", "parameters": {"type": "object", "properties": {"a": {"minLength": -1}}}}],
            "tools[0].parameters.properties.a.minLength: -1 is less than the minimum of 0",
        ),
        ([{"name": "f", "parameters": {"type": "object", "default": {1, 2}}}], "tools[0].parameters: not JSON"),
    ],
)
def test_malformed_tools_are_refused_naming_the_field(tools: Any, message: str) -> None:
    with pytest.raises(ValueError) as raised:
        normalize_tools(tools)
    assert str(raised.value).startswith(message)


def test_tools_must_be_a_list() -> None:
    with pytest.raises(TypeError, match=r"tools: expected a list of tool definitions, got dict \(wrap one tool"):
        normalize_tools(MULTIPLY)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------- JSON Schema
@pytest.mark.parametrize(
    ("value", "error"),
    [
        ({"query": "cat"}, None),
        ({"query": "cat", "lang": "fr"}, None),
        ({}, "arguments: 'query' is a required property"),
        ({"query": 3}, "arguments.query: 3 is not of type 'string'"),
        ({"query": "cat", "lang": "de"}, "arguments.lang: 'de' is not one of ['en', 'fr']"),
        ({"query": "cat", "page": 2}, "arguments: Additional properties are not allowed ('page' was unexpected)"),
    ],
)
def test_arguments_are_checked_against_the_schema(value: dict[str, Any], error: str | None) -> None:
    assert json_schema_error(value, LOOKUP["parameters"], "arguments") == error


def test_schema_checks_cover_nesting_refs_and_combinators() -> None:
    schema = {
        "type": "object",
        "$defs": {"Point": {"type": "object", "properties": {"x": {"type": "number"}}, "required": ["x"]}},
        "properties": {
            "points": {"type": "array", "items": {"$ref": "#/$defs/Point"}, "minItems": 1},
            "flag": {"type": "boolean"},
            "n": {"anyOf": [{"type": "integer", "minimum": 0}, {"type": "null"}]},
        },
    }
    assert json_schema_error({"points": [{"x": 1.5}], "flag": True, "n": None}, schema) is None
    assert json_schema_error({"points": [{"x": 1}, {"y": 2}]}, schema) == "value.points[1]: 'x' is a required property"
    assert json_schema_error({"points": [{"x": "1"}]}, schema) == "value.points[0].x: '1' is not of type 'number'"
    assert json_schema_error({"points": []}, schema) == "value.points: [] should be non-empty"
    assert json_schema_error({"flag": 1}, schema) == "value.flag: 1 is not of type 'boolean'"
    assert json_schema_error({"n": True}, schema) == "value.n: True is not valid under any of the given schemas"
    assert json_schema_error({"n": -1}, schema) == "value.n: -1 is less than the minimum of 0"
    assert json_schema_error(2.0, {"type": "integer"}) is None
    assert json_schema_error(True, {"type": "integer"}) == "value: True is not of type 'integer'"


def test_schema_dialects_and_references() -> None:
    draft7 = {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "definitions": {"N": {"type": "integer"}},
        "properties": {"p": {"type": "array", "items": [{"$ref": "#/definitions/N"}]}},
    }
    check_json_schema(draft7)  # tuple "items" is valid in draft 7
    assert json_schema_error({"p": [1, "x"]}, draft7) is None
    assert json_schema_error({"p": ["x"]}, draft7) == "value.p[0]: 'x' is not of type 'integer'"
    check_json_schema(
        {"$defs": {"A": {"$id": "http://e.com/a", "$defs": {"B": {}}}}, "$ref": "http://e.com/a#/$defs/B"}
    )
    for ref in ("http://example.com/s.json", "#/definitions/A", "#nowhere", "#/properties/a/x"):
        with pytest.raises(ValueError, match=r"^schema\.properties\.a\.\$ref: .* does not point into this schema"):
            check_json_schema({"properties": {"a": {"$ref": ref}}})
    with pytest.raises(ValueError, match=r"^schema: a schema must be a dict or a boolean, got int"):
        check_json_schema(3)
    with pytest.raises(ValueError, match=r"^value: cannot be checked, the schema is not valid"):
        json_schema_error(1, {"$ref": "#/$defs/A"})


# ------------------------------------------------------------------------------------------- hermes
def test_hermes_blocks_and_the_text_around_them() -> None:
    text = (
        "Let me compute that.\n<tool_call>\n"
        '{"name": "multiply", "arguments": {"a": 17, "b": 23}}\n</tool_call>\n'
        '<tool_call>\n{"name": "lookup", "arguments": "{\\"query\\": \\"cat\\"}"}\n</tool_call>\n\nDone.'
    )
    parsed = parse_tool_calls(text, tools=TOOLS)
    assert parsed.content == "Let me compute that.\nDone."
    assert [(c.name, c.arguments) for c in parsed.tool_calls] == [
        ("multiply", {"a": 17, "b": 23}),
        ("lookup", {"query": "cat"}),
    ]
    assert parsed.invalid_tool_calls == ()
    ids = [c.id for c in parsed.tool_calls]
    assert all(re.fullmatch(r"call_[0-9a-f]{24}", i) for i in ids) and len(set(ids)) == 2


def test_what_small_models_write_bare_json_is_a_call() -> None:
    bare = '{"name": "multiply", "arguments": {"a": 17, "b": 23}}'
    for text in (bare, f"  {bare}\n", f"```json\n{bare}\n```", f"```\n{bare}\n```"):
        parsed = parse_tool_calls(text, tools=TOOLS)
        assert [(c.name, c.arguments) for c in parsed.tool_calls] == [("multiply", {"a": 17, "b": 23})], text
        assert parsed.content == ""
    two = parse_tool_calls(bare + '\n{"name": "lookup", "parameters": {"query": "cat"}}\nThe product is 391.')
    assert [c.name for c in two.tool_calls] == ["multiply", "lookup"]
    assert two.tool_calls[1].arguments == {"query": "cat"}
    assert two.content == "The product is 391."


@pytest.mark.parametrize(
    "text",
    [
        "The answer is 391.",
        '{"title": "A poem", "lines": 4}',
        '{"name": "Bob", "age": 42}',
        '{"name": "Bob"}',
        "  spaced out \n",
        "1 < 2 and <tool is not a tag",
        "",
    ],
)
def test_text_that_is_not_a_call_stays_text_exactly(text: str) -> None:
    assert parse_tool_calls(text, tools=TOOLS) == ParsedResponse(text)
    assert parse_tool_calls(text, "llama3_json", tools=TOOLS) == ParsedResponse(text)


def test_a_known_tool_without_arguments_is_a_call_only_with_tools() -> None:
    tools = [{"name": "now"}]
    assert parse_tool_calls('{"name": "now"}', tools=tools).tool_calls[0].arguments == {}
    assert parse_tool_calls('{"name": "now"}').content == '{"name": "now"}'


@pytest.mark.parametrize(
    ("text", "name", "arguments", "error"),
    [
        (
            '<tool_call>{"name": "divide", "arguments": {"a": 1}}</tool_call>',
            "divide",
            '{"a": 1}',
            "unknown tool 'divide' (the tools are 'multiply', 'lookup')",
        ),
        (
            '<tool_call>{"name": "multiply", "arguments": {"a": 17, "b": "x"}}</tool_call>',
            "multiply",
            '{"a": 17, "b": "x"}',
            "tool 'multiply': arguments.b: 'x' is not of type 'integer'",
        ),
        (
            '{"name": "multiply", "arguments": {"a": 17}}',
            "multiply",
            '{"a": 17}',
            "tool 'multiply': arguments: 'b' is a required property",
        ),
        (
            '<tool_call>\n{"name": "multiply", "arguments": {"a": 17, "b": 2\n</tool_call>',
            "multiply",
            '{"name": "multiply", "arguments": {"a": 17, "b": 2',
            "malformed JSON: Expecting ',' delimiter (at character 50)",
        ),
        (
            '<tool_call>\n{"name": "multiply", "arguments": {"a": 17',  # cut off by the token budget
            "multiply",
            '{"name": "multiply", "arguments": {"a": 17',
            "malformed JSON: Expecting ',' delimiter (at character 42)",
        ),
        (
            '<tool_call>{"name": "multiply", "arguments": "a=1"}</tool_call>',
            "multiply",
            "a=1",
            "arguments: malformed JSON (Expecting value)",
        ),
        (
            '<tool_call>{"name": "multiply", "arguments": [1, 2]}</tool_call>',
            "multiply",
            "[1, 2]",
            "arguments: expected a JSON object, got array",
        ),
        ("<tool_call>[1]</tool_call>", None, "[1]", "expected a JSON object with 'name' and 'arguments', got array"),
        ("Calling <tool_call>\n\n</tool_call>", None, "", "empty <tool_call> block"),
    ],
)
def test_bad_calls_are_invalid_tool_calls_not_exceptions(
    text: str, name: str | None, arguments: str, error: str
) -> None:
    parsed = parse_tool_calls(text, tools=TOOLS)
    assert parsed.tool_calls == ()
    (invalid,) = parsed.invalid_tool_calls
    assert (invalid.name, invalid.arguments, invalid.error) == (name, arguments, error)
    assert invalid.id.startswith("call_")


def test_without_tools_any_name_is_accepted() -> None:
    parsed = parse_tool_calls('<tool_call>{"name": "divide", "arguments": {"a": 1}}</tool_call>')
    assert parsed.tool_calls[0].name == "divide" and parsed.invalid_tool_calls == ()


def test_several_objects_in_one_block() -> None:
    text = '<tool_call>\n{"name": "multiply", "arguments": {"a": 1, "b": 2}}\n{"name": "lookup"}\n</tool_call>'
    parsed = parse_tool_calls(text, tools=TOOLS)
    assert [c.name for c in parsed.tool_calls] == ["multiply"]
    assert parsed.invalid_tool_calls[0].error == "tool 'lookup': arguments: 'query' is a required property"


# ------------------------------------------------------------------------------------------- llama3_json
def test_llama3_json_calls() -> None:
    text = (
        '<|python_tag|>{"name": "multiply", "parameters": {"a": 2, "b": 3}}; '
        '{"name": "lookup", "arguments": {"query": "dog"}}'
    )
    parsed = parse_tool_calls(text, "llama3_json", TOOLS)
    assert [(c.name, c.arguments) for c in parsed.tool_calls] == [
        ("multiply", {"a": 2, "b": 3}),
        ("lookup", {"query": "dog"}),
    ]
    assert parsed.content == ""
    tagged = '<tool_call>{"name": "multiply", "arguments": {"a": 2, "b": 3}}</tool_call>'
    assert parse_tool_calls(tagged, "llama3_json", TOOLS) == ParsedResponse(tagged)  # hermes tags are text there
    bad = parse_tool_calls('<|python_tag|>{"name": "multiply", "parameters": {"a": 2,', "llama3_json")
    assert bad.invalid_tool_calls[0].name == "multiply"
    assert bad.invalid_tool_calls[0].error.startswith("malformed JSON")


# ------------------------------------------------------------------------------------------- custom parsers
def test_a_custom_parser_is_used_and_its_calls_checked() -> None:
    def parser(text: str) -> ParsedResponse:
        name, _, rest = text.partition("(")
        a, b = rest.rstrip(")").split(",")
        return ParsedResponse("", (ToolCall(name, {"a": int(a), "b": int(b)}, "call_x"),))

    parsed = parse_tool_calls("multiply(2,3)", parser, TOOLS)
    assert parsed.tool_calls == (ToolCall("multiply", {"a": 2, "b": 3}, "call_x"),)
    unknown = parse_tool_calls("divide(2,3)", parser, TOOLS)
    assert unknown.invalid_tool_calls == (
        InvalidToolCall(
            "divide", '{"a": 2, "b": 3}', "call_x", "unknown tool 'divide' (the tools are 'multiply', 'lookup')"
        ),
    )
    with pytest.raises(ValueError, match=r"tool_call_parser: the custom parser raised ValueError: not enough values"):
        parse_tool_calls("multiply", parser)
    with pytest.raises(TypeError, match="tool_call_parser: must return a ParsedResponse, got dict"):
        parse_tool_calls("x", lambda text: {"content": text})  # type: ignore[arg-type,return-value]
    with pytest.raises(ValueError, match="tool_call_parser: expected 'hermes', 'llama3_json' or a callable, got 'xml'"):
        parse_tool_calls("x", "xml")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------- streaming
def _stream(text: str, cuts: list[int], parser: Any = "hermes", tools: Any = TOOLS) -> tuple[list[Any], ToolCallStream]:
    stream = ToolCallStream(parser, tools)
    pieces: list[Any] = []
    bounds = [0, *sorted(set(cuts)), len(text)]
    for start, end in itertools.pairwise(bounds):
        pieces += stream.feed(text[start:end])
    pieces += stream.finish()
    return pieces, stream


def test_stream_emits_text_and_calls_as_soon_as_known() -> None:
    stream = ToolCallStream("hermes", TOOLS)
    assert stream.feed("Let me check. ") == ["Let me check."]  # the space may precede a tag: held
    assert stream.feed("<tool") == []  # may be a tag: held
    assert stream.feed('_call>\n{"name": "multiply", ') == []
    head, start = stream.feed('"arguments": {"a"')
    assert isinstance(head, ToolCallChunk) and head.name == "multiply" and head.index == 0 and head.id
    assert (head.args_delta, start) == ("", ToolCallChunk(0, None, None, '{"a"'))
    assert stream.feed(": 17, ") == [ToolCallChunk(0, None, None, ": 17, ")]
    assert stream.feed('"b": 23}}\n</tool_call>') == [ToolCallChunk(0, None, None, '"b": 23}')]
    assert stream.feed("\nIt is 391. <tool") == ["\nIt is 391."]
    assert stream.finish() == [" <tool"]
    result = stream.result()
    assert result.content == "Let me check.\nIt is 391. <tool"
    assert result.tool_calls == (ToolCall("multiply", {"a": 17, "b": 23}, head.id),)
    with pytest.raises(RuntimeError, match="feed\\(\\) after finish\\(\\)"):
        stream.feed("x")


def test_stream_holds_back_bare_json_until_the_end() -> None:
    stream = ToolCallStream("hermes", TOOLS)
    assert stream.feed('{"name": "multiply", "arguments": {"a": 1, ') == []
    assert stream.feed('"b": 2}}') == []
    (chunk,) = stream.finish()
    assert chunk == ToolCallChunk(0, stream.result().tool_calls[0].id, "multiply", '{"a": 1, "b": 2}')
    plain = ToolCallStream("hermes")
    assert plain.feed('{"na') == []  # may be {"name": ...
    assert plain.feed('tion": "fr"}') == ['{"nation": "fr"}']  # not a call after all: text at once
    with pytest.raises(RuntimeError, match="call finish\\(\\) first"):
        ToolCallStream().result()


REALISTIC = [
    (
        "hermes",
        'I\'ll multiply them.\n<tool_call>\n{"name": "multiply", "arguments": {"a": 17, "b": 23}}\n'
        '</tool_call>\n<tool_call>\n{"name": "lookup", "arguments": {"query": "a } b </x \\" {"}}\n'
        "</tool_call>",
    ),
    ("hermes", '{"name": "multiply", "arguments": {"a": 17, "b": 23}}'),
    ("hermes", '```json\n{"name": "multiply", "arguments": {"a": 17, "b": 23}}\n```\n'),
    ("hermes", "  The answer:  3 < 4, and <tool is not a tag;\n\n  done  \n"),
    ("hermes", 'A\n <tool_call>{"name": "lookup", "arguments": {"query": "x"}}</tool_call>  \n\n B  <tool_call>'),
    ("hermes", 'Calling <tool_call>\n{"name": "multiply", "arguments": {"a": 1'),
    (
        "hermes",
        '<tool_call>{"arguments": {"a": 1, "b": 2}, "name": "multiply"}</tool_call> <tool_call>{"name": '
        '"multiply", "arguments": "{\\"a\\": 2, \\"b\\": 5}"}</tool_call>',
    ),
    (
        "hermes",
        '<tool_call>{"name": "divide", "arguments": {"a": 1}}</tool_call>ok<tool_call>{"name": "multiply",'
        ' "arguments": {"a": 1, "b": "2"}}</tool_call>',
    ),
    (
        "hermes",
        '<tool_call>\n{"name": "multiply", "arguments": {"a": 1, "b": 2}}\n{"name": "lookup", "arguments": '
        '{"query": "q"}}\n</tool_call>',
    ),
    ("hermes", '{"title": "not a call", "name": "x < y"}'),
    (
        "llama3_json",
        '<|python_tag|>{"name": "multiply", "parameters": {"a": 2, "b": 3}}; {"name": "lookup", '
        '"parameters": {"query": "dog"}}',
    ),
    ("llama3_json", "It is 6, <tool_call> is just text here."),
]


@settings(max_examples=60, deadline=None)
@given(case=st.sampled_from(REALISTIC), cuts=st.lists(st.integers(0, 200), max_size=12))
def test_streamed_pieces_agree_with_parsing_the_whole_text(case: tuple[str, str], cuts: list[int]) -> None:
    parser, text = case
    pieces, stream = _stream(text, [c for c in cuts if c <= len(text)], parser)
    whole = parse_tool_calls(text, parser, TOOLS)
    result = stream.result()
    assert "".join(p for p in pieces if isinstance(p, str)) == result.content == whole.content
    assert [(c.name, c.arguments) for c in result.tool_calls] == [(c.name, c.arguments) for c in whole.tool_calls]
    assert [(c.name, c.arguments, c.error) for c in result.invalid_tool_calls] == [
        (c.name, c.arguments, c.error) for c in whole.invalid_tool_calls
    ]
    chunks: dict[int, list[ToolCallChunk]] = {}
    for piece in pieces:
        if isinstance(piece, ToolCallChunk):
            chunks.setdefault(piece.index, []).append(piece)
    assert sorted(chunks) == list(range(len(chunks)))
    by_id = {c.id: c for c in (*result.tool_calls, *result.invalid_tool_calls)}
    assert len(chunks) == len(by_id)
    for group in chunks.values():
        first, rest = group[0], group[1:]
        assert all(c.id is None and c.name is None for c in rest)
        call = by_id[first.id]
        assert first.name == call.name
        arguments = "".join(c.args_delta for c in group)
        if isinstance(call, ToolCall):
            assert json.loads(arguments) == call.arguments
        else:  # what was streamed of a call found invalid is part of what the model wrote for it
            assert arguments in (call.arguments or ""), call


def test_realistic_cases_parse_as_expected() -> None:
    """The property above compares the stream with the parser; this pins what the parser gives on them."""
    summary = [
        (parse.content, [c.name for c in parse.tool_calls], [c.name for c in parse.invalid_tool_calls])
        for parse in (parse_tool_calls(text, parser, TOOLS) for parser, text in REALISTIC)
    ]
    assert summary == [
        ("I'll multiply them.", ["multiply", "lookup"], []),
        ("", ["multiply"], []),
        ("", ["multiply"], []),
        ("  The answer:  3 < 4, and <tool is not a tag;\n\n  done  \n", [], []),
        ("A\nB", ["lookup"], [None]),
        ("Calling", [], ["multiply"]),
        ("", ["multiply", "multiply"], []),
        ("ok", [], ["divide", "multiply"]),
        ("", ["multiply", "lookup"], []),
        ('{"title": "not a call", "name": "x < y"}', [], []),
        ("", ["multiply", "lookup"], []),
        ("It is 6, <tool_call> is just text here.", [], []),
    ]
    assert parse_tool_calls(REALISTIC[0][1]).tool_calls[1].arguments == {"query": 'a } b </x " {'}


FRAGMENTS = [
    "<tool_call>",
    "</tool_call>",
    "<tool",
    "</tool_",
    "{",
    "}",
    '"name": ',
    '"multiply"',
    ", ",
    '"arguments": ',
    '{"a": 1, "b": 2}',
    " ",
    "\n",
    "Hi.",
    "```json",
    "```",
    "<|python_tag|>",
    ";",
    '"',
    "\\",
    '{"name": "multiply", "arguments": {"a": 1, "b": 2}}',
    '<tool_call>{"name": "lookup", "arguments": {"query": "q}"}}</tool_call>',
    '{"name": "lookup"}',
]


@settings(max_examples=150, deadline=None)
@given(
    parts=st.lists(st.sampled_from(FRAGMENTS), max_size=12),
    cuts=st.lists(st.integers(0, 300), max_size=6),
    parser=st.sampled_from(["hermes", "llama3_json"]),
)
def test_any_output_streams_like_it_parses_and_never_raises(parts: list[str], cuts: list[int], parser: str) -> None:
    text = "".join(parts)
    pieces, stream = _stream(text, [c for c in cuts if c <= len(text)], parser)
    whole = parse_tool_calls(text, parser, TOOLS)  # type: ignore[arg-type]
    assert "".join(p for p in pieces if isinstance(p, str)) == whole.content
    assert [(c.name, c.arguments) for c in stream.result().tool_calls] == [
        (c.name, c.arguments) for c in whole.tool_calls
    ]
    assert len({p.index for p in pieces if isinstance(p, ToolCallChunk)}) == len(whole.tool_calls) + len(
        whole.invalid_tool_calls
    )
