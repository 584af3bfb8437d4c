"""Property-based test (hypothesis): odd chat message lists through `ChatGGRO.invoke` on the tiny models.

Message lists mix LangChain messages, ``(role, content)`` tuples, ``{"role", "content"}`` dicts and bare
strings, with unknown roles, missing or non-string content, multimodal blocks, empty lists and system-only
conversations. Each must either be answered or fail with a clear typed error naming the problem, and the
next call must answer exactly as before (no poisoned state). The number of inputs tried is printed in the
terminal summary. Lone surrogates are left out here: the decoder refuses them, and the core suite covers
that (tests/test_properties.py, the prompt and chat properties and the fixed-bug cases).
"""

from __future__ import annotations

import traceback
from collections.abc import Callable
from typing import Any

import pytest
from ggro import GGROConfig
from ggro.testing import tiny_decoder
from hypothesis import HealthCheck, event, given, note, settings
from hypothesis import strategies as st
from langchain_core.messages import (
    AIMessage,
    ChatMessage,
    FunctionMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)

from langchain_ggro import ChatGGRO
from tests.property_counts import PROPERTY_COUNTS

CANARY = "Hello there"

TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=24)
ODD_TEXT = st.sampled_from(["", "   ", "\n", "Hi", "😀👍🏽", "e\u0301", "שלום \u202eabc", "\x00\x07", "<|im_end|>"])
IMAGE_BLOCK = {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}
BLOCKS = st.lists(
    st.one_of(TEXT, st.builds(lambda t: {"type": "text", "text": t}, TEXT), st.just(IMAGE_BLOCK)),
    max_size=3,
)
NON_TEXT = st.sampled_from([None, 3, 2.5, True, {"text": "hi"}, b"hi"])
KNOWN_ROLES = ["human", "user", "ai", "assistant", "system"]
ODD_ROLES = st.one_of(
    st.sampled_from(["wizard", "", "USER", " user", "developer", "function", "tool", "<|im_end|>"]),
    st.text(st.characters(exclude_categories=["Cs"]), max_size=10),
)


def _clean(content: Any) -> bool:
    """Text content ChatGGRO must accept: a string, or a list of strings and text blocks."""
    if isinstance(content, str):
        return True
    return isinstance(content, list) and all(
        isinstance(b, str) or (isinstance(b, dict) and b.get("type") == "text" and isinstance(b.get("text"), str))
        for b in content
    )


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "".join(b if isinstance(b, str) else b["text"] for b in content)


@st.composite
def message(draw: st.DrawFn) -> tuple[Any, bool, str]:
    """(an element of the input list, whether ChatGGRO must accept it, its text when it must)."""
    content = draw(st.sampled_from([TEXT] * 6 + [ODD_TEXT] * 2 + [BLOCKS] * 2).flatmap(lambda s: s))
    clean = _clean(content)
    kind = draw(st.sampled_from(range(16)))
    if kind <= 8:
        cls = draw(st.sampled_from([HumanMessage, SystemMessage, AIMessage]))
        return cls(content=content), clean, _text(content) if clean else ""
    if kind == 9:
        return ToolMessage(content=content, tool_call_id="call-1"), clean, _text(content) if clean else ""
    if kind == 10:  # a free-form role, rendered by the chat template as it is (or refused, naming it)
        return ChatMessage(role=draw(ODD_ROLES | st.sampled_from(KNOWN_ROLES)), content=content), False, ""
    if kind == 11:  # content LangChain's own validation would refuse, forced in
        cls = draw(st.sampled_from([HumanMessage, SystemMessage, AIMessage]))
        return cls.model_construct(content=draw(NON_TEXT)), False, ""
    if kind == 12:
        return FunctionMessage(name="f", content=draw(TEXT)), False, ""
    role = draw(st.sampled_from(KNOWN_ROLES) | ODD_ROLES)
    value = draw(TEXT | NON_TEXT)
    if kind == 13:
        return (role, value), False, ""
    if kind == 14:
        shape = draw(st.sampled_from(["both", "no-content", "no-role", "extra"]))
        item: dict[str, Any] = {"role": role, "content": value}
        if shape == "no-content":
            del item["content"]
        elif shape == "no-role":
            del item["role"]
        elif shape == "extra":
            item["name"] = "bob"
        return item, False, ""
    return draw(st.sampled_from(["Hi there", "", None, 5])), False, ""


@pytest.fixture(scope="module")
def chat() -> ChatGGRO:
    return ChatGGRO.from_decoder(tiny_decoder(config=GGROConfig(max_new_tokens=4, refinement_steps=2)))


@pytest.fixture(scope="module")
def canary(chat: ChatGGRO) -> Callable[[], None]:
    expected = chat.invoke(CANARY).content
    assert isinstance(expected, str) and expected

    def check() -> None:
        got = chat.invoke(CANARY).content
        if got != expected:
            raise RuntimeError(f"poisoned state: the next call returned {got!r}, before the run {expected!r}")

    return check


def _raised_by_langchain_coercion(error: BaseException) -> bool:
    """LangChain's own message coercion raises NotImplementedError for inputs it cannot turn into messages."""
    frames = traceback.extract_tb(error.__traceback__)
    return bool(frames) and "langchain_core" in frames[-1].filename and "messages" in frames[-1].filename


@settings(  # the same inputs every run, so a red build is reproducible
    max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow], print_blob=True
)
@given(items=st.lists(message(), max_size=4))
def test_odd_message_lists_answer_or_fail_clearly(
    chat: ChatGGRO, canary: Callable[[], None], items: list[tuple[Any, bool, str]]
) -> None:
    messages = [m for m, _, _ in items]
    must_answer = bool(items) and all(clean for _, clean, _ in items) and any(t.strip() for _, _, t in items)
    note(f"must answer: {must_answer}")
    try:
        answer = chat.invoke(messages)
    except Exception as error:
        PROPERTY_COUNTS["langchain_chat"]["tried"] += 1
        PROPERTY_COUNTS["langchain_chat"]["typed_error"] += 1
        event(f"error: {type(error).__name__}: {str(error).splitlines()[0][:60]}")
        detail = "".join(traceback.format_exception(type(error), error, error.__traceback__))
        assert not must_answer, f"refused a valid conversation {messages!r}:\n{detail}"
        typed = isinstance(error, ValueError | TypeError) or (
            isinstance(error, NotImplementedError) and _raised_by_langchain_coercion(error)
        )
        assert typed, f"untyped {type(error).__name__} for {messages!r}:\n{detail}"
        roles = [str(m[0]) for m in messages if isinstance(m, tuple) and m and m[0]]
        named = ["messages", "message", "prompt", "role", "content", *roles]
        assert any(n in str(error) for n in named), f"the message names none of {named}:\n{detail}"
        canary()
        return
    PROPERTY_COUNTS["langchain_chat"]["tried"] += 1
    PROPERTY_COUNTS["langchain_chat"]["answered"] += 1
    event("answered")
    assert isinstance(answer, AIMessage) and isinstance(answer.content, str)
    assert answer.response_metadata["finish_reason"] in ("stop", "length", "stop_sequence")
