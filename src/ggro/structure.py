"""Where in a structured response a position lies: plain text, a free-text string value, or syntax.

Structure-safe steering (``GGROConfig.steer_structure=False``) nudges only where a different token cannot break
the structure: plain text around tool calls, and JSON string values whose schema is free text (``"type":
"string"`` with no ``enum``, ``const``, ``pattern`` or ``format``). Everything else is *syntax*: punctuation,
keys, numbers, booleans, enum values and tool names. A :class:`Layout` reads a response prefix (text) and
says which it is, with a scanner that follows JSON character by character (:class:`JsonScanner`).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple, Protocol

__all__ = [
    "HermesLayout",
    "JsonLayout",
    "JsonScanner",
    "Layout",
    "Llama3JsonLayout",
    "OpaqueLayout",
    "Position",
    "RegionKind",
    "is_free_text",
    "schema_at",
]

RegionKind = Literal["text", "value", "syntax"]

_WHITESPACE = " \t\n\r"
_TOOL_CALL_OPEN = "<tool_call>"
_TOOL_CALL_CLOSE = "</tool_call>"


class Position(NamedTuple):
    """What a response prefix ends in: ``kind``, and ``region_start``, the character offset where that text
    run or string value began (a nudge must stay in the same region); ``in_string`` / ``expect`` describe the
    JSON context for closing a structure (see :class:`JsonScanner`)."""

    kind: RegionKind
    region_start: int
    in_string: bool = False
    expect: str = "text"


class Layout(Protocol):
    """Classifies response prefixes of one kind of structured output."""

    def position(self, text: str) -> Position: ...


# ---------------------------------------------------------------------------------------------- JSON scanning
@dataclass
class _Frame:
    kind: Literal["{", "["]
    key: str | None = None
    index: int = 0


@dataclass
class JsonScanner:
    """An incremental JSON reader that knows, after any prefix, whether it is inside a string (a key or a
    value), the path of the current value (keys and array indices), and what comes next
    (``expect``: ``value``, ``key``, ``colon``, ``comma_or_close``, ``literal``, ``string``, ``done``).

    It trusts its input to be valid JSON so far (the grammar guarantees it); on anything else it marks
    itself ``broken`` and classifies everything as syntax from then on."""

    stack: list[_Frame] = field(default_factory=list)
    expect: str = "value"
    string_role: Literal["key", "value"] | None = None
    string_start: int = 0
    escaped: bool = False
    key_buffer: list[str] = field(default_factory=list)
    value_buffer: list[str] = field(default_factory=list)
    top_values: dict[str, str] = field(default_factory=dict)
    """String values of the top-level object's keys, once complete (a tool call's ``name``)."""
    broken: bool = False
    offset: int = 0

    def copy(self) -> JsonScanner:
        return copy.deepcopy(self)

    @property
    def in_string(self) -> bool:
        return self.string_role is not None

    def path(self) -> list[str | int]:
        """Keys and indices from the root to the current value (or key, inside one)."""
        out: list[str | int] = []
        for frame in self.stack:
            if frame.kind == "{":
                if frame.key is not None:
                    out.append(frame.key)
            else:
                out.append(frame.index)
        return out

    def feed(self, text: str) -> JsonScanner:
        for ch in text:
            if self.broken:
                break
            self._char(ch)
            self.offset += 1
        return self

    def _char(self, ch: str) -> None:
        if self.string_role is not None:
            self._string_char(ch)
            return
        if self.expect == "literal":
            if ch in ",]}" or ch in _WHITESPACE:
                self._value_done()
            else:
                return
        if ch in _WHITESPACE:
            return
        if self.expect == "value":
            self._value_start(ch)
        elif self.expect == "key":
            if ch == '"':
                self._open_string("key")
            elif ch == "}" and self.stack and self.stack[-1].key is None:
                self._close("{")
            else:
                self.broken = True
        elif self.expect == "colon":
            if ch == ":":
                self.expect = "value"
            else:
                self.broken = True
        elif self.expect == "comma_or_close":
            if ch == "," and self.stack:
                frame = self.stack[-1]
                if frame.kind == "{":
                    frame.key = None
                    self.expect = "key"
                else:
                    frame.index += 1
                    self.expect = "value"
            elif ch in "]}" and self.stack and self.stack[-1].kind == ("[" if ch == "]" else "{"):
                self._close(self.stack[-1].kind)
            else:
                self.broken = True
        elif self.expect == "done":
            self.broken = True  # a second top-level value: the caller starts a new scanner for it

    def _value_start(self, ch: str) -> None:
        if ch == '"':
            self._open_string("value")
        elif ch == "{":
            self.stack.append(_Frame("{"))
            self.expect = "key"
        elif ch == "[":
            self.stack.append(_Frame("["))
            self.expect = "value"
        elif ch == "]" and self.stack and self.stack[-1].kind == "[" and self.stack[-1].index == 0:
            self._close("[")  # an empty array
        elif ch in "-0123456789tfn":
            self.expect = "literal"
        else:
            self.broken = True

    def _open_string(self, role: Literal["key", "value"]) -> None:
        self.string_role = role
        self.string_start = self.offset
        self.escaped = False
        self.key_buffer = []
        self.value_buffer = []

    def _string_char(self, ch: str) -> None:
        if self.escaped:
            self.escaped = False
        elif ch == "\\":
            self.escaped = True
        elif ch == '"':
            role = self.string_role
            self.string_role = None
            if role == "key":
                self.stack[-1].key = "".join(self.key_buffer)
                self.expect = "colon"
            else:
                if len(self.stack) == 1 and self.stack[0].kind == "{" and self.stack[0].key is not None:
                    self.top_values[self.stack[0].key] = "".join(self.value_buffer)
                self._value_done()
            return
        (self.key_buffer if self.string_role == "key" else self.value_buffer).append(ch)

    def _value_done(self) -> None:
        self.expect = "comma_or_close" if self.stack else "done"

    def _close(self, kind: str) -> None:
        self.stack.pop()
        self._value_done()


# ---------------------------------------------------------------------------------------------- schemas
def _resolve(node: Any, root: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """``node`` with a local ``$ref`` (``#/...``) followed; ``True`` is the empty schema; None when unknown."""
    for _ in range(32):  # a cycle of references resolves to nothing rather than looping
        if node is True:
            return {}
        if not isinstance(node, Mapping):
            return None
        ref = node.get("$ref")
        if not isinstance(ref, str):
            return node
        if not ref.startswith("#"):
            return None
        target: Any = root
        for part in [p for p in ref[1:].split("/") if p]:
            part = part.replace("~1", "/").replace("~0", "~")
            target = target.get(part) if isinstance(target, Mapping) else None
        node = target
    return None


def schema_at(schema: Mapping[str, Any], path: Sequence[str | int]) -> Mapping[str, Any] | None:
    """The sub-schema of the value at ``path`` (keys and indices), or None when the schema does not say one
    (a combinator, a missing property under ``additionalProperties: false``)."""
    node = _resolve(schema, schema)
    for step in path:
        if node is None:
            return None
        if isinstance(step, str):
            properties = node.get("properties")
            if isinstance(properties, Mapping) and step in properties:
                node = _resolve(properties[step], schema)
                continue
            extra = node.get("additionalProperties", True)
            node = _resolve(extra, schema) if extra is not False else None
        else:
            prefix = node.get("prefixItems")
            if isinstance(prefix, list) and step < len(prefix):
                node = _resolve(prefix[step], schema)
                continue
            items = node.get("items", True)
            node = _resolve(items, schema) if items is not False else None
    return node


def is_free_text(node: Mapping[str, Any] | None) -> bool:
    """Whether a string under this schema is free text: a plain ``string`` (or an unconstrained value),
    not an enum, a constant, a pattern or a format."""
    if node is None:
        return False
    if any(key in node for key in ("enum", "const", "pattern", "format", "anyOf", "oneOf", "allOf", "not")):
        return False
    kind = node.get("type")
    if kind is None:
        return True
    return kind == "string" or (isinstance(kind, list) and "string" in kind)


def _json_position(scanner: JsonScanner, schema_of_path: Any, base: int) -> Position:
    if scanner.broken:
        return Position("syntax", base + scanner.offset, expect="broken")
    if scanner.string_role == "value" and schema_of_path(scanner):
        return Position("value", base + scanner.string_start, in_string=True, expect="string")
    return Position("syntax", base + scanner.offset, scanner.in_string, scanner.expect)


# ---------------------------------------------------------------------------------------------- layouts
@dataclass(frozen=True)
class JsonLayout:
    """The whole response is one JSON value under ``schema`` (``{}``: any JSON, as in JSON mode)."""

    schema: Mapping[str, Any]

    def position(self, text: str) -> Position:
        scanner = JsonScanner().feed(text)
        return _json_position(scanner, lambda s: is_free_text(schema_at(self.schema, s.path())), 0)


@dataclass(frozen=True)
class OpaqueLayout:
    """A grammar whose structure is not known (a user's Lark grammar): every position is syntax."""

    def position(self, text: str) -> Position:
        return Position("syntax", len(text), expect="unknown")


@dataclass(frozen=True)
class _ToolCalls:
    """Free-text positions of tool-call JSON ``{"name": ..., <arguments_key>: {...}}``: string values inside
    the arguments whose parameter schema is free text; the name and everything else is syntax."""

    parameters: Mapping[str, Mapping[str, Any]]
    arguments_key: str

    def free_text(self, scanner: JsonScanner) -> bool:
        path = scanner.path()
        if len(path) < 2 or path[0] != self.arguments_key:
            return False
        name = scanner.top_values.get("name")
        schema = self.parameters.get(name) if name is not None else None
        return schema is not None and is_free_text(schema_at(schema, path[1:]))


@dataclass(frozen=True)
class HermesLayout:
    """Hermes tool calls: ``<tool_call>{json}</tool_call>`` blocks, or one bare JSON call as the whole response;
    with ``allow_text`` (tool_choice ``auto``), plain text is also allowed in place of calls."""

    parameters: Mapping[str, Mapping[str, Any]]
    allow_text: bool

    def position(self, text: str) -> Position:
        calls = _ToolCalls(self.parameters, "arguments")
        stripped = text.lstrip()
        if stripped.startswith("{"):  # a bare JSON call
            base = len(text) - len(stripped)
            return _json_position(JsonScanner().feed(stripped), calls.free_text, base)
        opened = text.rfind(_TOOL_CALL_OPEN)
        if opened >= 0 and text.find(_TOOL_CALL_CLOSE, opened) < 0:
            base = opened + len(_TOOL_CALL_OPEN)
            body = text[base:]
            lead = len(body) - len(body.lstrip())
            scanner = JsonScanner().feed(body[lead:])
            if scanner.expect == "done":  # the JSON is complete: the closing tag follows
                return Position("syntax", len(text), expect="tag")
            return _json_position(scanner, calls.free_text, base + lead)
        if opened >= 0 or not self.allow_text:
            return Position("syntax", len(text), expect="tag")
        if _TOOL_CALL_OPEN.startswith(stripped) and stripped:
            return Position("syntax", len(text), expect="tag")  # the start of a tag
        return Position("text", 0, expect="text")


@dataclass(frozen=True)
class Llama3JsonLayout:
    """Llama-3 JSON tool calls: ``{"name": ..., "parameters": {...}}``, several separated by ``;``; with
    ``allow_text``, plain text in place of calls (a response that does not start with ``{``)."""

    parameters: Mapping[str, Mapping[str, Any]]
    allow_text: bool

    def position(self, text: str) -> Position:
        calls = _ToolCalls(self.parameters, "parameters")
        stripped = text.lstrip()
        if stripped.startswith("<|python_tag|>"):
            stripped = stripped[len("<|python_tag|>") :]
        if not stripped.startswith("{"):
            if self.allow_text:
                return Position("text", 0, expect="text")
            return Position("syntax", len(text), expect="value")
        base = len(text) - len(stripped)
        scanner = JsonScanner()
        start = 0
        for i, ch in enumerate(stripped):  # a new scanner after each complete call and its separator
            if scanner.expect == "done" and not scanner.in_string:
                if ch in _WHITESPACE or ch == ";":
                    continue
                scanner, start = JsonScanner(), i
            scanner.feed(ch)
        return _json_position(scanner, calls.free_text, base + start)
