"""One chat call with tools or a response format, as GGRO runs it: framework-free, so each wrapper only maps
its framework's arguments and messages onto :func:`prepare_chat_call` and the parsed response back.

- ``tools`` (OpenAI tool dicts) are rendered into the prompt by the chat template (:mod:`ggro.prompting`);
- ``tool_choice`` and ``response_format`` become the grammar the response must follow
  (:class:`ggro.Constraint`);
- the response is read back into text and tool calls (:func:`ggro.tools.parse_tool_calls`), or streamed so
  (:class:`ggro.tools.ToolCallStream`).
"""

from __future__ import annotations

import json
from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from .config import GGROConfig
from .constraints import Constraint
from .decoder import GGRODecoder
from .events import GGROEvent, GGROResult, Listener
from .prompting import PromptInput, prompt_text
from .tools import ParsedResponse, ToolCallParser, ToolCallStream, normalize_tools, parse_tool_calls

__all__ = [
    "ANSWER_INSTRUCTION",
    "ChatCall",
    "described_tool_results",
    "normalize_tool_choice",
    "prepare_chat_call",
    "response_format_constraint",
]

ToolFormat = Literal["hermes", "llama3_json"]

ANSWER_INSTRUCTION = "Using the tool results above, answer my question in plain words. Do not call a tool."
"""What the model is told when its response would only repeat calls that already have results."""


@dataclass(frozen=True)
class ChatCall:
    """A prepared chat call: the prompt's token ids (tools rendered, truncated if asked), the grammar the
    response must follow, and how to read the response back."""

    prompt_ids: list[int]
    prompt_text: str
    constraint: Constraint | None = None
    tools: list[dict[str, Any]] = field(default_factory=list)
    """The tools the model was offered (empty: none, or ``tool_choice="none"``)."""
    tool_call_parser: ToolCallParser = "hermes"
    answered_calls: frozenset[tuple[str, str]] = frozenset()
    """Calls in the conversation that already have a result, as (name, canonical JSON arguments)."""
    answer_instead_of_repeating: bool = True
    tool_format: ToolFormat = "hermes"
    messages: PromptInput | None = None
    """The conversation the prompt was rendered from (to ask for the answer instead of a repeated call)."""
    truncate: bool = False

    def stream(
        self, decoder: GGRODecoder, config: GGROConfig, listener: Listener | None = None
    ) -> Generator[GGROEvent, None, list[GGROResult]]:
        """The decoding run (see :meth:`GGRODecoder.stream_ids`).

        Small models often call a tool again with the same arguments after its result came back, so an agent
        loop never ends. When the response would only repeat answered calls (and
        ``answer_instead_of_repeating``), it is decoded again, asked for the answer (:data:`ANSWER_INSTRUCTION`) and
        constrained to plain text. The
        first attempt's events are then dropped (a listener has seen them), so after a tool result the events
        arrive once the response is known not to be a repeat."""
        run = decoder.stream_ids(
            [self.prompt_ids], config=config, listener=listener, prompt_texts=[self.prompt_text],
            constraint=self.constraint,
        )  # fmt: skip
        if not (self.answered_calls and self.tools and self.answer_instead_of_repeating):
            return (yield from run)
        held: list[GGROEvent] = []
        results = _collect(run, held)
        if self.repeats_answered(results[0].text) and isinstance(self.messages, list | tuple):
            asked = [*self.messages, {"role": "user", "content": ANSWER_INSTRUCTION}]
            answer = replace(
                self,
                prompt_ids=decoder.encode_prompt(asked, tools=self.tools, truncate=self.truncate),
                constraint=Constraint.plain_text(self.tool_format),
                answered_calls=frozenset(),
            )
            return (yield from answer.stream(decoder, config, listener))
        yield from held
        return results

    def repeats_answered(self, text: str) -> bool:
        """Whether ``text`` only calls tools that were already called with the same arguments."""
        parsed = self.parse(text)
        return (
            bool(parsed.tool_calls)
            and not parsed.invalid_tool_calls
            and all((c.name, _canonical(c.arguments)) in self.answered_calls for c in parsed.tool_calls)
        )

    def parse(self, text: str) -> ParsedResponse:
        """The response as text and tool calls (no calls when no tools were offered)."""
        if not self.tools:
            return ParsedResponse(text)
        return parse_tool_calls(text, self.tool_call_parser, self.tools)

    def stream_parser(self) -> ToolCallStream | None:
        """A streaming parser for the response's tool calls; None when no tools were offered."""
        return ToolCallStream(self.tool_call_parser, self.tools) if self.tools else None


def prepare_chat_call(
    decoder: GGRODecoder,
    messages: PromptInput,
    *,
    tools: Sequence[Mapping[str, Any]] | None = None,
    tool_choice: Any = None,
    response_format: Any = None,
    tool_call_parser: ToolCallParser = "hermes",
    truncate: bool = False,
    answer_instead_of_repeating: bool = True,
    parallel_tool_calls: bool = False,
    describe_tool_results: bool = True,
) -> ChatCall:
    """Prepare a chat call (bad tools, tool choices and formats fail here, naming the argument).

    ``tool_choice``: None or ``"auto"`` (text or calls), ``"required"`` / ``"any"`` / ``True`` (a call; ``True``
    with one tool: that tool), ``"none"`` (the tools are not offered), a tool's name, or
    ``{"type": "function", "function": {"name": ...}}``. ``response_format``: ``{"type": "json_object"}``,
    ``{"type": "json_schema", "json_schema": {"name": ..., "schema": {...}}}`` or a bare JSON schema.
    ``tool_call_parser`` also picks the grammar's call format (``hermes`` for a callable parser).
    ``truncate``: cut the oldest messages (system messages and the last user message kept) when the prompt
    does not fit the context window. ``answer_instead_of_repeating``: see :meth:`ChatCall.stream`.
    ``parallel_tool_calls``: allow several calls in one response (off: small models repeat one call several
    times; agents call again on the next turn). ``describe_tool_results``: a tool result reaches the model as
    ``multiply(a=17, b=23) returned 391`` rather than a bare ``391`` (which small models read as a new input
    and feed to the tool again)."""
    tool_list = normalize_tools(tools) if tools else []
    choice = normalize_tool_choice(tool_choice, tool_list)
    if choice == "none":
        tool_list = []
    if tool_list and response_format is not None:
        raise ValueError("response_format: cannot be combined with tools; give one or the other")
    tool_format: ToolFormat = tool_call_parser if tool_call_parser in ("hermes", "llama3_json") else "hermes"
    if tool_list:
        constraint = Constraint.for_tools(tool_list, choice, tool_format, parallel=parallel_tool_calls)
    else:
        constraint = response_format_constraint(response_format)
    if describe_tool_results and not isinstance(messages, str):
        messages = described_tool_results(messages)
    ids = decoder.encode_prompt(messages, tools=tool_list or None, truncate=truncate)
    return ChatCall(
        ids,
        prompt_text(messages),
        constraint,
        tool_list,
        tool_call_parser,
        answered_calls=_answered_calls(messages),
        answer_instead_of_repeating=answer_instead_of_repeating,
        tool_format=tool_format,
        messages=messages,
        truncate=truncate,
    )


def described_tool_results(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """``messages`` with each tool result's content prefixed by the call it answers:
    ``multiply(a=17, b=23) returned 391`` (results whose call is not found are left as they are)."""
    calls = {call_id: (name, arguments) for call_id, name, arguments in _calls_in(messages) if call_id}
    out: list[dict[str, Any]] = []
    for message in messages:
        copy = dict(message)
        call_id = copy.get("tool_call_id")
        found = calls.get(call_id) if copy.get("role") == "tool" and isinstance(call_id, str) else None
        if found is not None and isinstance(copy.get("content"), str):
            name, arguments = found
            shown = ", ".join(f"{k}={v!r}" for k, v in (arguments or {}).items())
            copy["content"] = f"{name}({shown}) returned {copy['content']}"
        out.append(copy)
    return out


def _answered_calls(messages: PromptInput) -> frozenset[tuple[str, str]]:
    """(name, canonical arguments) of every assistant tool call in ``messages`` that a tool message answers."""
    if isinstance(messages, str):
        return frozenset()
    answered = {m.get("tool_call_id") for m in messages if m.get("role") == "tool"}
    if not answered:
        return frozenset()
    return frozenset(
        (name, _canonical(arguments))
        for call_id, name, arguments in _calls_in(messages)
        if arguments is not None and (call_id is None or call_id in answered)
    )


def _calls_in(messages: Sequence[Mapping[str, Any]]) -> list[tuple[str | None, str, dict[str, Any] | None]]:
    """(id, name, arguments or None when unreadable) of every assistant tool call in ``messages``."""
    found: list[tuple[str | None, str, dict[str, Any] | None]] = []
    for message in messages:
        for call in message.get("tool_calls") or ():
            if not isinstance(call, Mapping):
                continue
            function = call.get("function", call)
            name, arguments = function.get("name"), function.get("arguments", function.get("args"))
            if isinstance(arguments, str):
                try:
                    arguments = json.loads(arguments)
                except ValueError:
                    arguments = None
            if isinstance(name, str):
                call_id = call.get("id")
                found.append(
                    (
                        call_id if isinstance(call_id, str) else None,
                        name,
                        arguments if isinstance(arguments, dict) else None,
                    )
                )
    return found


def _canonical(arguments: Any) -> str:
    return json.dumps(arguments, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _collect(run: Generator[GGROEvent, None, list[GGROResult]], into: list[GGROEvent]) -> list[GGROResult]:
    """Run ``run`` to its end, keeping its events in ``into``; its results."""
    while True:
        try:
            into.append(next(run))
        except StopIteration as stop:
            return list(stop.value)


def normalize_tool_choice(tool_choice: Any, tools: Sequence[Mapping[str, Any]]) -> str:
    """``tool_choice`` in any accepted form as ``"auto"``, ``"required"``, ``"none"`` or a tool's name."""
    if tool_choice is None or tool_choice == "auto":
        return "auto"
    if tool_choice is True or tool_choice in ("any", "required"):
        if tool_choice is True and len(tools) == 1:
            return str(tools[0]["function"]["name"])
        return "required"
    if tool_choice is False or tool_choice == "none":
        return "none"
    if isinstance(tool_choice, Mapping):
        function = tool_choice.get("function")
        name = function.get("name") if isinstance(function, Mapping) else tool_choice.get("name")
        if isinstance(name, str):
            return name
        raise ValueError(
            "tool_choice: a dict must name a tool ({'type': 'function', 'function': {'name': ...}}), "
            f"got {dict(tool_choice)!r}"
        )
    if isinstance(tool_choice, str):
        if not tools:
            raise ValueError(f"tool_choice: {tool_choice!r} needs tools")
        return tool_choice
    raise ValueError(
        f"tool_choice: expected 'auto', 'required', 'any', 'none', a tool name or a dict, got {tool_choice!r}"
    )


def response_format_constraint(response_format: Any) -> Constraint | None:
    """The constraint of an OpenAI-style ``response_format`` (or a bare JSON schema); None for none or
    ``{"type": "text"}``."""
    if response_format is None:
        return None
    if not isinstance(response_format, Mapping):
        raise ValueError(f"response_format: expected a dict, got {type(response_format).__name__}")
    kind = response_format.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return Constraint.json_object()
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, Mapping) else None
        if not isinstance(schema, Mapping):
            raise ValueError("response_format: 'json_schema' needs {'json_schema': {'name': ..., 'schema': {...}}}")
        return Constraint.json_schema(schema, what="response_format.json_schema.schema")
    return Constraint.json_schema(response_format, what="response_format")
