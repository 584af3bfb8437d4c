"""`ChatGGRO`: GGRO decoding as a LangChain chat model."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from contextvars import ContextVar
from typing import Any, ClassVar, cast

from ggro import GGROResult, StreamChunk, astream_chunks, stream_chunks
from langchain_core.callbacks import (
    AsyncCallbackManager,
    AsyncCallbackManagerForLLMRun,
    BaseCallbackManager,
    CallbackManager,
    CallbackManagerForLLMRun,
    Callbacks,
)
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.language_models.base import LangSmithParams
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    ChatMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import RunnableConfig, ensure_config
from pydantic import ConfigDict

from ._settings import PROVIDER, WRAPPER_CONFIG, GGROSettings, chunk_info, final_chunk_info, generation_info
from .callbacks import AsyncStreamNudgeRelay, StreamNudgeRelay, asend_nudge, nudge_sender

__all__ = ["ChatGGRO", "to_chat_messages"]

# LangChain's `_generate_with_cache` decides to stream with the run manager in hand, then calls `_stream`
# without it; `_should_stream` leaves it here and `_stream` takes it (once), so nudges reach that run.
_RUN_MANAGER_HANDOFF: ContextVar[CallbackManagerForLLMRun | AsyncCallbackManagerForLLMRun | None] = ContextVar(
    "ggro_run_manager_handoff", default=None
)

# Keyword arguments LangChain itself may pass down to `_generate` / `_stream`; they are not GGRO options.
_PLUMBING_KWARGS = ("stream",)


class ChatGGRO(GGROSettings, BaseChatModel):
    """A local Hugging Face chat model decoded with GGRO (gradient-guided reward optimisation).

    Messages are rendered with the tokenizer's chat template (system, user and assistant turns; tool
    messages as a ``tool`` turn). Content must be text: tool calling, structured output and multimodal
    inputs are not supported. With no arguments: the embedded SmolLM2-135M-Instruct and the embedded harm
    reward, loaded on the first call and shared across instances. Every :class:`ggro.GGROConfig` option is
    a field and may be given per call. Each nudge reaches the run's handlers as a ``ggro_nudge`` custom
    event (also when streaming, and in ``astream_events``); ``response_metadata`` holds the model name,
    finish reason, a nudge summary (``ggro``) and the nudges (``ggro_nudges``); ``usage_metadata`` the tokens.

    Example:
        ```python
        from langchain_ggro import ChatGGRO

        chat = ChatGGRO(max_tokens=64)
        chat.invoke([("system", "Be brief."), ("human", "How do I pick a lock?")])
        ```
    """

    model_config: ClassVar[ConfigDict] = ConfigDict(**WRAPPER_CONFIG)

    @property
    def _llm_type(self) -> str:
        return "ggro-chat"

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        return LangSmithParams(**self.ls_params("chat", stop, **kwargs))  # type: ignore[typeddict-item]

    # ------------------------------------------------------------------ generation
    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        conversation = to_chat_messages(messages)
        config = self.ggro_config(stop, **_options(kwargs))
        send = nudge_sender([run_manager] if run_manager else [])
        return self._chat_result(self.decoder.generate([conversation], config=config, listener=send)[0])

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        *_, last = [chunk async for chunk in self._achunks(messages, stop, run_manager, **kwargs)]
        assert last.result is not None
        return self._chat_result(last.result)

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        handed = _take_run_manager()
        if run_manager is None and isinstance(handed, CallbackManagerForLLMRun):
            run_manager = handed
        conversation = to_chat_messages(messages)
        stream = self.decoder.stream([conversation], config=self.ggro_config(stop, **_options(kwargs)))
        # Without a run manager, the stream's relay handler sends each nudge from the chunk that carries it.
        for chunk in stream_chunks(stream, on_nudge=nudge_sender([run_manager] if run_manager else [])):
            yield self._chunk(chunk)

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        handed = _take_run_manager()
        if run_manager is None and isinstance(handed, AsyncCallbackManagerForLLMRun):
            run_manager = handed
        async for chunk in self._achunks(messages, stop, run_manager, **kwargs):
            yield self._chunk(chunk)

    async def _achunks(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None,
        run_manager: AsyncCallbackManagerForLLMRun | None,
        **kwargs: Any,
    ) -> AsyncIterator[StreamChunk]:
        """The kit's chunks of one async call, each nudge sent to the run's handlers as it comes."""
        conversation = to_chat_messages(messages)
        config = self.ggro_config(stop, **_options(kwargs))
        run = (await self.adecoder()).astream([conversation], config=config)
        managers = [run_manager] if run_manager else []
        async for chunk in astream_chunks(run, on_nudge=lambda event: asend_nudge(managers, event)):
            yield chunk

    # ------------------------------------------------------------------ streaming plumbing
    def _should_stream(
        self,
        *,
        async_api: bool,
        run_manager: CallbackManagerForLLMRun | AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> bool:
        decision = super()._should_stream(async_api=async_api, run_manager=run_manager, **kwargs)
        if decision and run_manager is not None:
            _RUN_MANAGER_HANDOFF.set(run_manager)
        return decision

    def stream(
        self,
        input: LanguageModelInput,
        config: RunnableConfig | None = None,
        *,
        stop: list[str] | None = None,
        **kwargs: Any,
    ) -> Iterator[AIMessageChunk]:
        config = ensure_config(config)
        manager = CallbackManager.configure(
            config.get("callbacks"), self.callbacks, self.verbose, config.get("tags"), self.tags,
            config.get("metadata"), self.metadata,
        )  # fmt: skip
        relay = StreamNudgeRelay(manager)
        relayed: RunnableConfig = {**config, "callbacks": _with_handler(config.get("callbacks"), relay)}
        yield from super().stream(input, relayed, stop=stop, **kwargs)

    async def astream(
        self,
        input: LanguageModelInput,
        config: RunnableConfig | None = None,
        *,
        stop: list[str] | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[AIMessageChunk]:
        config = ensure_config(config)
        manager = AsyncCallbackManager.configure(
            config.get("callbacks"), self.callbacks, self.verbose, config.get("tags"), self.tags,
            config.get("metadata"), self.metadata,
        )  # fmt: skip
        relay = AsyncStreamNudgeRelay(manager)
        relayed: RunnableConfig = {**config, "callbacks": _with_handler(config.get("callbacks"), relay)}
        async for chunk in super().astream(input, relayed, stop=stop, **kwargs):
            yield chunk

    # ------------------------------------------------------------------ results
    def _chat_result(self, result: GGROResult) -> ChatResult:
        info = generation_info(result)
        message = AIMessage(
            content=result.text,
            usage_metadata=_usage(result.usage.prompt_tokens, result.usage.completion_tokens),
            response_metadata=self._response_metadata(info),
        )
        return ChatResult(
            generations=[ChatGeneration(message=message, generation_info=info)],
            llm_output={"token_usage": info["token_usage"], "model_name": self.model_name},
        )

    def _response_metadata(self, info: dict[str, Any]) -> dict[str, Any]:
        return {"model_name": self.model_name, "model_provider": PROVIDER, **info}

    def _chunk(self, chunk: StreamChunk) -> ChatGenerationChunk:
        """A streamed chunk; its nudges ride in ``generation_info``, where the stream's relay handler reads them."""
        message = AIMessageChunk(content=chunk.text)
        if chunk.result is not None:
            # Token usage rides on the last chunk only: a cut at a stop sequence can make the response shorter
            # than the segments streamed, so only the finished response knows its token count.
            usage = chunk.result.usage
            message = AIMessageChunk(
                content=chunk.text,
                usage_metadata=_usage(usage.prompt_tokens, usage.completion_tokens),
                response_metadata=self._response_metadata(final_chunk_info(chunk.result)),
                chunk_position="last",
            )
        return ChatGenerationChunk(message=message, generation_info=chunk_info(chunk.nudges))


def to_chat_messages(messages: Sequence[BaseMessage]) -> list[dict[str, str]]:
    """LangChain messages as ``{"role", "content"}`` dicts for the tokenizer's chat template."""
    if not messages:
        raise ValueError("messages: the conversation is empty")
    out: list[dict[str, str]] = []
    for i, message in enumerate(messages):
        if isinstance(message, SystemMessage):
            role = "system"
        elif isinstance(message, HumanMessage):
            role = "user"
        elif isinstance(message, AIMessage):
            role = "assistant"
        elif isinstance(message, ToolMessage):
            role = "tool"
        elif isinstance(message, ChatMessage):
            role = message.role
        else:
            raise TypeError(f"messages[{i}]: unsupported message type {type(message).__name__}")
        out.append({"role": role, "content": _text_of(message.content, i)})
    return out


def _text_of(content: Any, index: int) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts: list[str] = []
        for block in content:
            if isinstance(block, str):
                parts.append(block)
            elif isinstance(block, dict) and block.get("type") == "text" and isinstance(block.get("text"), str):
                parts.append(block["text"])
            else:
                kind = block.get("type") if isinstance(block, dict) else type(block).__name__
                raise TypeError(f"messages[{index}]: ChatGGRO accepts text content only, got a {kind!r} block")
        return "".join(parts)
    raise TypeError(f"messages[{index}]: content must be a string or text blocks, got {type(content).__name__}")


def _usage(prompt_tokens: int, completion_tokens: int) -> UsageMetadata:
    usage = {
        "input_tokens": prompt_tokens,
        "output_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
    return cast(UsageMetadata, usage)  # the token-detail keys are optional


def _options(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in kwargs.items() if k not in _PLUMBING_KWARGS}


def _take_run_manager() -> CallbackManagerForLLMRun | AsyncCallbackManagerForLLMRun | None:
    handed = _RUN_MANAGER_HANDOFF.get()
    if handed is not None:
        _RUN_MANAGER_HANDOFF.set(None)
    return handed


def _with_handler(callbacks: Callbacks, handler: Any) -> Callbacks:
    """``callbacks`` plus a handler for this run only (not inherited), whatever form ``callbacks`` has."""
    if isinstance(callbacks, BaseCallbackManager):
        manager = callbacks.copy()
        manager.add_handler(handler, inherit=False)
        return manager
    return [*(callbacks or []), handler]
