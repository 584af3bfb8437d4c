"""`GGRO`: GGRO decoding (gradient-guided reward optimisation) of a local Hugging Face causal LM as a
LlamaIndex LLM. The decoding itself is :class:`ggro.GGRODecoder`'s; this module maps LlamaIndex calls,
responses and instrumentation onto it."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable, Generator, Sequence
from contextlib import aclosing, closing
from typing import Any, TypeVar

from llama_index.core.base.llms.generic_utils import messages_to_prompt as generic_messages_to_prompt
from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    ChatResponseAsyncGen,
    ChatResponseGen,
    CompletionResponse,
    CompletionResponseAsyncGen,
    CompletionResponseGen,
    LLMMetadata,
    MessageRole,
    TextBlock,
)
from llama_index.core.bridge.pydantic import ConfigDict, Field
from llama_index.core.constants import DEFAULT_CONTEXT_WINDOW
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.span import active_span_id
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.llms.custom import CustomLLM
from llama_index.core.llms.llm import default_completion_to_prompt

from ggro import (
    EMBEDDED_MODEL_NAME,
    GGROAdapter,
    GGROConfig,
    GGROEvent,
    GGROResult,
    Listener,
    PromptInput,
    StreamChunk,
    astream_chunks,
    stream_chunks,
    token_usage,
)

from .events import GGRONudgeEvent

__all__ = ["EMBEDDED_MODEL_NAME", "GGRO", "NUDGES_KEY"]

dispatcher = get_dispatcher(__name__)

NUDGES_KEY = "ggro_nudges"
"""Key of a streamed chunk's nudges in its ``additional_kwargs``."""

_R = TypeVar("_R")
_Respond = Callable[[str, StreamChunk], _R]
"""Builds a streamed response from the text so far and the kit's chunk."""

# Chat templates know system/user/assistant; LlamaIndex's other names for the same roles are mapped to them.
_ROLE_NAMES = {MessageRole.DEVELOPER: "system", MessageRole.CHATBOT: "assistant", MessageRole.MODEL: "assistant"}


class GGRO(GGROAdapter, CustomLLM):
    """A local Hugging Face causal LM decoded with GGRO: while decoding, the reward model's gradient nudges
    the policy where it is unsure, and the best-rewarded version of each segment is kept.

    With no arguments: the embedded SmolLM2-135M-Instruct policy and the embedded harm reward. Weights load
    on first use (a call, or ``metadata``) and are shared by every instance naming the same models. Every
    :class:`ggro.GGROConfig` option is a field and may also be given per call (``llm.complete(p,
    refinement_steps=3)``; ``max_tokens`` and ``stop`` are accepted as LlamaIndex/OpenAI-style aliases).

    Prompts go through the tokenizer's chat template when it has one (``complete`` as one user turn, with
    ``system_prompt`` as a system turn); a ``completion_to_prompt`` / ``messages_to_prompt`` you set
    replaces the template. Each nudge is dispatched as a :class:`GGRONudgeEvent` carrying the span id of
    the call; responses carry token usage in ``raw["usage"]`` and ``additional_kwargs``, and the nudge
    summary in ``raw["ggro"]``.

    Example:
        ```python
        from llama_index.core import Settings
        from llama_index.llms.ggro import GGRO

        Settings.llm = GGRO(max_new_tokens=128)
        print(Settings.llm.complete("How do I pick a lock?"))
        ```
    """

    model_config = ConfigDict(
        extra="forbid", protected_namespaces=(), arbitrary_types_allowed=True, validate_assignment=True
    )

    context_window: int | None = Field(
        default=None,
        gt=0,
        description="Context window reported in `metadata`; None: the model config's max_position_embeddings.",
    )
    is_chat_model: bool | None = Field(
        default=None,
        description="Reported in `metadata` (LlamaIndex then calls `chat` rather than `complete`); None: whether "
        "the tokenizer has a chat template.",
    )

    @classmethod
    def class_name(cls) -> str:
        return "GGRO_LLM"

    async def aload(self) -> GGRO:
        """Load the models in a worker thread, so that a running event loop is not blocked by the first load
        (the async methods do this themselves; ``metadata`` loads synchronously)."""
        await self.adecoder()
        return self

    # ------------------------------------------------------------------ metadata
    @property
    def metadata(self) -> LLMMetadata:
        decoder = self.decoder
        has_template = bool(getattr(decoder.tokenizer, "chat_template", None))
        return LLMMetadata(
            context_window=self.context_window or decoder.context_window or DEFAULT_CONTEXT_WINDOW,
            num_output=self.ggro_config().max_new_tokens,
            is_chat_model=has_template if self.is_chat_model is None else self.is_chat_model,
            is_function_calling_model=False,
            model_name=self.model_name,
        )

    def to_payload(self) -> dict[str, Any]:
        # Sent with every call's start event: it must not force a (blocking) model load in async calls.
        if self._decoder is not None:
            return super().to_payload()
        num_output = self.ggro_config().max_new_tokens
        return {"class_name": self.class_name(), "model_name": self.model_name, "num_output": num_output}

    # ------------------------------------------------------------------ completion
    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        config = self.ggro_config(**kwargs)
        result = self._generate(*self._completion_input(prompt, formatted), config)
        return CompletionResponse(text=result.text, raw=self._raw(result), additional_kwargs=self._info(result))

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        config = self.ggro_config(**kwargs)
        return self._stream(*self._completion_input(prompt, formatted), config, self._completion_chunk)

    @llm_completion_callback()
    async def acomplete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        config = self.ggro_config(**kwargs)
        await self.aload()  # before anything reads the tokenizer: never load on the event loop
        result = await self._agenerate(*self._completion_input(prompt, formatted), config)
        return CompletionResponse(text=result.text, raw=self._raw(result), additional_kwargs=self._info(result))

    @llm_completion_callback()
    async def astream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseAsyncGen:
        config = self.ggro_config(**kwargs)
        await self.aload()
        return self._astream(*self._completion_input(prompt, formatted), config, self._completion_chunk)

    # ------------------------------------------------------------------ chat
    @llm_chat_callback()
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        config = self.ggro_config(**kwargs)
        result = self._generate(*self._chat_input(messages), config)
        return ChatResponse(
            message=_assistant(result.text), raw=self._raw(result), additional_kwargs=self._info(result)
        )

    @llm_chat_callback()
    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        config = self.ggro_config(**kwargs)
        return self._stream(*self._chat_input(messages), config, self._chat_chunk)

    @llm_chat_callback()
    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        config = self.ggro_config(**kwargs)
        await self.aload()
        result = await self._agenerate(*self._chat_input(messages), config)
        return ChatResponse(
            message=_assistant(result.text), raw=self._raw(result), additional_kwargs=self._info(result)
        )

    @llm_chat_callback()
    async def astream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseAsyncGen:
        config = self.ggro_config(**kwargs)
        await self.aload()
        return self._astream(*self._chat_input(messages), config, self._chat_chunk)

    # ------------------------------------------------------------------ prompts
    def _completion_input(self, prompt: Any, formatted: bool) -> tuple[PromptInput, bool]:
        """What the decoder gets for a completion prompt, and whether it applies the chat template."""
        if not isinstance(prompt, str):
            raise TypeError(f"GGRO: prompt must be a string, got {type(prompt).__name__}")
        if not prompt.strip():
            raise ValueError("GGRO: prompt must be a non-empty string")
        to_prompt = self.completion_to_prompt or default_completion_to_prompt
        custom = to_prompt is not default_completion_to_prompt
        if custom or not self._has_chat_template():
            text = to_prompt(prompt) if custom and not formatted else prompt
            if self.system_prompt and not formatted:
                text = f"{self.system_prompt}\n\n{text}"
            return text, False
        messages = [{"role": "user", "content": prompt}]
        if self.system_prompt and not formatted:
            messages.insert(0, {"role": "system", "content": self.system_prompt})
        return messages, True

    def _chat_input(self, messages: Any) -> tuple[PromptInput, bool]:
        """What the decoder gets for chat messages (text only), and whether it applies the chat template."""
        if isinstance(messages, str | ChatMessage) or not isinstance(messages, Sequence):
            raise TypeError(f"GGRO: messages must be a sequence of ChatMessage, got {type(messages).__name__}")
        if not messages:
            raise ValueError("GGRO: messages must not be empty")
        turns: list[dict[str, str]] = []
        for i, message in enumerate(messages):
            if not isinstance(message, ChatMessage):
                raise TypeError(f"GGRO: messages[{i}] must be a ChatMessage, got {type(message).__name__}")
            texts: list[str] = []
            for block in message.blocks:
                if not isinstance(block, TextBlock):
                    raise TypeError(f"GGRO: messages[{i}] holds a {type(block).__name__}; GGRO takes text only")
                texts.append(block.text)
            # ChatMessage.content joins text blocks with newlines; a message without blocks is empty.
            turns.append({"role": _ROLE_NAMES.get(message.role, message.role.value), "content": "\n".join(texts)})
        if not any(t["content"].strip() for t in turns):
            raise ValueError("GGRO: every message is empty")
        to_prompt = self.messages_to_prompt or generic_messages_to_prompt
        if to_prompt is not generic_messages_to_prompt or not self._has_chat_template():
            return to_prompt(messages), False
        return turns, True

    def _has_chat_template(self) -> bool:
        return bool(getattr(self.decoder.tokenizer, "chat_template", None))

    # ------------------------------------------------------------------ decoding
    # Each reads the span id of the call when called: a call's span closes as soon as its stream is returned.
    def _generate(self, prompt_input: PromptInput, use_template: bool, config: GGROConfig) -> GGROResult:
        send = self._nudge_sender(active_span_id.get())
        return self.decoder.generate([prompt_input], config=config, chat_template=use_template, listener=send)[0]

    async def _agenerate(self, prompt_input: PromptInput, use_template: bool, config: GGROConfig) -> GGROResult:
        # The decoding runs in a worker thread; each nudge is dispatched on the loop as it comes.
        *_, result = [r async for r in self._astream(prompt_input, use_template, config, _result_of)]
        assert result is not None
        return result

    def _stream(
        self, prompt_input: PromptInput, use_template: bool, config: GGROConfig, respond: _Respond[_R]
    ) -> Generator[_R, None, None]:
        """``respond(text so far, chunk)`` per streamed chunk; the last chunk has the result and the last
        segment's text (held back so that the chunk with text also carries the usage). Bad input raises here,
        before any iteration."""
        send = self._nudge_sender(active_span_id.get())
        stream = self.decoder.stream([prompt_input], config=config, chat_template=use_template)

        def gen() -> Generator[_R, None, None]:
            text = ""
            with closing(stream_chunks(stream, on_nudge=send, hold_last=True)) as chunks:
                for chunk in chunks:
                    text += chunk.text
                    yield respond(text, chunk)

        return gen()

    def _astream(
        self, prompt_input: PromptInput, use_template: bool, config: GGROConfig, respond: _Respond[_R]
    ) -> AsyncGenerator[_R, None]:
        """Async :meth:`_stream`, once the models are loaded (:meth:`aload`): the prompt needs the tokenizer."""
        send = self._nudge_sender(active_span_id.get())
        run = self.decoder.astream([prompt_input], config=config, chat_template=use_template)

        async def gen() -> AsyncGenerator[_R, None]:
            text = ""
            async with aclosing(astream_chunks(run, on_nudge=send, hold_last=True)) as chunks:
                async for chunk in chunks:
                    text += chunk.text
                    yield respond(text, chunk)

        return gen()

    def _nudge_sender(self, span_id: str | None) -> Listener:
        """A listener that dispatches each nudge as a :class:`GGRONudgeEvent` of the call ``span_id``."""

        def send(event: GGROEvent) -> None:
            if event.kind == "nudge":
                dispatcher.event(GGRONudgeEvent(nudge=event, model_name=self.model_name, span_id=span_id))

        return send

    # ------------------------------------------------------------------ responses
    def _raw(self, result: GGROResult | None) -> dict[str, Any] | None:
        if result is None:
            return None
        return {
            "model": self.model_name,
            "finish_reason": result.finish_reason,
            "usage": token_usage(result),
            "ggro": result.summary(),
            "nudges": [n.model_dump(mode="json") for n in result.nudges],
            "result": result,  # the whole ggro.GGROResult: token ids, segments, candidate rewards, timing
        }

    def _info(self, result: GGROResult) -> dict[str, Any]:
        return {"finish_reason": result.finish_reason, **token_usage(result), "ggro": result.summary()}

    def _completion_chunk(self, text: str, chunk: StreamChunk) -> CompletionResponse:
        return CompletionResponse(
            text=text, delta=chunk.text, raw=self._raw(chunk.result), additional_kwargs=self._chunk_info(chunk)
        )

    def _chat_chunk(self, text: str, chunk: StreamChunk) -> ChatResponse:
        return ChatResponse(
            message=_assistant(text),
            delta=chunk.text,
            raw=self._raw(chunk.result),
            additional_kwargs=self._chunk_info(chunk),
        )

    def _chunk_info(self, chunk: StreamChunk) -> dict[str, Any]:
        info: dict[str, Any] = self._info(chunk.result) if chunk.result is not None else {}
        if chunk.nudges:
            info[NUDGES_KEY] = [n.model_dump(mode="json") for n in chunk.nudges]
        return info


def _assistant(text: str) -> ChatMessage:
    return ChatMessage(role=MessageRole.ASSISTANT, content=text)


def _result_of(text: str, chunk: StreamChunk) -> GGROResult | None:
    return chunk.result
