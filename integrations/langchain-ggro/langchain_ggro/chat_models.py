"""`ChatGGRO`: GGRO decoding as a LangChain chat model."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextvars import ContextVar
from operator import itemgetter
from typing import Any, ClassVar, Literal, cast

from ggro import (
    AsyncDecoding,
    ChatCall,
    Decoding,
    GGROConfig,
    GGRODecoder,
    GGROResult,
    StreamChunk,
    ToolCallChunk,
    astream_chunks,
    count_prompt_tokens,
    normalize_tool_choice,
    normalize_tools,
    stream_chunks,
)
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
from langchain_core.messages.tool import invalid_tool_call, tool_call, tool_call_chunk
from langchain_core.output_parsers import (
    JsonOutputKeyToolsParser,
    JsonOutputParser,
    PydanticOutputParser,
    PydanticToolsParser,
)
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable, RunnableConfig, RunnablePassthrough, ensure_config
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_json_schema, convert_to_openai_tool
from langchain_core.utils.pydantic import is_basemodel_subclass
from pydantic import BaseModel, ConfigDict

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
# Per-call arguments of the chat call itself (set by `bind_tools` / `with_structured_output`, or given to
# `invoke`); everything else is a GGRO option.
_CALL_KWARGS = ("tools", "tool_choice", "response_format", "tool_call_parser", "truncate_prompt")

StructuredOutputMethod = Literal["function_calling", "json_schema", "json_mode"]

# Content blocks of an AI message that repeat its `tool_calls` (Anthropic's `tool_use`, LangChain v1's
# `tool_call`, ...): the calls are taken from `tool_calls`, or from the block when no call has its id.
_CALL_BLOCKS = frozenset({"tool_use", "tool_call", "function_call"})
_SKIPPED_BLOCKS = frozenset({"tool_call_chunk", "invalid_tool_call"})


class ChatGGRO(GGROSettings, BaseChatModel):
    """A local Hugging Face chat model decoded with GGRO (gradient-guided reward optimisation).

    Messages are rendered with the tokenizer's chat template (system, user and assistant turns, assistant
    tool calls and ``tool`` results). Tools: :meth:`bind_tools` renders them into the prompt (through the chat
    template when it takes ``tools``, else a system-prompt fallback) and ``tool_choice`` constrains decoding
    with a grammar, so a forced call always parses and matches its tool's schema, whatever the model;
    :meth:`with_structured_output` does the same for a schema. Content must be text (no images, audio or
    PDFs). With no arguments: the embedded SmolLM2-135M-Instruct and the embedded harm reward, loaded on the
    first call and shared across instances (``model="qwen2.5-coder-0.5b-instruct"`` is an embedded
    tool-capable policy). Every :class:`ggro.GGROConfig` option is a field and may be given per call. Each
    nudge reaches the run's handlers as a ``ggro_nudge`` custom event (also when streaming, and in
    ``astream_events``); ``response_metadata`` holds the model name, finish reason, a nudge summary (``ggro``)
    and the nudges (``ggro_nudges``); ``usage_metadata`` the tokens. Token counts use the policy's own
    tokenizer and chat template.

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

    # ------------------------------------------------------------------ tools and structured output
    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | BaseTool],
        *,
        tool_choice: dict[str, Any] | str | bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Offer ``tools`` to the model (LangChain tools, functions, pydantic classes, TypedDicts or OpenAI tool
        dicts). ``tool_choice``: None or ``"auto"`` (the model answers in text or calls tools), ``"any"`` /
        ``"required"`` / ``True`` (at least one call), a tool's name or ``{"type": "function", "function":
        {"name": ...}}`` (a call of that tool), ``"none"`` (the tools are not offered). Except for ``"auto"``,
        decoding is constrained by a grammar: the calls always parse and match the tools' schemas.

        A malformed tool or an unknown ``tool_choice`` fails here, with an error naming it; ``kwargs`` are
        bound too (GGRO options, ``tool_call_parser``, ``truncate_prompt``)."""
        formatted = _openai_tools(tools)
        names = [t["function"]["name"] for t in formatted]
        choice = normalize_tool_choice(tool_choice, formatted)
        if choice not in ("auto", "required", "none") and choice not in names:
            raise ValueError(f"tool_choice: no tool named {choice!r}; the tools are {', '.join(names) or 'none'}")
        return self.bind(tools=formatted, tool_choice=tool_choice, **kwargs)

    def with_structured_output(
        self,
        schema: dict[str, Any] | type | None = None,
        *,
        method: StructuredOutputMethod = "function_calling",
        include_raw: bool = False,
        strict: bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, dict[str, Any] | BaseModel]:
        """A runnable whose output follows ``schema`` (a pydantic class, a TypedDict, a JSON schema or an
        OpenAI tool/function dict): a pydantic instance for a pydantic class, else a dict.

        ``method``: ``"function_calling"`` (the schema is offered as a tool, rendered in the prompt with its
        descriptions, and the call is forced), ``"json_schema"`` (the response is the JSON itself, constrained
        by the schema) or ``"json_mode"`` (any JSON object: say in the prompt which keys you want). Decoding is
        constrained by a grammar in all three, so the output always parses, and with the first two it always
        validates against the schema (``strict`` is accepted for compatibility; the schema is always
        enforced). ``include_raw``: return ``{"raw": AIMessage, "parsed": ..., "parsing_error": ...}``
        instead of raising when the output cannot be parsed. ``kwargs`` are bound to the model (GGRO options,
        ``truncate_prompt``)."""
        del strict  # the grammar enforces the schema either way
        unknown = set(kwargs) & {"tools", "tool_choice", "response_format"}
        if unknown:
            raise ValueError(f"with_structured_output: {', '.join(sorted(unknown))} cannot be given here")
        if method not in ("function_calling", "json_schema", "json_mode"):
            raise ValueError(f"method: expected 'function_calling', 'json_schema' or 'json_mode', got {method!r}")
        pydantic_schema = isinstance(schema, type) and is_basemodel_subclass(schema)
        # What LangChain reports to tracers as this call's structured output format.
        traced = {"ls_structured_output_format": {"kwargs": {"method": method}, "schema": schema}} if schema else {}
        llm: Runnable[LanguageModelInput, Any]
        parser: Runnable[Any, Any]
        if method == "json_mode":
            llm = self.bind(response_format={"type": "json_object"}, **traced, **kwargs)
        elif schema is None:
            raise ValueError(f"schema: method {method!r} needs a schema")
        elif method == "function_calling":
            name = convert_to_openai_tool(schema)["function"]["name"]
            llm = self.bind_tools([schema], tool_choice=name, **traced, **kwargs)
            if pydantic_schema:
                parser = PydanticToolsParser(tools=[cast(type, schema)], first_tool_only=True)
            else:
                parser = JsonOutputKeyToolsParser(key_name=name, first_tool_only=True)
        else:
            spec = {"name": _schema_name(schema), "schema": _json_schema(schema)}
            llm = self.bind(response_format={"type": "json_schema", "json_schema": spec}, **traced, **kwargs)
        if method != "function_calling":  # the response is the JSON itself
            parser = PydanticOutputParser(pydantic_object=cast(Any, schema)) if pydantic_schema else JsonOutputParser()
        if not include_raw:
            return llm | parser
        parsed = RunnablePassthrough.assign(parsed=itemgetter("raw") | parser, parsing_error=lambda _: None)
        unparsed = RunnablePassthrough.assign(parsed=lambda _: None)
        return {"raw": llm} | parsed.with_fallbacks([unparsed], exception_key="parsing_error")

    # ------------------------------------------------------------------ token counting
    def get_num_tokens_from_messages(self, messages: list[BaseMessage], tools: Sequence[Any] | None = None) -> int:
        """How many tokens the policy reads for ``messages`` (and ``tools``): rendered by its chat template
        with the assistant turn's generation prompt, as a call would send them (before any truncation)."""
        if not messages:
            return 0
        tool_dicts = _openai_tools(tools) if tools else None
        return count_prompt_tokens(self.decoder.tokenizer, to_chat_messages(messages), tool_dicts)

    # ------------------------------------------------------------------ generation
    def _prepare(
        self, decoder: GGRODecoder, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any]
    ) -> tuple[ChatCall, GGROConfig]:
        """One call's prompt (tools rendered, truncated if asked), grammar and decoding configuration."""
        conversation = to_chat_messages(messages)
        call_args = {k: kwargs[k] for k in _CALL_KWARGS if k in kwargs}
        options = {k: v for k, v in kwargs.items() if k not in _CALL_KWARGS and k not in _PLUMBING_KWARGS}
        config = self.ggro_config(stop, **options)
        tools = call_args.get("tools")
        call = self.chat_call(
            decoder,
            conversation,
            tools=_openai_tools(tools) if tools else None,
            tool_choice=call_args.get("tool_choice"),
            response_format=call_args.get("response_format"),
            tool_call_parser=call_args.get("tool_call_parser"),
            truncate=call_args.get("truncate_prompt"),
        )
        return call, config

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        decoder = self.decoder
        call, config = self._prepare(decoder, messages, stop, kwargs)
        send = nudge_sender([run_manager] if run_manager else [])
        run = Decoding(call.stream(decoder, config, listener=send))
        for _ in run:
            pass
        assert run.results is not None
        return self._chat_result(run.results[0], call)

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        call, run = await self._astart(messages, stop, kwargs)
        result: GGROResult | None = None
        async for chunk in self._achunks(run, run_manager):
            result = chunk.result or result
        assert result is not None
        return self._chat_result(result, call)

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
        decoder = self.decoder
        call, config = self._prepare(decoder, messages, stop, kwargs)
        reader = _ResponseReader(self, call)
        # Without a run manager, the stream's relay handler sends each nudge from the chunk that carries it.
        on_nudge = nudge_sender([run_manager] if run_manager else [])
        for chunk in stream_chunks(call.stream(decoder, config), on_nudge=on_nudge):
            yield reader.chunk(chunk)

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
        call, run = await self._astart(messages, stop, kwargs)
        reader = _ResponseReader(self, call)
        async for chunk in self._achunks(run, run_manager):
            yield reader.chunk(chunk)

    async def _astart(
        self, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any]
    ) -> tuple[ChatCall, AsyncDecoding]:
        """Prepare an async call and start its run, in a worker thread (a first load of the weights, the
        prompt's rendering and the grammar's vocabulary may take a while): the event loop stays free."""
        decoder = await self.adecoder()

        def start() -> tuple[ChatCall, AsyncDecoding]:
            call, config = self._prepare(decoder, messages, stop, kwargs)
            return call, AsyncDecoding(call.stream(decoder, config))

        return await asyncio.to_thread(start)

    @staticmethod
    async def _achunks(
        run: AsyncDecoding, run_manager: AsyncCallbackManagerForLLMRun | None
    ) -> AsyncIterator[StreamChunk]:
        """The kit's chunks of one async run, each nudge sent to the run's handlers as it comes."""
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
    def _chat_result(self, result: GGROResult, call: ChatCall) -> ChatResult:
        info = generation_info(result)
        parsed = call.parse(result.text)
        message = AIMessage(
            content=parsed.content,
            tool_calls=[tool_call(name=c.name, args=c.arguments, id=c.id) for c in parsed.tool_calls],
            invalid_tool_calls=[
                invalid_tool_call(name=c.name, args=c.arguments, id=c.id, error=c.error)
                for c in parsed.invalid_tool_calls
            ],
            usage_metadata=_usage(result.usage.prompt_tokens, result.usage.completion_tokens),
            response_metadata=self._response_metadata(info),
        )
        return ChatResult(
            generations=[ChatGeneration(message=message, generation_info=info)],
            llm_output={"token_usage": info["token_usage"], "model_name": self.model_name},
        )

    def _response_metadata(self, info: dict[str, Any]) -> dict[str, Any]:
        return {"model_name": self.model_name, "model_provider": PROVIDER, **info}


class _ResponseReader:
    """Turns one streamed response's chunks into LangChain chunks: text, and ``tool_call_chunks`` read by the
    call's streaming tool-call parser (when tools were offered), so the chunks add up to what ``invoke``
    returns."""

    def __init__(self, chat: ChatGGRO, call: ChatCall) -> None:
        self._chat = chat
        self._parser = call.stream_parser()

    def chunk(self, chunk: StreamChunk) -> ChatGenerationChunk:
        """A streamed chunk; its nudges ride in ``generation_info``, where the stream's relay handler reads
        them."""
        text, calls = self._read(chunk.text, last=chunk.result is not None)
        if chunk.result is None:
            message = AIMessageChunk(content=text, tool_call_chunks=calls)
        else:
            # Token usage rides on the last chunk only: a cut at a stop sequence can make the response shorter
            # than the segments streamed, so only the finished response knows its token count.
            usage = chunk.result.usage
            message = AIMessageChunk(
                content=text,
                tool_call_chunks=calls,
                usage_metadata=_usage(usage.prompt_tokens, usage.completion_tokens),
                response_metadata=self._chat._response_metadata(final_chunk_info(chunk.result)),
                chunk_position="last",
            )
        return ChatGenerationChunk(message=message, generation_info=chunk_info(chunk.nudges))

    def _read(self, text: str, *, last: bool) -> tuple[str, list[Any]]:
        if self._parser is None:
            return text, []
        pieces = self._parser.feed(text)
        if last:
            pieces += self._parser.finish()
        content = "".join(p for p in pieces if isinstance(p, str))
        # One entry per call in a chunk: LangChain merges entries of one index across chunks, not within one.
        merged: dict[int, dict[str, Any]] = {}
        for piece in pieces:
            if isinstance(piece, ToolCallChunk):
                entry = merged.setdefault(piece.index, {"name": None, "args": "", "id": None})
                entry["name"] = entry["name"] or piece.name
                entry["id"] = entry["id"] or piece.id
                entry["args"] += piece.args_delta
        calls = [tool_call_chunk(index=index, **entry) for index, entry in merged.items()]
        return content, calls


# ---------------------------------------------------------------------------------------------- messages
def to_chat_messages(messages: Sequence[BaseMessage]) -> list[dict[str, Any]]:
    """LangChain messages as chat dicts for the tokenizer's chat template: ``{"role", "content"}``; an AI
    message's tool calls as ``tool_calls=[{"id", "type": "function", "function": {"name", "arguments"}}]``
    (its invalid ones as ``<tool_call>`` text after its content); a tool message as ``{"role": "tool",
    "content", "tool_call_id", "name"}``."""
    if not messages:
        raise ValueError("messages: the conversation is empty")
    out: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        if isinstance(message, SystemMessage):
            out.append({"role": "system", "content": _text_of(message.content, i)})
        elif isinstance(message, HumanMessage):
            out.append({"role": "user", "content": _text_of(message.content, i)})
        elif isinstance(message, AIMessage):
            out.append(_assistant_message(message, i))
        elif isinstance(message, ToolMessage):
            entry: dict[str, Any] = {
                "role": "tool",
                "content": _text_of(message.content, i),
                "tool_call_id": message.tool_call_id,
            }
            if message.name:
                entry["name"] = message.name
            out.append(entry)
        elif isinstance(message, ChatMessage):
            out.append({"role": message.role, "content": _text_of(message.content, i)})
        else:
            raise TypeError(f"messages[{i}]: unsupported message type {type(message).__name__}")
    return out


def _assistant_message(message: AIMessage, index: int) -> dict[str, Any]:
    calls = [_library_call(c["id"], c["name"], c["args"]) for c in message.tool_calls]
    known = {c["id"] for c in message.tool_calls if c.get("id")}
    blocks: list[Any] = []
    if isinstance(message.content, list):
        for block in message.content:
            kind = block.get("type") if isinstance(block, dict) else None
            if kind in _CALL_BLOCKS:
                assert isinstance(block, dict)
                if block.get("id") not in known:  # a call only the content holds
                    arguments = block.get("input", block.get("args", block.get("arguments")))
                    calls.append(_library_call(block.get("id"), block.get("name"), arguments))
            elif kind not in _SKIPPED_BLOCKS:
                blocks.append(block)
    text = _text_of(blocks if isinstance(message.content, list) else message.content, index)
    for bad in message.invalid_tool_calls:  # what the model wrote, so the next turn sees it
        call_text = json.dumps({"name": bad.get("name"), "arguments": "__ARGS__"}, ensure_ascii=False)
        written = call_text.replace('"__ARGS__"', bad.get("args") or "{}")
        text = "\n".join(p for p in (text, f"<tool_call>\n{written}\n</tool_call>") if p)
    entry: dict[str, Any] = {"role": "assistant", "content": text}
    if calls:
        entry["tool_calls"] = calls
    return entry


def _library_call(call_id: str | None, name: Any, arguments: Any) -> dict[str, Any]:
    call: dict[str, Any] = {"type": "function", "function": {"name": name, "arguments": arguments or {}}}
    return {"id": call_id, **call} if call_id else call


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


# ---------------------------------------------------------------------------------------------- helpers
def _openai_tools(tools: Sequence[Any]) -> list[dict[str, Any]]:
    """Tools in OpenAI form, each checked (``tools[i]...`` names the faulty one; ggro closes their objects to
    the listed properties). Repeated names are left for the call to refuse: binding the same schema
    in two forms is common and harmless until it is used."""
    if isinstance(tools, str | bytes | dict) or not isinstance(tools, Sequence):
        raise TypeError(f"tools: expected a list of tools, got {type(tools).__name__}")
    formatted: list[dict[str, Any]] = []
    for i, item in enumerate(tools):
        try:
            tool = convert_to_openai_tool(item)
        except (ValueError, TypeError, KeyError) as error:
            raise ValueError(f"tools[{i}]: not a tool LangChain can convert ({error})") from None
        try:
            normalize_tools([tool])
        except ValueError as error:
            message = str(error)
            raise ValueError(message.replace("tools[0]", f"tools[{i}]", 1)) from None
        formatted.append(tool)
    return formatted


def _schema_name(schema: dict[str, Any] | type) -> str:
    """A schema's name: its title (a JSON schema without one is ``"response"``), its class or function name."""
    if isinstance(schema, dict) and not ({"title", "name", "function"} & set(schema)):
        return "response"
    return str(convert_to_openai_tool(schema)["function"]["name"])


def _json_schema(schema: dict[str, Any] | type) -> dict[str, Any]:
    """The JSON schema of a pydantic class, a TypedDict, a JSON schema or an OpenAI tool/function dict (ggro
    closes its objects to the listed properties)."""
    if isinstance(schema, type) and is_basemodel_subclass(schema):
        model: Any = schema
        json_schema = model.model_json_schema() if hasattr(model, "model_json_schema") else model.schema()  # v2/v1
    elif isinstance(schema, dict) and not ({"function", "parameters"} & set(schema)):
        json_schema = schema  # a JSON schema already
    else:
        json_schema = convert_to_json_schema(schema)
    return dict(json_schema)


def _usage(prompt_tokens: int, completion_tokens: int) -> UsageMetadata:
    usage = {
        "input_tokens": prompt_tokens,
        "output_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
    return cast(UsageMetadata, usage)  # the token-detail keys are optional


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
