"""ggro.prompting with tools: templates that take tools, the documented fallback, tool calls and results through
templates, truncation of long histories, and token counting."""

from __future__ import annotations

from typing import Any

import pytest

from ggro.prompting import (
    TOOL_SYSTEM_PROMPT,
    _checked_messages,
    count_prompt_tokens,
    encode_prompt,
    template_supports_tools,
    tool_system_prompt,
    truncate_messages,
)
from ggro.testing import HERMES_CHAT_TEMPLATE, MULTIPLY_TOOL, tiny_tokenizer
from ggro.tools import parse_tool_calls

HERMES_TEMPLATE = HERMES_CHAT_TEMPLATE
# ChatML that refuses roles other than system/user/assistant (as many templates do with raise_exception).
STRICT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('Unknown role: ' + message['role']) }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
# ChatML without a system role (as Gemma's templates).
NO_SYSTEM_TEMPLATE = STRICT_TEMPLATE.replace("['system', 'user', 'assistant']", "['user', 'assistant']")

MULTIPLY = MULTIPLY_TOOL["function"]
MULTIPLY_JSON = (
    '{"type": "function", "function": {"name": "multiply", "description": "Multiply two integers.", "parameters": '
    '{"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}, "required": ["a", "b"]}}}'
)
CALL = {"id": "call_1", "type": "function", "function": {"name": "multiply", "arguments": '{"a": 17, "b": 23}'}}
CALL_TEXT = '<tool_call>\n{"name": "multiply", "arguments": {"a": 17, "b": 23}}\n</tool_call>'
AGENT_CHAT: list[dict[str, Any]] = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is 17 times 23?"},
    {"role": "assistant", "content": None, "tool_calls": [CALL]},
    {"role": "tool", "tool_call_id": "call_1", "content": "391"},
]


def tokenizer_with(template: str | None) -> Any:
    tokenizer = tiny_tokenizer()
    tokenizer.chat_template = template
    return tokenizer


def rendered(tokenizer: Any, prompt: Any, **kwargs: Any) -> str:
    return str(tokenizer.decode(encode_prompt(tokenizer, prompt, **kwargs)))


# ---------------------------------------------------------------------------------- template capabilities
def test_templates_that_take_tools_are_detected_and_the_answer_cached() -> None:
    hermes = tokenizer_with(HERMES_TEMPLATE)
    assert template_supports_tools(hermes) is True
    assert template_supports_tools(tiny_tokenizer()) is False
    assert template_supports_tools(tokenizer_with(None)) is False
    calls = 0
    original = hermes.apply_chat_template

    def counting(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        return original(*args, **kwargs)

    hermes.apply_chat_template = counting
    assert template_supports_tools(hermes) is True
    assert calls == 0  # cached
    hermes.chat_template = STRICT_TEMPLATE  # a new template is probed again
    assert template_supports_tools(hermes) is False
    assert calls == 1


# ---------------------------------------------------------------------------------- through the template
def test_tools_calls_and_results_go_through_a_template_that_takes_them() -> None:
    hermes = tokenizer_with(HERMES_TEMPLATE)
    assert rendered(hermes, AGENT_CHAT, tools=[MULTIPLY]) == (
        "<|im_start|>system\nBe brief.\n\n# Tools\n<tools>\n"
        + MULTIPLY_JSON
        + '\n</tools>\nCall a tool as <tool_call>\n{"name": ..., "arguments": ...}\n</tool_call><|im_end|>\n'
        "<|im_start|>user\nWhat is 17 times 23?<|im_end|>\n"
        "<|im_start|>assistant\n" + CALL_TEXT + "<|im_end|>\n"
        "<|im_start|>user\n<tool_response>\n391\n</tool_response><|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_a_rendered_tool_call_parses_back_to_the_same_call() -> None:
    arguments = {"a": 17, "b": 23}
    for template in (HERMES_TEMPLATE, None):  # the template's own rendering and the fallback's
        tokenizer = tokenizer_with(template) if template else tiny_tokenizer()
        text = rendered(tokenizer, AGENT_CHAT[:3], tools=[MULTIPLY])
        turn = text.split("<|im_start|>assistant\n")[1].split("<|im_end|>")[0]
        parsed = parse_tool_calls(turn, tools=[MULTIPLY])
        assert [(c.name, c.arguments) for c in parsed.tool_calls] == [("multiply", arguments)]
        assert parsed.content == ""


# ---------------------------------------------------------------------------------- the fallback
def test_the_fallback_merges_the_tool_prompt_into_the_system_message() -> None:
    tiny = tiny_tokenizer()
    instructions = tool_system_prompt([MULTIPLY])
    assert instructions == TOOL_SYSTEM_PROMPT.replace("{tools}", MULTIPLY_JSON)
    assert '<tool_call>\n{"name": <function-name>, "arguments": <arguments-as-a-JSON-object>}\n</tool_call>' in (
        instructions
    )
    assert rendered(tiny, AGENT_CHAT, tools=[MULTIPLY]) == (
        f"<|im_start|>system\nBe brief.\n\n{instructions}<|im_end|>\n"
        "<|im_start|>user\nWhat is 17 times 23?<|im_end|>\n"
        f"<|im_start|>assistant\n{CALL_TEXT}<|im_end|>\n"
        "<|im_start|>tool\n391<|im_end|>\n"  # the template renders any role: the result stays a tool turn
        "<|im_start|>assistant\n"
    )
    assert rendered(tiny, "What is 17 times 23?", tools=[MULTIPLY]) == (
        f"<|im_start|>system\n{instructions}<|im_end|>\n<|im_start|>user\nWhat is 17 times 23?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert rendered(tiny, "Hi", tools=[MULTIPLY], chat_template=False) == f"{instructions}\n\nHi"


def test_tool_results_become_a_user_turn_where_the_template_has_no_tool_role() -> None:
    strict = tokenizer_with(STRICT_TEMPLATE)
    chat = [
        *AGENT_CHAT[1:3],
        {"role": "tool", "tool_call_id": "call_1", "content": "391"},
        {"role": "tool", "tool_call_id": "call_2", "content": "7"},
    ]
    assert rendered(strict, chat) == (
        "<|im_start|>user\nWhat is 17 times 23?<|im_end|>\n"
        f"<|im_start|>assistant\n{CALL_TEXT}<|im_end|>\n"
        "<|im_start|>user\n<tool_response>\n391\n</tool_response>\n<tool_response>\n7\n</tool_response><|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_without_a_system_role_the_tool_prompt_opens_the_first_user_turn() -> None:
    text = rendered(tokenizer_with(NO_SYSTEM_TEMPLATE), "Hi", tools=[MULTIPLY])
    assert text == f"<|im_start|>user\n{tool_system_prompt([MULTIPLY])}\n\nHi<|im_end|>\n<|im_start|>assistant\n"


def test_assistant_text_and_calls_are_kept_together() -> None:
    chat = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Let me compute.", "tool_calls": [{"name": "multiply", "args": {"a": 1}}]},
    ]
    assert rendered(tiny_tokenizer(), chat) == (
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nLet me compute.\n<tool_call>\n"
        '{"name": "multiply", "arguments": {"a": 1}}\n</tool_call><|im_end|>\n<|im_start|>assistant\n'
    )


# ---------------------------------------------------------------------------------- message checks
def test_tool_messages_are_checked_and_completed() -> None:
    messages = _checked_messages(AGENT_CHAT)
    assert messages[2] == {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "multiply", "arguments": {"a": 17, "b": 23}}}
        ],
    }
    assert messages[3]["name"] == "multiply"  # from the call it answers
    assert AGENT_CHAT[2]["content"] is None  # the caller's messages are not changed


@pytest.mark.parametrize(
    ("message", "error", "text"),
    [
        (
            {"role": "user", "content": "Hi", "tool_calls": [CALL]},
            ValueError,
            "prompt: message 0 tool_calls: only assistant",
        ),
        (
            {"role": "assistant", "content": None, "tool_calls": "x"},
            TypeError,
            "prompt: message 0 tool_calls: expected a list",
        ),
        (
            {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "f", "arguments": "{a"}}]},
            ValueError,
            "prompt: message 0 tool_calls[0].function.arguments: not valid JSON",
        ),
        (
            {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "f", "arguments": "[1]"}}]},
            ValueError,
            "prompt: message 0 tool_calls[0].function.arguments: expected a JSON object, got list",
        ),
        (
            {"role": "assistant", "content": "", "tool_calls": [{"function": {"arguments": {}}}]},
            ValueError,
            "prompt: message 0 tool_calls[0].function.name: expected a tool name, got None",
        ),
        (
            {"role": "tool", "content": "1", "tool_call_id": 3},
            TypeError,
            "prompt: message 0 tool_call_id: expected a string",
        ),
        (
            {"role": "assistant", "content": None},
            TypeError,
            "prompt: message 0 needs string 'role' and 'content' fields",
        ),
        ({"role": "assistant", "content": "", "tool_calls": []}, ValueError, "prompt: every message is empty"),
    ],
)
def test_bad_tool_messages_say_what_is_wrong(message: dict[str, Any], error: type[Exception], text: str) -> None:
    with pytest.raises(error) as raised:
        encode_prompt(tiny_tokenizer(), [message])
    assert str(raised.value).startswith(text)


def test_bad_tools_are_refused_before_rendering() -> None:
    with pytest.raises(ValueError, match=r"tools\[0\].parameters: must be a JSON Schema of type 'object'"):
        encode_prompt(tiny_tokenizer(), "Hi", tools=[{"name": "f", "parameters": {"type": "string"}}])


# ---------------------------------------------------------------------------------- truncation
LONG_CHAT: list[dict[str, Any]] = [
    {"role": "system", "content": "S"},
    {"role": "user", "content": "old question " * 5},
    {"role": "assistant", "content": "old answer " * 5},
    {"role": "user", "content": "What is 17 times 23?"},
    {"role": "assistant", "content": "", "tool_calls": [CALL]},
    {"role": "tool", "tool_call_id": "call_1", "content": "391"},
    {"role": "system", "content": "Answer now."},
    {"role": "assistant", "content": "It is 391."},
    {"role": "user", "content": "Thanks"},
]


def _size(tokenizer: Any, messages: list[dict[str, Any]]) -> int:
    return len(encode_prompt(tokenizer, messages))


def test_truncation_drops_the_oldest_turns_and_keeps_system_and_last_user() -> None:
    tiny = tiny_tokenizer()
    full = _size(tiny, LONG_CHAT)
    keep_from_3 = [LONG_CHAT[0], *LONG_CHAT[3:]]
    assert truncate_messages(tiny, LONG_CHAT, full) == LONG_CHAT
    assert truncate_messages(tiny, LONG_CHAT, full - 1) == [LONG_CHAT[0], *LONG_CHAT[2:]]
    assert truncate_messages(tiny, LONG_CHAT, _size(tiny, keep_from_3)) == keep_from_3
    from_call = [LONG_CHAT[0], *LONG_CHAT[4:]]
    assert truncate_messages(tiny, LONG_CHAT, _size(tiny, keep_from_3) - 1) == from_call
    # the tool-call turn goes with its result
    without_call = [LONG_CHAT[0], *LONG_CHAT[6:]]
    assert truncate_messages(tiny, LONG_CHAT, _size(tiny, from_call) - 1) == without_call
    minimal = [LONG_CHAT[0], LONG_CHAT[6], LONG_CHAT[8]]
    assert truncate_messages(tiny, LONG_CHAT, _size(tiny, minimal)) == minimal
    with pytest.raises(ValueError, match=r"prompt: \d+ tokens do not fit the model's context window of 10 tokens"):
        truncate_messages(tiny, LONG_CHAT, 9)


def test_encode_prompt_truncates_only_when_asked() -> None:
    tiny = tiny_tokenizer()
    keep_from_3 = [LONG_CHAT[0], *LONG_CHAT[3:]]
    window = _size(tiny, keep_from_3) + 1
    assert encode_prompt(tiny, LONG_CHAT, context_window=window, truncate=True) == encode_prompt(tiny, keep_from_3)
    full = _size(tiny, LONG_CHAT)
    with pytest.raises(ValueError, match=f"prompt: {full} tokens do not fit the model's context window of {window}"):
        encode_prompt(tiny, LONG_CHAT, context_window=window)
    minimal = _size(tiny, [LONG_CHAT[0], LONG_CHAT[6], LONG_CHAT[8]])
    with pytest.raises(ValueError, match=f"prompt: {minimal} tokens do not fit the model's context window of 20 "):
        encode_prompt(tiny, LONG_CHAT, context_window=20, truncate=True)
    with pytest.raises(ValueError, match="prompt: 21 tokens do not fit the model's context window of 5 tokens"):
        encode_prompt(tiny, "Hi", context_window=5, truncate=True)  # nothing to drop in a one-message prompt


def test_truncation_counts_the_tools() -> None:
    tiny = tiny_tokenizer()
    keep_from_3 = [LONG_CHAT[0], *LONG_CHAT[3:]]
    budget = count_prompt_tokens(tiny, keep_from_3, [MULTIPLY])
    assert truncate_messages(tiny, LONG_CHAT, budget, tools=[MULTIPLY]) == keep_from_3
    assert truncate_messages(tiny, LONG_CHAT, budget) == LONG_CHAT  # the same budget without tools fits all


def test_truncation_skips_histories_the_template_refuses() -> None:
    strict_roles = tokenizer_with(
        "{% if messages[0]['role'] == 'system' and messages[1]['role'] != 'user' %}"
        "{{ raise_exception('a system message must be followed by a user message') }}{% endif %}" + STRICT_TEMPLATE
    )
    chat = [LONG_CHAT[0], LONG_CHAT[1], LONG_CHAT[2], {"role": "user", "content": "Hi"}]
    # dropping only the old question would leave system -> assistant: refused, so the answer goes as well
    assert truncate_messages(strict_roles, chat, _size(strict_roles, chat) - 1) == [chat[0], chat[3]]


# ---------------------------------------------------------------------------------- counting
def test_token_counts_are_what_the_model_reads() -> None:
    tiny = tiny_tokenizer()
    # one token per character, one per special token: "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert count_prompt_tokens(tiny, "Hi") == 1 + 5 + 2 + 1 + 1 + 1 + 10 == len(encode_prompt(tiny, "Hi"))
    assert count_prompt_tokens(tiny, [{"role": "user", "content": "Hi"}]) == 21
    with_tools = count_prompt_tokens(tiny, "Hi", [MULTIPLY])
    system_turn = 1 + len("system\n") + len(tool_system_prompt([MULTIPLY])) + 1 + 1  # <|im_start|>...<|im_end|>\n
    assert with_tools == 21 + system_turn
    assert count_prompt_tokens(tiny, "Hi", chat_template=False) == 2
