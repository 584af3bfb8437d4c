"""Prompts in, token ids out: a prompt is checked here (shape, Unicode, length) so that every bad input fails
before any model work, with a message that says which prompt or message is wrong.

Tools and agent histories: ``encode_prompt(..., tools=...)`` renders tool definitions through the tokenizer's
chat template when the template takes ``tools`` (Qwen2.5/Hermes, Llama 3.x, ...; see
:func:`template_supports_tools`). Otherwise it falls back to :data:`TOOL_SYSTEM_PROMPT` (Hermes style: the tools'
JSON signatures inside ``<tools></tools>``, calls asked for as ``<tool_call>{"name": ..., "arguments": ...}
</tool_call>``), merged into the first system message or added as one. Chat messages may carry assistant
``tool_calls`` (OpenAI form; ``arguments`` a dict or a JSON string; ``content`` may then be empty or None) and
``{"role": "tool", "content": ..., "tool_call_id": ..., "name": ...}`` results. The template gets every call's
``arguments`` as a dict; a template that does not render tool calls gets them as ``<tool_call>`` text in the
assistant turn, and one that does not render ``tool`` messages gets the results as a user turn of
``<tool_response>`` blocks. ``truncate=True`` cuts a history that is too long from the left (system messages and
the last user message kept) instead of failing.
"""

from __future__ import annotations

import json
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from transformers import PreTrainedTokenizerBase

from .tools import ToolCall, normalize_tools

__all__ = [
    "TOOL_SYSTEM_PROMPT",
    "PromptInput",
    "as_batch",
    "check_prompt_length",
    "check_unicode",
    "count_prompt_tokens",
    "encode_prompt",
    "prompt_text",
    "template_supports_tools",
    "tool_system_prompt",
    "truncate_messages",
]

PromptInput = str | Sequence[dict[str, Any]]

ToolsInput = Iterable[Mapping[str, Any]] | None

TOOL_SYSTEM_PROMPT = """# Tools

You can call functions to help with the user's request. Their signatures (JSON Schema) are listed inside \
<tools></tools> tags:
<tools>
{tools}
</tools>

To call a function, write a JSON object with its name and arguments inside <tool_call></tool_call> tags, one block \
per call:
<tool_call>
{"name": <function-name>, "arguments": <arguments-as-a-JSON-object>}
</tool_call>
When you can answer without a function, for example once a function's result has been given, answer in plain \
text."""
"""The tool instructions used when the chat template does not take ``tools``; ``{tools}`` is replaced by one
JSON line per tool (see :func:`tool_system_prompt`)."""


def tool_system_prompt(tools: ToolsInput) -> str:
    """:data:`TOOL_SYSTEM_PROMPT` listing ``tools`` (each as its OpenAI JSON form, one per line)."""
    lines = "\n".join(json.dumps(tool, ensure_ascii=False) for tool in normalize_tools(tools))
    return TOOL_SYSTEM_PROMPT.replace("{tools}", lines)


def encode_prompt(
    tokenizer: PreTrainedTokenizerBase,
    prompt: PromptInput,
    *,
    tools: ToolsInput = None,
    chat_template: bool | None = None,
    context_window: int | None = None,
    truncate: bool = False,
) -> list[int]:
    """Token ids of a prompt: a string (wrapped as one user message when the tokenizer has a chat template)
    or a list of chat messages, with the generation prompt of the assistant's turn.

    ``tools``: OpenAI tool dicts (or bare function dicts) offered to the model, through the chat template when it
    takes them, else through :data:`TOOL_SYSTEM_PROMPT` (a plain-text prompt without a template gets that text
    before it). ``truncate``: when the prompt leaves no room for a response in ``context_window``, drop the oldest
    messages that are not system messages and not the last user message (an assistant tool-call turn together
    with its tool results) until it does; when even that does not fit, the usual length error.
    """
    tool_list = normalize_tools(tools)
    use_template = bool(getattr(tokenizer, "chat_template", None)) if chat_template is None else chat_template
    if isinstance(prompt, str):
        if not prompt.strip():
            raise ValueError("prompt: must be a non-empty string")
        check_unicode(prompt, "prompt")
        if not use_template:
            text = f"{tool_system_prompt(tool_list)}\n\n{prompt}" if tool_list else prompt
            ids = list(tokenizer(text, add_special_tokens=True)["input_ids"])
            return check_prompt_length(ids, context_window)
        messages: list[dict[str, Any]] = [{"role": "user", "content": prompt}]
    else:
        messages = _checked_messages(prompt)
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("prompt: chat messages need a tokenizer with a chat template")
    ids = _encode_messages(tokenizer, messages, tool_list)
    if truncate and context_window is not None and len(ids) >= context_window:
        ids = _truncate(tokenizer, messages, tool_list, context_window - 1, ids)[1]
    return check_prompt_length(ids, context_window)


def count_prompt_tokens(
    tokenizer: PreTrainedTokenizerBase,
    prompt: PromptInput,
    tools: ToolsInput = None,
    *,
    chat_template: bool | None = None,
) -> int:
    """How many tokens the model reads for ``prompt`` (and ``tools``): what :func:`encode_prompt` gives, the
    assistant turn's generation prompt included (for a wrapper's ``get_num_tokens_from_messages``)."""
    return len(encode_prompt(tokenizer, prompt, tools=tools, chat_template=chat_template))


def truncate_messages(
    tokenizer: PreTrainedTokenizerBase,
    messages: Sequence[dict[str, Any]],
    max_prompt_tokens: int,
    tools: ToolsInput = None,
) -> list[dict[str, Any]]:
    """The messages (shallow copies) that remain when the oldest are dropped until the rendered prompt (with
    ``tools`` and the generation prompt) has at most ``max_prompt_tokens`` tokens. Every system message and the
    last user message are kept; an assistant tool-call turn is dropped together with its tool results. Raises the
    usual length ``ValueError`` when even the kept messages are too long."""
    if isinstance(max_prompt_tokens, bool) or not isinstance(max_prompt_tokens, int) or max_prompt_tokens < 1:
        raise ValueError(f"max_prompt_tokens: expected a positive integer, got {max_prompt_tokens!r}")
    if isinstance(messages, str):
        raise TypeError("prompt: truncate_messages needs a list of chat messages, got a string")
    checked = _checked_messages(messages)
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("prompt: chat messages need a tokenizer with a chat template")
    tool_list = normalize_tools(tools)
    ids = _encode_messages(tokenizer, checked, tool_list)
    if len(ids) <= max_prompt_tokens:
        return [dict(m) for m in messages]
    kept = _truncate(tokenizer, checked, tool_list, max_prompt_tokens, ids)[0]
    return [dict(messages[i]) for i in kept]


# -------------------------------------------------------------------------------------------- messages
def _checked_messages(prompt: Sequence[Any]) -> list[dict[str, Any]]:
    """Copies of a chat's messages, each a dict with string ``role`` and ``content``, not all empty; assistant
    ``tool_calls`` in the OpenAI form with ``arguments`` as a dict (content then may be empty or None), tool
    results with their string ``tool_call_id`` / ``name`` (the name filled in from the call when missing)."""
    for i, m in enumerate(prompt):
        if not isinstance(m, Mapping):
            raise TypeError(f"prompt: message {i} must be a dict with 'role' and 'content', got {type(m).__name__}")
    messages = [dict(m) for m in prompt]
    if not messages:
        raise ValueError("prompt: the message list is empty")
    call_names: dict[str, str] = {}
    for i, m in enumerate(messages):
        calls = m.get("tool_calls")
        if calls is not None and m.get("content") is None:
            m["content"] = ""
        if not isinstance(m.get("content"), str) or not isinstance(m.get("role"), str):
            raise TypeError(f"prompt: message {i} needs string 'role' and 'content' fields, got {m!r}")
        check_unicode(m["role"], f"prompt: message {i} role")
        check_unicode(m["content"], f"prompt: message {i} content")
        if calls is not None:
            if m["role"] != "assistant":
                raise ValueError(f"prompt: message {i} tool_calls: only assistant messages carry tool calls")
            m["tool_calls"] = _checked_tool_calls(calls, i)
            if not m["tool_calls"]:
                del m["tool_calls"]
            call_names.update((c["id"], c["function"]["name"]) for c in m.get("tool_calls", ()) if "id" in c)
        if m["role"] == "tool":
            for key in ("tool_call_id", "name"):
                if m.get(key) is not None and not isinstance(m[key], str):
                    raise TypeError(f"prompt: message {i} {key}: expected a string, got {type(m[key]).__name__}")
            if m.get("name") is None and m.get("tool_call_id") in call_names:
                m["name"] = call_names[m["tool_call_id"]]
    if not any(m["content"].strip() or m.get("tool_calls") for m in messages):
        raise ValueError("prompt: every message is empty")
    return messages


def _checked_tool_calls(calls: Any, i: int) -> list[dict[str, Any]]:
    """An assistant message's tool calls as ``{"id", "type": "function", "function": {"name", "arguments": dict}}``
    (from the OpenAI form, a flat ``{"id", "name", "arguments" | "args"}`` dict or :class:`ggro.tools.ToolCall`)."""
    if isinstance(calls, str | bytes | Mapping) or not isinstance(calls, Sequence):
        raise TypeError(f"prompt: message {i} tool_calls: expected a list of tool calls, got {type(calls).__name__}")
    checked: list[dict[str, Any]] = []
    for j, call in enumerate(calls):
        where = f"prompt: message {i} tool_calls[{j}]"
        if isinstance(call, ToolCall):
            call = {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}
        if not isinstance(call, Mapping):
            raise TypeError(f"{where}: expected a dict, got {type(call).__name__}")
        function = call.get("function", call)
        if not isinstance(function, Mapping):
            raise TypeError(f"{where}.function: expected a dict with 'name' and 'arguments'")
        name = function.get("name")
        if not isinstance(name, str) or not name:
            raise ValueError(f"{where}.function.name: expected a tool name, got {name!r}")
        arguments = function.get("arguments", function.get("args"))
        if arguments is None or (isinstance(arguments, str) and not arguments.strip()):
            arguments = {}
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments)
            except json.JSONDecodeError as error:
                raise ValueError(f"{where}.function.arguments: not valid JSON ({error.msg})") from None
        if not isinstance(arguments, Mapping):
            raise ValueError(f"{where}.function.arguments: expected a JSON object, got {type(arguments).__name__}")
        entry: dict[str, Any] = {"type": "function", "function": {"name": name, "arguments": dict(arguments)}}
        call_id = call.get("id")
        if call_id is not None:
            if not isinstance(call_id, str):
                raise TypeError(f"{where}.id: expected a string, got {type(call_id).__name__}")
            entry = {"id": call_id, **entry}
        checked.append(entry)
    return checked


# ------------------------------------------------------------------------------------------- rendering
def _encode_messages(
    tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, Any]], tools: list[dict[str, Any]]
) -> list[int]:
    return list(tokenizer(_render(tokenizer, messages, tools), add_special_tokens=False)["input_ids"])


def _render(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> str:
    """The prompt text: the template's own tool rendering where it has one, the documented fallbacks where not."""
    native_tools = bool(tools) and template_supports_tools(tokenizer)
    prepared = _template_messages(tokenizer, messages)
    extra: dict[str, Any] = {"tools": tools} if native_tools else {}
    if not tools or native_tools:
        return _apply(tokenizer, prepared, **extra)
    instructions = tool_system_prompt(tools)
    system = next((k for k, m in enumerate(prepared) if m["role"] == "system"), None)
    if system is not None:
        prepared[system] = _with_text(prepared[system], instructions, before=False)
        return _apply(tokenizer, prepared)
    try:
        return _apply(tokenizer, [{"role": "system", "content": instructions}, *prepared])
    except Exception:  # a template without a system role: the instructions open the first user turn instead
        user = next((k for k, m in enumerate(prepared) if m["role"] == "user"), None)
        if user is None:
            raise
        prepared[user] = _with_text(prepared[user], instructions, before=True)
        return _apply(tokenizer, prepared)


def _apply(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, Any]], **extra: Any) -> str:
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **extra)
    return str(text)


def _with_text(message: dict[str, Any], text: str, *, before: bool) -> dict[str, Any]:
    content = message["content"]
    if not content.strip():
        return {**message, "content": text}
    return {**message, "content": f"{text}\n\n{content}" if before else f"{content}\n\n{text}"}


def _template_messages(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Messages as the template gets them: tool calls and tool results as text where it does not render them."""
    calls_as_text = any("tool_calls" in m for m in messages) and not _renders_tool_calls(tokenizer)
    results_as_user = any(m["role"] == "tool" for m in messages) and not _renders_tool_results(tokenizer)
    prepared: list[dict[str, Any]] = []
    merging = False  # the last prepared message is a user turn of tool results
    for m in messages:
        if calls_as_text and "tool_calls" in m:
            m = {k: v for k, v in m.items() if k != "tool_calls"} | {
                "content": _calls_text(m["content"], m["tool_calls"])
            }
        elif results_as_user and m["role"] == "tool":
            block = f"<tool_response>\n{m['content']}\n</tool_response>"
            if merging:
                prepared[-1] = {**prepared[-1], "content": prepared[-1]["content"] + "\n" + block}
            else:
                prepared.append({"role": "user", "content": block})
            merging = True
            continue
        merging = False
        prepared.append(dict(m))
    return prepared


def _calls_text(content: str, calls: list[dict[str, Any]]) -> str:
    """An assistant turn's tool calls written the way :data:`TOOL_SYSTEM_PROMPT` asks for them."""
    blocks = [
        "<tool_call>\n"
        + json.dumps({"name": c["function"]["name"], "arguments": c["function"]["arguments"]}, ensure_ascii=False)
        + "\n</tool_call>"
        for c in calls
    ]
    return "\n".join([content.strip(), *blocks] if content.strip() else blocks)


# ---------------------------------------------------------------------------------- template capabilities
_PROBE_TOOL = "ggro_probe_tool_5e1d"
_PROBE_RESULT = "ggro_probe_result_5e1d"
_PROBE_CALL: dict[str, Any] = {
    "id": "call_ggroprobe",
    "type": "function",
    "function": {"name": _PROBE_TOOL, "arguments": {"x": 1}},
}
_PROBES: weakref.WeakKeyDictionary[Any, dict[tuple[str, str], bool]] = weakref.WeakKeyDictionary()


def _probe(tokenizer: PreTrainedTokenizerBase, what: str, render: Callable[[], str], marker: str) -> bool:
    """Whether ``marker`` appears in what the template renders (False when it raises); cached per tokenizer and
    template."""
    template = getattr(tokenizer, "chat_template", None)
    if not template:
        return False
    try:
        cache = _PROBES.setdefault(tokenizer, {})
    except TypeError:  # not weak-referenceable: no cache
        cache = {}
    key = (what, repr(template))
    if key not in cache:
        try:
            cache[key] = marker in render()
        except Exception:
            cache[key] = False
    return cache[key]


def template_supports_tools(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether the tokenizer's chat template renders the ``tools`` it is given (a probe tool's name appears in
    its output); cached per tokenizer and template."""
    parameters = {"type": "object", "properties": {"x": {"type": "integer"}}}
    tool = {"type": "function", "function": {"name": _PROBE_TOOL, "description": "probe", "parameters": parameters}}
    user: list[dict[str, Any]] = [{"role": "user", "content": "Hi"}]
    return _probe(tokenizer, "tools", lambda: _raw(tokenizer, user, tools=[tool]), _PROBE_TOOL)


def _renders_tool_calls(tokenizer: PreTrainedTokenizerBase) -> bool:
    chat: list[dict[str, Any]] = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "", "tool_calls": [_PROBE_CALL]},
    ]
    return _probe(tokenizer, "tool_calls", lambda: _raw(tokenizer, chat), _PROBE_TOOL)


def _renders_tool_results(tokenizer: PreTrainedTokenizerBase) -> bool:
    if _renders_tool_calls(tokenizer):
        call: dict[str, Any] = {"role": "assistant", "content": "", "tool_calls": [_PROBE_CALL]}
    else:
        call = {"role": "assistant", "content": _calls_text("", [_PROBE_CALL])}
    result = {"role": "tool", "tool_call_id": "call_ggroprobe", "name": _PROBE_TOOL, "content": _PROBE_RESULT}
    chat: list[dict[str, Any]] = [{"role": "user", "content": "Hi"}, call, result]
    return _probe(tokenizer, "tool_results", lambda: _raw(tokenizer, chat), _PROBE_RESULT)


def _raw(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, Any]], **extra: Any) -> str:
    return str(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False, **extra))


# ------------------------------------------------------------------------------------------- truncation
def _drop_units(messages: list[dict[str, Any]]) -> list[list[int]]:
    """The messages that may be dropped, oldest first, in the groups they go in: not a system message, not the
    last user message; an assistant tool-call turn with the tool results that follow it."""
    last_user = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=-1)
    units: list[list[int]] = []
    i = 0
    while i < len(messages):
        if messages[i]["role"] == "system" or i == last_user:
            i += 1
            continue
        unit = [i]
        if "tool_calls" in messages[i]:
            while unit[-1] + 1 < len(messages) and messages[unit[-1] + 1]["role"] == "tool":
                unit.append(unit[-1] + 1)
        units.append(unit)
        i = unit[-1] + 1
    return units


def _truncate(
    tokenizer: PreTrainedTokenizerBase,
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]],
    max_tokens: int,
    ids: list[int],
) -> tuple[list[int], list[int]]:
    """(indices of the kept messages, their ids) after dropping the fewest oldest units that make the prompt fit
    ``max_tokens``; a candidate the template refuses (e.g. roles that no longer alternate) is skipped. Raises the
    usual length error (with the shortest accepted rendering's length) when nothing fits."""
    dropped: set[int] = set()
    for unit in _drop_units(messages):
        dropped.update(unit)
        kept = [i for i in range(len(messages)) if i not in dropped]
        try:
            candidate = _encode_messages(tokenizer, [messages[i] for i in kept], tools)
        except Exception:
            continue
        ids = candidate
        if len(ids) <= max_tokens:
            return kept, ids
    check_prompt_length(ids, max_tokens + 1)  # the shortest rendering that the template accepted
    raise AssertionError("unreachable: the prompt fits")  # pragma: no cover


# ----------------------------------------------------------------------------------------------- checks
def check_prompt_length(ids: list[int], context_window: int | None) -> list[int]:
    """``ids`` unchanged when they leave room for at least one response token in ``context_window``."""
    if not ids:
        raise ValueError("prompt: tokenises to no tokens")
    if context_window is not None and len(ids) >= context_window:
        raise ValueError(
            f"prompt: {len(ids)} tokens do not fit the model's context window of {context_window} "
            "tokens (at least one token must remain for the response)"
        )
    return ids


def check_unicode(text: str, what: str) -> None:
    """Refuse text that is not valid Unicode (a lone surrogate, e.g. from a bad decode) before a tokenizer does,
    with an error that says where."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise ValueError(f"{what}: not valid Unicode text (a lone surrogate at index {error.start})") from None


def as_batch(prompts: PromptInput | Sequence[PromptInput]) -> list[PromptInput]:
    """The prompts of a call as a list: one string or one chat is a batch of one."""
    if isinstance(prompts, str):
        return [prompts]
    if isinstance(prompts, bytes | Mapping) or not isinstance(prompts, Iterable):
        raise TypeError(
            f"prompts: expected a string, a list of chat messages or a list of those, got {type(prompts).__name__}"
        )
    items: list[Any] = list(prompts)
    if items and all(isinstance(m, dict) for m in items):
        return [items]  # one chat conversation
    for i, p in enumerate(items):
        if not isinstance(p, str | list | tuple):
            raise TypeError(f"prompts[{i}]: expected a string or a list of chat messages, got {type(p).__name__}")
    return items


def prompt_text(prompt: PromptInput) -> str:
    """The user's words (what text-level rewards judge): the prompt string, or the last user message of a chat."""
    if isinstance(prompt, str):
        return prompt
    messages = list(prompt)
    users = [m for m in messages if m.get("role") == "user"] or messages
    return str(users[-1].get("content", "")) if users else ""
