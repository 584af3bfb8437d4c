"""Prompts in, token ids out: a prompt is checked here (shape, Unicode, length) so that every bad input fails
before any model work, with a message that says which prompt or message is wrong."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from transformers import PreTrainedTokenizerBase

__all__ = ["PromptInput", "as_batch", "check_prompt_length", "check_unicode", "encode_prompt", "prompt_text"]

PromptInput = str | Sequence[dict[str, Any]]


def encode_prompt(
    tokenizer: PreTrainedTokenizerBase,
    prompt: PromptInput,
    *,
    chat_template: bool | None = None,
    context_window: int | None = None,
) -> list[int]:
    """Token ids of a prompt: a string (wrapped as one user message when the tokenizer has a chat template)
    or a list of chat messages."""
    use_template = bool(getattr(tokenizer, "chat_template", None)) if chat_template is None else chat_template
    if isinstance(prompt, str):
        if not prompt.strip():
            raise ValueError("prompt: must be a non-empty string")
        check_unicode(prompt, "prompt")
        if not use_template:
            ids = list(tokenizer(prompt, add_special_tokens=True)["input_ids"])
            return check_prompt_length(ids, context_window)
        messages: list[dict[str, Any]] = [{"role": "user", "content": prompt}]
    else:
        messages = _checked_messages(prompt)
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("prompt: chat messages need a tokenizer with a chat template")
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    return check_prompt_length(ids, context_window)


def _checked_messages(prompt: Sequence[Any]) -> list[dict[str, Any]]:
    """Copies of a chat's messages, each a dict with string ``role`` and ``content``, not all empty."""
    for i, m in enumerate(prompt):
        if not isinstance(m, Mapping):
            raise TypeError(f"prompt: message {i} must be a dict with 'role' and 'content', got {type(m).__name__}")
    messages = [dict(m) for m in prompt]
    if not messages:
        raise ValueError("prompt: the message list is empty")
    for i, m in enumerate(messages):
        if not isinstance(m.get("content"), str) or not isinstance(m.get("role"), str):
            raise TypeError(f"prompt: message {i} needs string 'role' and 'content' fields, got {m!r}")
        check_unicode(m["role"], f"prompt: message {i} role")
        check_unicode(m["content"], f"prompt: message {i} content")
    if not any(m["content"].strip() for m in messages):
        raise ValueError("prompt: every message is empty")
    return messages


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
