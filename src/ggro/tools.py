"""Tools for chat models, framework-free: tool definitions checked and normalised to the OpenAI form, and the
tool calls a model writes parsed back out of its text, whole or while it streams.

Two output formats are understood:

* ``"hermes"`` (Qwen2.5, Hermes, many fine-tunes): ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``
  blocks anywhere in the text (an unclosed last block too; text outside the blocks is the content). What small
  models really write is accepted as well: the whole response being one or more bare call objects
  ``{"name": ..., "arguments": {...}}`` (on separate lines, or inside a Markdown code fence).
* ``"llama3_json"`` (Llama 3.x): the response is ``{"name": ..., "parameters": {...}}`` objects separated by
  ``;`` (``"arguments"`` is accepted too), after an optional ``<|python_tag|>``.

A call is recognised only where the response starts with one (after whitespace, an optional ``<|python_tag|>``
and an optional code fence: ``{"name":``, ``{"arguments":`` or ``{"parameters":``) or inside ``<tool_call>``
tags: a JSON answer such as ``{"title": ...}`` stays text. Whatever the model wrote, parsing never raises:
malformed JSON, an unknown tool name or arguments that do not match the tool's schema give an
:class:`InvalidToolCall` with the reason. A user-supplied parser (a callable) is user code: when it fails or
returns something else than a :class:`ParsedResponse`, that is an error naming ``tool_call_parser``.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import regex
from jsonschema import Draft202012Validator, SchemaError
from jsonschema.exceptions import UnknownType, best_match
from jsonschema.validators import validator_for
from referencing import Registry, Specification
from referencing.exceptions import Unresolvable
from referencing.jsonschema import DRAFT202012, specification_with

if TYPE_CHECKING:
    from referencing._core import Resolver

__all__ = [
    "InvalidToolCall",
    "ParsedResponse",
    "StreamPiece",
    "ToolCall",
    "ToolCallChunk",
    "ToolCallParser",
    "ToolCallStream",
    "check_json_schema",
    "json_schema_error",
    "new_tool_call_id",
    "normalize_tools",
    "parse_tool_calls",
]


def new_tool_call_id() -> str:
    """A fresh tool-call id: ``call_`` and 24 random hex digits."""
    return "call_" + uuid.uuid4().hex[:24]


@dataclass(frozen=True)
class ToolCall:
    """A well-formed tool call: a tool name and its arguments (a JSON object)."""

    name: str
    arguments: dict[str, Any]
    id: str = field(default_factory=new_tool_call_id)

    def to_openai(self) -> dict[str, Any]:
        """The call as an OpenAI assistant-message ``tool_calls`` entry (arguments as a JSON string)."""
        arguments = json.dumps(self.arguments, ensure_ascii=False)
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": arguments}}


@dataclass(frozen=True)
class InvalidToolCall:
    """What the model wrote where a tool call was expected, and why it is not a valid one. ``arguments`` is the
    arguments' JSON text when it could be isolated, else the raw text of the attempted call."""

    name: str | None
    arguments: str | None
    id: str
    error: str


@dataclass(frozen=True)
class ParsedResponse:
    """A response split into its text ``content`` and its tool calls (valid and invalid, each in the order the
    model wrote them)."""

    content: str
    tool_calls: tuple[ToolCall, ...] = ()
    invalid_tool_calls: tuple[InvalidToolCall, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "tool_calls", tuple(self.tool_calls))
        object.__setattr__(self, "invalid_tool_calls", tuple(self.invalid_tool_calls))


@dataclass(frozen=True)
class ToolCallChunk:
    """Part of a tool call while it streams (OpenAI's delta convention, LangChain's ``tool_call_chunks``): the
    first chunk of a call carries its ``id`` and ``name`` (later ones ``None``); the ``args_delta`` strings of
    one ``index``, concatenated, are the arguments' JSON text."""

    index: int
    id: str | None
    name: str | None
    args_delta: str


StreamPiece = str | ToolCallChunk
"""What :class:`ToolCallStream` emits: text (``str``) or a :class:`ToolCallChunk`."""

ToolCallParser = Literal["hermes", "llama3_json"] | Callable[[str], ParsedResponse]
"""A built-in format name or a function from the response text to a :class:`ParsedResponse`."""

_Item = ToolCall | InvalidToolCall

# ------------------------------------------------------------------------------------------- tool definitions
_TOOL_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_EMPTY_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}}


def normalize_tools(tools: Iterable[Mapping[str, Any]] | None) -> list[dict[str, Any]]:
    """Tools in the OpenAI form ``{"type": "function", "function": {"name", "description", "parameters"}}``
    (deep copies). Accepts that form and bare ``{"name", "description", "parameters"}`` dicts (with or without
    ``"type": "function"``); a missing description is ``""`` and missing parameters an empty object schema.

    Raises ``ValueError`` naming the faulty field (``tools[1].function.parameters: ...``) for a name that is not
    1 to 64 letters, digits, ``_`` or ``-``, a repeated name, a description that is not a string, or parameters
    that are not a valid JSON Schema of type ``"object"``; ``TypeError`` when ``tools`` is not a list.
    """
    if tools is None:
        return []
    if isinstance(tools, str | bytes | Mapping) or not isinstance(tools, Iterable):
        hint = " (wrap one tool in a list)" if isinstance(tools, Mapping) else ""
        raise TypeError(f"tools: expected a list of tool definitions, got {type(tools).__name__}{hint}")
    normalized: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        if not isinstance(tool, Mapping):
            raise ValueError(f"{where}: expected a dict (an OpenAI tool or a function definition), got {_kind(tool)}")
        kind = tool.get("type", "function")
        if kind != "function":
            raise ValueError(f"{where}.type: only 'function' tools are supported, got {kind!r}")
        if "function" in tool:
            function, where = tool["function"], f"{where}.function"
            if not isinstance(function, Mapping):
                raise ValueError(f"{where}: expected a dict with 'name', 'description' and 'parameters'")
        else:
            function = tool
        name = function.get("name")
        if name is None:
            raise ValueError(f"{where}.name: missing (every tool needs a name)")
        if not isinstance(name, str) or not _TOOL_NAME.fullmatch(name):
            raise ValueError(f"{where}.name: {name!r} is not a valid tool name (1 to 64 letters, digits, '_' or '-')")
        if name in seen:
            raise ValueError(f"{where}.name: duplicate tool name {name!r} (also tools[{seen[name]}])")
        seen[name] = i
        description = function.get("description")
        if description is None:
            description = ""
        elif not isinstance(description, str):
            raise ValueError(f"{where}.description: expected a string, got {_kind(description)}")
        parameters = function.get("parameters")
        if parameters is None:
            parameters = _EMPTY_PARAMETERS
        where = f"{where}.parameters"
        if not isinstance(parameters, Mapping):
            raise ValueError(f"{where}: expected a JSON Schema (a dict) of type 'object', got {_kind(parameters)}")
        try:
            parameters = json.loads(json.dumps(parameters, allow_nan=False))
        except (TypeError, ValueError) as error:
            raise ValueError(f"{where}: not JSON-serialisable ({error})") from None
        if parameters.get("type") != "object":
            raise ValueError(f"{where}: must be a JSON Schema of type 'object', got type {parameters.get('type')!r}")
        check_json_schema(parameters, where)
        normalized.append(
            {"type": "function", "function": {"name": name, "description": description, "parameters": parameters}}
        )
    return normalized


def _tool_schemas(tools: Iterable[Mapping[str, Any]] | None) -> dict[str, dict[str, Any]] | None:
    """Tool name -> parameters schema, or None (no tools: calls are not checked against any)."""
    normalized = normalize_tools(tools)
    if not normalized:
        return None
    return {t["function"]["name"]: t["function"]["parameters"] for t in normalized}


# ------------------------------------------------------------------------------------------------ JSON Schema
# Where sub-schemas sit, to find every "$ref" (jsonschema resolves references only while validating).
_SCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas", "dependencies")
_SCHEMA_LISTS = ("prefixItems", "items", "allOf", "anyOf", "oneOf")
_SCHEMA_ONE = (
    *("items", "additionalItems", "additionalProperties", "unevaluatedItems", "unevaluatedProperties"),
    *("not", "contains", "propertyNames", "if", "then", "else"),
)


def check_json_schema(schema: Any, where: str = "schema") -> None:
    """Raise ``ValueError`` naming the faulty keyword (``{where}.properties.a.type: ...``) when ``schema`` is not a
    well-formed JSON Schema: ``jsonschema``'s meta-schema check for its dialect (``$schema``, Draft 2020-12 when
    absent; patterns must compile), then every ``$ref`` must resolve within the schema itself."""
    if not isinstance(schema, Mapping | bool):
        raise ValueError(f"{where}: a schema must be a dict or a boolean, got {_kind(schema)}")
    try:
        _validator_class(schema).check_schema(schema)
    except SchemaError as error:
        raise ValueError(f"{_place(where, error.path)}: {error.message}") from None
    if isinstance(schema, Mapping):
        spec = specification_with(schema.get("$schema", ""), default=DRAFT202012)
        _check_refs(schema, where, Registry().resolver_with_root(spec.create_resource(schema)), spec)


def _check_refs(schema: Any, where: str, resolver: Resolver[Any], spec: Specification[Any]) -> None:
    if not isinstance(schema, Mapping):
        return
    resolver = resolver.in_subresource(spec.create_resource(schema))  # a new base URI where "$id" sets one
    ref = schema.get("$ref")
    if isinstance(ref, str):
        try:
            resolver.lookup(ref)
        except (Unresolvable, ValueError):
            raise ValueError(f"{where}.$ref: {ref!r} does not point into this schema (only local references)") from None
    for key, sub in schema.items():
        if key in _SCHEMA_MAPS and isinstance(sub, Mapping):
            for name, item in sub.items():
                _check_refs(item, f"{where}.{key}.{name}", resolver, spec)
        elif key in _SCHEMA_LISTS and isinstance(sub, list):
            for j, item in enumerate(sub):
                _check_refs(item, f"{where}.{key}[{j}]", resolver, spec)
        elif key in _SCHEMA_ONE:
            _check_refs(sub, f"{where}.{key}", resolver, spec)


def json_schema_error(value: Any, schema: Any, where: str = "value") -> str | None:
    """Why ``value`` does not validate against ``schema`` (``"{where}.a: 'x' is not of type 'integer'"``: the
    place, then ``jsonschema``'s message for its most relevant error), or None when it does. ``format`` is not
    checked. ``schema`` should have passed :func:`check_json_schema`; one that cannot be used (an unknown type, a
    ``$ref`` that does not resolve) raises ``ValueError``."""
    validator = _validator_class(schema)(schema)
    try:
        error = best_match(validator.iter_errors(value))
    except (UnknownType, Unresolvable) as problem:
        raise ValueError(f"{where}: cannot be checked, the schema is not valid ({problem})") from None
    return None if error is None else f"{_place(where, error.absolute_path)}: {error.message}"


def _validator_class(schema: Any) -> Any:
    """The ``jsonschema`` validator class for the schema's ``$schema`` dialect (Draft 2020-12 by default)."""
    dialect = schema.get("$schema") if isinstance(schema, Mapping) else None
    if isinstance(dialect, str):
        return validator_for(schema, default=Draft202012Validator)
    return Draft202012Validator


def _place(where: str, path: Iterable[Any]) -> str:
    """``where`` followed by a JSON path: ``.key`` for a property, ``[i]`` for an array item."""
    return where + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path)


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object" if isinstance(value, dict) else type(value).__name__


def _short(value: Any, limit: int = 60) -> str:
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _kind(value: Any) -> str:
    return type(value).__name__


# ------------------------------------------------------------------------------------------------- parsing
_OPEN, _CLOSE = "<tool_call>", "</tool_call>"
_BLOCK = re.compile(r"<tool_call>(.*?)(?:</tool_call>|\Z)", re.DOTALL)
_PYTHON_TAG = "<|python_tag|>"
# The start of a response that is bare tool-call JSON (shared by the parser and the stream, so they agree).
_BARE_START = regex.compile(r'\s*(?:<\|python_tag\|>\s*)?(?:```(?:json)?\s*)?\{\s*"(?:name|arguments|parameters)"\s*:')
# The head of one call inside <tool_call>: name first, then the arguments' value starts (streamed as it comes).
_HEAD = regex.compile(
    r'\s*(?:```(?:json)?\s*)?\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,\s*"(?:arguments|parameters)"\s*:\s*'
)
_NAME_FIELD = re.compile(r'"name"\s*:\s*"((?:[^"\\]|\\.)*)"')
_CALL_KEYS = frozenset({"name", "arguments", "parameters", "type", "id"})
_DECODER = json.JSONDecoder()

_IdFor = Callable[[int], str]


def parse_tool_calls(
    text: str, parser: ToolCallParser = "hermes", tools: Iterable[Mapping[str, Any]] | None = None
) -> ParsedResponse:
    """Split a model's response into text and tool calls (see the module docstring for the formats).

    With ``tools`` (OpenAI tool dicts or bare function dicts), a call to an unknown tool or with arguments that
    do not validate against the tool's ``parameters`` schema is an :class:`InvalidToolCall`; without them (or
    with an empty list) any name is accepted. Never raises for what the model wrote; raises ``ValueError`` /
    ``TypeError`` naming ``tool_call_parser`` or ``tools`` for bad arguments of this call.
    """
    schemas = _tool_schemas(tools)
    content, items = _parse(text, _check_parser(parser), schemas, _fresh_ids())
    return _response(content, items)


def _check_parser(parser: Any) -> ToolCallParser:
    if callable(parser) or parser in ("hermes", "llama3_json"):
        return parser
    raise ValueError(f"tool_call_parser: expected 'hermes', 'llama3_json' or a callable, got {parser!r}")


def _fresh_ids() -> _IdFor:
    ids: dict[int, str] = {}
    return lambda index: ids.setdefault(index, new_tool_call_id())


def _response(content: str, items: Sequence[_Item]) -> ParsedResponse:
    calls = tuple(i for i in items if isinstance(i, ToolCall))
    invalid = tuple(i for i in items if isinstance(i, InvalidToolCall))
    return ParsedResponse(content, calls, invalid)


def _parse(
    text: str, parser: ToolCallParser, schemas: dict[str, dict[str, Any]] | None, id_for: _IdFor
) -> tuple[str, list[_Item]]:
    """Content and calls in written order; call ``i`` (0-based over valid and invalid) gets ``id_for(i)``."""
    if not isinstance(parser, str):
        return _run_custom(parser, text, schemas)
    if parser == "hermes" and _OPEN in text:
        segments: list[str] = []
        items: list[_Item] = []
        end = 0
        for match in _BLOCK.finditer(text):
            segments.append(text[end : match.start()])
            items += _parse_block(match.group(1), schemas, len(items), id_for)
            end = match.end()
        segments.append(text[end:])
        return _join_segments(segments), items
    bare = _parse_bare(text, schemas, id_for)
    return bare if bare is not None else (text, [])


def _join_segments(segments: list[str]) -> str:
    """The content around ``<tool_call>`` blocks: whitespace next to a block dropped (the first segment keeps its
    leading whitespace), the non-empty pieces joined by newlines."""
    parts = [segments[0].rstrip(), *(s.strip() for s in segments[1:])]
    return "\n".join(p for p in parts if p)


def _parse_block(body: str, schemas: dict[str, dict[str, Any]] | None, first: int, id_for: _IdFor) -> list[_Item]:
    """The calls in one ``<tool_call>`` block: one JSON object, or several (a model may put more in one block)."""
    inner = _unfence(body.strip())[0].strip()
    if not inner:
        return [InvalidToolCall(None, "", id_for(first), "empty <tool_call> block")]
    items: list[_Item] = []
    pos = 0
    while True:
        pos = _skip_separators(inner, pos)
        if pos >= len(inner):
            return items
        index = first + len(items)
        try:
            value, end = _DECODER.raw_decode(inner, pos)
        except json.JSONDecodeError as error:
            items.append(_malformed(inner[pos:], error, pos, id_for(index)))
            return items
        raw = inner[pos:end]
        if isinstance(value, dict) and isinstance(value.get("name"), str):
            items.append(_make_call(value, raw, schemas, id_for(index)))
        else:
            error_text = f"expected a JSON object with 'name' and 'arguments', got {_json_kind(value)}"
            items.append(InvalidToolCall(None, raw, id_for(index), error_text))
        pos = end


def _parse_bare(text: str, schemas: dict[str, dict[str, Any]] | None, id_for: _IdFor) -> tuple[str, list[_Item]] | None:
    """Calls written as bare JSON at the start of the response (hermes without tags, Llama 3), or None when the
    response does not start with a call (then it is all text). Text after the calls is the content."""
    if not _BARE_START.match(text):
        return None
    body = text.strip()
    if body.startswith(_PYTHON_TAG):
        body = body[len(_PYTHON_TAG) :].lstrip()
    body, after = _unfence(body)
    items: list[_Item] = []
    pos, rest = 0, ""
    while True:
        pos = _skip_separators(body, pos)
        if pos >= len(body):
            break
        if body[pos] != "{":
            rest = body[pos:]
            break
        try:
            value, end = _DECODER.raw_decode(body, pos)
        except json.JSONDecodeError as error:
            items.append(_malformed(body[pos:], error, pos, id_for(len(items))))
            break
        if not _is_call_object(value, schemas):
            if not items:
                return None  # a JSON answer, not a call
            rest = body[pos:]
            break
        items.append(_make_call(value, body[pos:end], schemas, id_for(len(items))))
        pos = end
    content = "\n".join(p for p in (rest.strip(), after.strip()) if p)
    return content, items


def _unfence(text: str) -> tuple[str, str]:
    """Text inside a leading Markdown code fence (```json ... ```) and the text after the fence; unfenced text is
    returned whole (an unclosed fence runs to the end)."""
    if not text.startswith("```"):
        return text, ""
    inner = text[3:]
    if inner.startswith("json"):
        inner = inner[4:]
    closing = inner.find("```")
    return (inner, "") if closing < 0 else (inner[:closing], inner[closing + 3 :])


def _skip_separators(text: str, pos: int) -> int:
    while pos < len(text) and (text[pos].isspace() or text[pos] in ";,"):
        pos += 1
    return pos


def _is_call_object(value: Any, schemas: dict[str, dict[str, Any]] | None) -> bool:
    if not isinstance(value, dict) or not isinstance(value.get("name"), str) or not value.keys() <= _CALL_KEYS:
        return False
    return "arguments" in value or "parameters" in value or (schemas is not None and value["name"] in schemas)


def _malformed(raw: str, error: json.JSONDecodeError, start: int, call_id: str) -> InvalidToolCall:
    found = _NAME_FIELD.search(raw)
    name: str | None = None
    if found:
        try:
            name = json.loads(f'"{found.group(1)}"')
        except json.JSONDecodeError:
            name = None
    where = error.pos - start
    return InvalidToolCall(name, raw.strip(), call_id, f"malformed JSON: {error.msg} (at character {where})")


def _make_call(value: dict[str, Any], raw: str, schemas: dict[str, dict[str, Any]] | None, call_id: str) -> _Item:
    name = value["name"]
    arguments = value["arguments"] if "arguments" in value else value.get("parameters", {})
    if arguments is None:
        arguments = {}
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError as error:
            return InvalidToolCall(name, arguments, call_id, f"arguments: malformed JSON ({error.msg})")
    if not isinstance(arguments, dict):
        return InvalidToolCall(
            name, _short(arguments, 10**6), call_id, f"arguments: expected a JSON object, got {_json_kind(arguments)}"
        )
    return _checked_call(ToolCall(name, arguments, call_id), schemas)


def _checked_call(call: ToolCall, schemas: dict[str, dict[str, Any]] | None) -> _Item:
    if schemas is None:
        return call
    text = json.dumps(call.arguments, ensure_ascii=False)
    if call.name not in schemas:
        known = ", ".join(repr(n) for n in schemas)
        return InvalidToolCall(call.name, text, call.id, f"unknown tool {call.name!r} (the tools are {known})")
    error = json_schema_error(call.arguments, schemas[call.name], "arguments")
    if error is not None:
        return InvalidToolCall(call.name, text, call.id, f"tool {call.name!r}: {error}")
    return call


def _run_custom(
    parser: Callable[[str], ParsedResponse], text: str, schemas: dict[str, dict[str, Any]] | None
) -> tuple[str, list[_Item]]:
    """A user's parser: its failures are errors (user code), its calls are checked against the tools."""
    try:
        result = parser(text)
    except Exception as error:
        raise ValueError(f"tool_call_parser: the custom parser raised {type(error).__name__}: {error}") from error
    if not isinstance(result, ParsedResponse):
        raise TypeError(f"tool_call_parser: must return a ParsedResponse, got {_kind(result)}")
    if not isinstance(result.content, str):
        raise TypeError(f"tool_call_parser: ParsedResponse.content must be a string, got {_kind(result.content)}")
    items: list[_Item] = []
    for call in result.tool_calls:
        if not isinstance(call, ToolCall) or not isinstance(call.arguments, dict):
            raise TypeError(f"tool_call_parser: tool_calls must hold ToolCall objects with dict arguments: {call!r}")
        items.append(_checked_call(call, schemas))
    for invalid in result.invalid_tool_calls:
        if not isinstance(invalid, InvalidToolCall):
            raise TypeError(f"tool_call_parser: invalid_tool_calls must hold InvalidToolCall objects: {invalid!r}")
        items.append(invalid)
    return result.content, items


# ----------------------------------------------------------------------------------------------- streaming
def _held_suffix(text: str, tag: str) -> int:
    """Length of the longest end of ``text`` that could be the start of ``tag``."""
    for size in range(min(len(text), len(tag) - 1), 0, -1):
        if tag.startswith(text[-size:]):
            return size
    return 0


class _Block:
    """Streaming state of one ``<tool_call>`` block."""

    def __init__(self, first: int) -> None:
        self.first = first  # index of its first call
        self.phase = "head"  # head -> raw (arguments streamed as written) | late (arguments at the end) | deferred
        self.start = 0  # where the arguments' value starts in the body
        self.scanned = 0  # how far the arguments were scanned (and emitted)
        self.depth = 0
        self.in_string = False
        self.escaped = False
        self.done = False  # the arguments' value is complete


class ToolCallStream:
    """Tool calls parsed while a response streams: :meth:`feed` text deltas, get text and
    :class:`ToolCallChunk` pieces as soon as they are known, :meth:`finish` at the end of the response.

    The text pieces, concatenated, equal ``parse_tool_calls(full_text).content``, and each call's chunks carry
    its id, its name and its arguments' JSON text (for a valid call ``json.loads`` of that text is its
    ``arguments``); :meth:`result` is the full parse with the same ids. Text that may be the start of a
    ``<tool_call>`` tag, or whitespace that may precede one, is held back until decided. With the hermes parser a
    call inside tags streams as it is written (the name when complete, then the arguments' text); a response
    that starts like bare call JSON (and every response with ``"llama3_json"`` that starts with ``{`` or
    ``<|python_tag|>``, or with a custom parser) is held back and emitted at :meth:`finish`.
    """

    def __init__(self, parser: ToolCallParser = "hermes", tools: Iterable[Mapping[str, Any]] | None = None) -> None:
        self._parser = _check_parser(parser)
        self._schemas = _tool_schemas(tools)
        self._ids: dict[int, str] = {}
        self._text = ""  # everything fed
        self._buffer = ""  # not yet processed (text mode) or the current block's body (call mode)
        self._mode = "start" if isinstance(self._parser, str) else "hold"  # start | text | call | hold
        self._block: _Block | None = None
        self._count = 0  # calls seen so far
        self._blocks = 0  # <tool_call> blocks seen so far
        self._spaces = ""  # whitespace held back (it may precede a tag)
        self._segment_started = False
        self._emitted_text = False
        self._finished = False
        self._result: ParsedResponse | None = None

    def _id(self, index: int) -> str:
        return self._ids.setdefault(index, new_tool_call_id())

    def feed(self, delta: str) -> list[StreamPiece]:
        """Process the next piece of the response; the pieces now known."""
        if self._finished:
            raise RuntimeError("ToolCallStream: feed() after finish()")
        if not isinstance(delta, str):
            raise TypeError(f"ToolCallStream.feed: expected a string, got {_kind(delta)}")
        self._text += delta
        self._buffer += delta
        out: list[StreamPiece] = []
        self._process(out, final=False)
        return out

    def finish(self) -> list[StreamPiece]:
        """The response is complete: the pieces still held back."""
        if self._finished:
            return []
        self._finished = True
        out: list[StreamPiece] = []
        self._process(out, final=True)
        content, items = _parse(self._text, self._parser, self._schemas, self._id)
        self._result = _response(content, items)
        if self._mode == "hold":
            if content:
                out.append(content)
            out += [self._whole_chunk(i, item) for i, item in enumerate(items)]
        return out

    def result(self) -> ParsedResponse:
        """The parse of the whole response (after :meth:`finish`), with the ids the chunks carried."""
        if self._result is None:
            raise RuntimeError("ToolCallStream.result: call finish() first")
        return self._result

    def _process(self, out: list[StreamPiece], final: bool) -> None:
        while True:
            if self._mode == "hold":
                return
            if self._mode == "start":
                match = _BARE_START.match(self._buffer, partial=True)
                if match is not None and (match.partial is False or not final):
                    if not match.partial:
                        self._mode = "hold"
                    return  # bare call JSON, or may still be
                self._mode = "text" if self._parser == "hermes" else "plain"
            if self._mode == "plain":  # llama3_json after a non-call start: all text
                if self._buffer:
                    out.append(self._buffer)
                self._buffer = ""
                return
            if self._mode == "text":
                at = self._buffer.find(_OPEN)
                if at < 0:
                    keep = 0 if final else _held_suffix(self._buffer, _OPEN)
                    self._text_piece(self._buffer[: len(self._buffer) - keep], out, tag_follows=False, final=final)
                    self._buffer = self._buffer[len(self._buffer) - keep :]
                    return
                self._text_piece(self._buffer[:at], out, tag_follows=True, final=False)
                self._buffer = self._buffer[at + len(_OPEN) :]
                self._mode, self._block = "call", _Block(self._count)
                self._blocks += 1
            if self._mode == "call":
                assert self._block is not None
                at = self._buffer.find(_CLOSE)
                if at < 0 and not final:
                    self._advance(self._buffer[: len(self._buffer) - _held_suffix(self._buffer, _CLOSE)], out)
                    return
                body = self._buffer if at < 0 else self._buffer[:at]
                self._advance(body, out)
                self._close_block(body, out)
                self._buffer = "" if at < 0 else self._buffer[at + len(_CLOSE) :]
                self._mode, self._block = "text", None
                self._segment_started = False
                if at < 0:
                    return

    def _text_piece(self, text: str, out: list[StreamPiece], *, tag_follows: bool, final: bool) -> None:
        """Emit text of the current segment, holding back trailing whitespace (a tag may follow it)."""
        text = self._spaces + text
        if final and not self._blocks:  # no tool call at all: the text exactly as written
            self._spaces = ""
            if text:
                out.append(text)
            return
        core = text.rstrip()
        self._spaces = "" if tag_follows or final else text[len(core) :]
        if not core:
            return
        if not self._segment_started and self._blocks:
            core = core.lstrip()
            if self._emitted_text:
                core = "\n" + core
        out.append(core)
        self._segment_started = self._emitted_text = True

    def _advance(self, body: str, out: list[StreamPiece]) -> None:
        """Emit what is now known of the block's first call: its name, then its arguments as written."""
        block = self._block
        assert block is not None
        if block.phase == "head":
            match = _HEAD.match(body, partial=True)
            if match is None:
                block.phase = "deferred"
                return
            if match.partial or match.end() >= len(body):
                return
            try:
                name = json.loads(f'"{match.group(1)}"')
            except json.JSONDecodeError:
                block.phase = "deferred"
                return
            out.append(ToolCallChunk(block.first, self._id(block.first), name, ""))
            block.start = block.scanned = match.end()
            block.phase = "raw" if body[block.start] in "{[" else "late"
        if block.phase == "raw" and not block.done:
            end = self._scan(body, block)
            if end > block.scanned:
                out.append(ToolCallChunk(block.first, None, None, body[block.scanned : end]))
                block.scanned = end

    @staticmethod
    def _scan(body: str, block: _Block) -> int:
        """Scan the arguments' JSON from where the last scan stopped; where the emitted text may now end."""
        pos = block.scanned
        while pos < len(body):
            char = body[pos]
            pos += 1
            if block.in_string:
                if block.escaped:
                    block.escaped = False
                elif char == "\\":
                    block.escaped = True
                elif char == '"':
                    block.in_string = False
            elif char == '"':
                block.in_string = True
            elif char in "{[":
                block.depth += 1
            elif char in "}]":
                block.depth -= 1
                if block.depth == 0:
                    block.done = True
                    return pos
        return pos

    def _close_block(self, body: str, out: list[StreamPiece]) -> None:
        """The block is complete: emit the parts of its calls not streamed yet."""
        block = self._block
        assert block is not None
        items = _parse_block(body, self._schemas, block.first, self._id)
        for offset, item in enumerate(items):
            index = block.first + offset
            if offset == 0 and block.phase == "raw":
                continue
            if offset == 0 and block.phase == "late":
                out.append(ToolCallChunk(index, None, None, _args_text(item)))
                continue
            out.append(self._whole_chunk(index, item))
        self._count = block.first + len(items)

    @staticmethod
    def _whole_chunk(index: int, item: _Item) -> ToolCallChunk:
        return ToolCallChunk(index, item.id, item.name, _args_text(item))


def _args_text(item: _Item) -> str:
    if isinstance(item, ToolCall):
        return json.dumps(item.arguments, ensure_ascii=False)
    return item.arguments or ""
