"""`GGRO`: GGRO decoding (gradient-guided reward optimisation) of a local Hugging Face causal LM as a
LlamaIndex LLM (a ``FunctionCallingLLM``). The decoding itself is :class:`ggro.GGRODecoder`'s, a call with
tools or a schema is prepared by :func:`ggro.structured.prepare_chat_call`; this module maps LlamaIndex
calls, messages, tools, responses and instrumentation onto them."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
from collections.abc import AsyncGenerator, Callable, Generator, Iterator, Mapping, Sequence
from contextlib import aclosing, closing, contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

from llama_index.core.base.llms.generic_utils import messages_to_prompt as generic_messages_to_prompt
from llama_index.core.base.llms.types import (
    CachePoint,
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
    ThinkingBlock,
    ToolCallBlock,
)
from llama_index.core.bridge.pydantic import BaseModel, ConfigDict, Field, ValidationError
from llama_index.core.constants import DEFAULT_CONTEXT_WINDOW
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.events.llm import (
    LLMStructuredPredictEndEvent,
    LLMStructuredPredictStartEvent,
)
from llama_index.core.instrumentation.span import active_span_id
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.llms.custom import CustomLLM
from llama_index.core.llms.function_calling import FunctionCallingLLM
from llama_index.core.llms.llm import ToolSelection, default_completion_to_prompt
from llama_index.core.llms.utils import parse_partial_json
from llama_index.core.output_parsers.pydantic import PydanticOutputParser
from llama_index.core.tools.types import BaseTool
from llama_index.core.types import Model, PydanticProgramMode

from ggro import (
    EMBEDDED_MODEL_NAME,
    AsyncDecoding,
    ChatCall,
    GGROAdapter,
    GGROConfig,
    GGROEvent,
    GGROResult,
    Listener,
    ParsedResponse,
    PromptInput,
    StreamChunk,
    ToolCallChunk,
    astream_chunks,
    count_prompt_tokens,
    normalize_tools,
    stream_chunks,
    template_supports_tools,
    token_usage,
    truncate_messages,
)

from .events import GGRONudgeEvent

if TYPE_CHECKING:
    from llama_index.core.prompts.base import PromptTemplate

__all__ = ["EMBEDDED_MODEL_NAME", "GGRO", "INVALID_TOOL_CALLS_KEY", "NUDGES_KEY"]

logger = logging.getLogger(__name__)
dispatcher = get_dispatcher(__name__)

NUDGES_KEY = "ggro_nudges"
"""Key of a streamed chunk's nudges in its ``additional_kwargs``."""

INVALID_TOOL_CALLS_KEY = "invalid_tool_calls"
"""Key, in a chat response's ``additional_kwargs``, of what the model wrote as tool calls that are not valid ones
(each ``{"name", "arguments", "id", "error"}``)."""

_R = TypeVar("_R")
_Respond = Callable[[StreamChunk], _R]
"""Builds a streamed response from the kit's chunk (keeping what it needs of the chunks before)."""

# Chat templates know system/user/assistant/tool; LlamaIndex's other names for the same roles are mapped to them.
_ROLE_NAMES = {
    MessageRole.DEVELOPER: "system",
    MessageRole.CHATBOT: "assistant",
    MessageRole.MODEL: "assistant",
    MessageRole.FUNCTION: "tool",
}
# Per-call keyword arguments that shape the call (the prompt and the grammar) rather than the decoding.
_CALL_OPTIONS = ("tools", "tool_choice", "response_format")


class GGRO(GGROAdapter, FunctionCallingLLM, CustomLLM):
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

    Tools (a ``FunctionCallingLLM``): ``chat_with_tools`` / ``FunctionAgent`` render LlamaIndex tools through
    the chat template (or a documented system prompt when it does not take tools), and the response follows
    a grammar of valid calls (``tool_choice``: ``"auto"``, ``"required"``, ``"none"`` or a tool's name); calls
    come back as ``ToolCallBlock`` s of the message (and OpenAI-style in its ``additional_kwargs["tool_calls"]``).
    ``structured_predict`` / ``as_structured_llm`` decode under the output class's JSON schema.

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
        description="Context window reported in `metadata` (and the limit `truncate_prompt` cuts to); None: the "
        "model config's max_position_embeddings.",
    )
    is_chat_model: bool | None = Field(
        default=None,
        description="Reported in `metadata` (LlamaIndex then calls `chat` rather than `complete`); None: whether "
        "the tokenizer has a chat template.",
    )
    is_function_calling_model: bool | None = Field(
        default=None,
        description="Reported in `metadata` (`FunctionAgent` and the default structured-output program need it); "
        "None: whether the tokenizer's chat template takes tools. Tools work without one too, through a system "
        "prompt (see `ggro.prompting.TOOL_SYSTEM_PROMPT`).",
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
        tokenizer = decoder.tokenizer
        has_template = bool(getattr(tokenizer, "chat_template", None))
        function_calling = self.is_function_calling_model
        return LLMMetadata(
            context_window=self.context_window or decoder.context_window or DEFAULT_CONTEXT_WINDOW,
            num_output=self.ggro_config().max_new_tokens,
            is_chat_model=has_template if self.is_chat_model is None else self.is_chat_model,
            is_function_calling_model=template_supports_tools(tokenizer)
            if function_calling is None
            else function_calling,
            model_name=self.model_name,
        )

    def to_payload(self) -> dict[str, Any]:
        # Sent with every call's start event: it must not force a (blocking) model load in async calls.
        if self._decoder is not None:
            return super().to_payload()
        num_output = self.ggro_config().max_new_tokens
        return {"class_name": self.class_name(), "model_name": self.model_name, "num_output": num_output}

    # ------------------------------------------------------------------ token counting
    def get_token_ids(self, text: str) -> list[int]:
        """The policy tokenizer's ids of ``text`` (no special tokens): a ``tokenizer`` / ``tokenizer_fn`` for
        LlamaIndex (``Settings.tokenizer = llm.get_token_ids``, ``TokenCountingHandler(tokenizer=...)``,
        ``Memory.from_defaults(tokenizer_fn=...)``) that counts as the model does, offline."""
        if not isinstance(text, str):
            raise TypeError(f"GGRO: text must be a string, got {type(text).__name__}")
        return list(self.decoder.tokenizer.encode(text, add_special_tokens=False))

    def get_num_tokens(self, text: str) -> int:
        """How many tokens ``text`` is for the policy's tokenizer."""
        return len(self.get_token_ids(text))

    def get_num_tokens_from_messages(
        self, messages: Sequence[ChatMessage], tools: Sequence[BaseTool | Mapping[str, Any]] | None = None
    ) -> int:
        """How many tokens the model reads for ``messages`` (and ``tools``): the prompt as ``chat`` renders it,
        chat template and the assistant turn's opening included (before any ``truncate_prompt`` cut)."""
        prompt_input, use_template = self._chat_input(messages)
        tokenizer = self.decoder.tokenizer
        return count_prompt_tokens(tokenizer, prompt_input, _openai_tools(tools), chat_template=use_template)

    # ------------------------------------------------------------------ completion
    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        config = self.ggro_config(**kwargs)
        result = self._generate(self._prepare(*self._completion_input(prompt, formatted)), config)
        return CompletionResponse(text=result.text, raw=self._raw(result), additional_kwargs=self._info(result))

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        config = self.ggro_config(**kwargs)
        call = self._prepare(*self._completion_input(prompt, formatted))
        return self._stream(call, config, self._completion_responder())

    @llm_completion_callback()
    async def acomplete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        config = self.ggro_config(**kwargs)
        await self.aload()  # before anything reads the tokenizer: never load on the event loop
        call = await self._aprepare(*self._completion_input(prompt, formatted))
        result = await self._agenerate(call, config)
        return CompletionResponse(text=result.text, raw=self._raw(result), additional_kwargs=self._info(result))

    @llm_completion_callback()
    async def astream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseAsyncGen:
        config = self.ggro_config(**kwargs)
        await self.aload()
        call = await self._aprepare(*self._completion_input(prompt, formatted))
        return self._astream(call, config, self._completion_responder())

    # ------------------------------------------------------------------ chat
    # Besides the GGRO options, chat calls take ``tools`` (LlamaIndex tools or OpenAI tool dicts),
    # ``tool_choice`` and ``response_format`` (see :func:`ggro.structured.prepare_chat_call`).
    @llm_chat_callback()
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        options = _pop_call_options(kwargs)
        config = self.ggro_config(**kwargs)
        call = self._prepare(*self._chat_input(messages), **options)
        return self._chat_response(call, self._generate(call, config))

    @llm_chat_callback()
    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        options = _pop_call_options(kwargs)
        config = self.ggro_config(**kwargs)
        call = self._prepare(*self._chat_input(messages), **options)
        return self._stream(call, config, self._chat_responder(call))

    @llm_chat_callback()
    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        options = _pop_call_options(kwargs)
        config = self.ggro_config(**kwargs)
        await self.aload()
        call = await self._aprepare(*self._chat_input(messages), **options)
        return self._chat_response(call, await self._agenerate(call, config))

    @llm_chat_callback()
    async def astream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseAsyncGen:
        options = _pop_call_options(kwargs)
        config = self.ggro_config(**kwargs)
        await self.aload()
        call = await self._aprepare(*self._chat_input(messages), **options)
        return self._astream(call, config, self._chat_responder(call))

    # ------------------------------------------------------------------ tools (FunctionCallingLLM)
    def _prepare_chat_with_tools(
        self,
        tools: Sequence[BaseTool],
        user_msg: str | ChatMessage | None = None,
        chat_history: list[ChatMessage] | None = None,
        verbose: bool = False,
        allow_parallel_tool_calls: bool = False,
        tool_required: bool = False,
        tool_choice: str | dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """The ``chat`` arguments of a call with ``tools``: the messages, the tools as OpenAI tool dicts and
        the tool choice (``tool_choice`` as given, else ``"required"`` when ``tool_required``, else ``"auto"``);
        other keyword arguments (GGRO options) go along. A tool whose schema is not valid fails here, naming
        it."""
        specs = _openai_tools(tools) or []
        messages = list(chat_history or [])
        if user_msg is not None:
            messages.append(
                ChatMessage(role=MessageRole.USER, content=user_msg) if isinstance(user_msg, str) else user_msg
            )
        if tool_choice is None:
            tool_choice = "required" if tool_required else "auto"
        if not specs:
            return {"messages": messages, **kwargs}
        return {"messages": messages, "tools": specs, "tool_choice": tool_choice, **kwargs}

    def _validate_chat_with_tools_response(
        self,
        response: ChatResponse,
        tools: Sequence[BaseTool],
        allow_parallel_tool_calls: bool = False,
        **kwargs: Any,
    ) -> ChatResponse:
        """Without ``allow_parallel_tool_calls``, only the first of several calls is kept (as LlamaIndex's
        OpenAI LLM does)."""
        if not allow_parallel_tool_calls:
            _keep_first_call(response.message)
        return response

    def get_tool_calls_from_response(
        self, response: ChatResponse, error_on_no_tool_call: bool = True, **kwargs: Any
    ) -> list[ToolSelection]:
        """The response's tool calls: its message's ``ToolCallBlock`` s, else OpenAI-style
        ``additional_kwargs["tool_calls"]`` (messages from elsewhere). Streamed chunks hold calls in progress:
        their arguments are parsed as far as they go. ``error_on_no_tool_call``: ``ValueError`` when there is
        none."""
        selections = [_selection(*call) for call in _message_calls(response.message)]
        if not selections and error_on_no_tool_call:
            raise ValueError("Expected at least one tool call, but got 0 tool calls.")
        return selections

    # ------------------------------------------------------------------ structured output
    def _structured_messages(
        self, output_cls: type[BaseModel], prompt: PromptTemplate, prompt_args: dict[str, Any]
    ) -> list[ChatMessage]:
        """The prompt's messages, with the output class's JSON schema appended to the last user message (or
        as a user message of its own), as LlamaIndex's text-completion program words it."""
        messages = self._extend_messages(prompt.format_messages(llm=self, **prompt_args))
        instruction = PydanticOutputParser(output_cls=output_cls).get_format_string(escape_json=False)
        if messages and messages[-1].role == MessageRole.USER:
            last = messages[-1].model_copy(deep=True)
            last.blocks.append(TextBlock(text=instruction))
            return [*messages[:-1], last]
        return [*messages, ChatMessage(role=MessageRole.USER, content=instruction.strip())]

    def _structured_options(self, output_cls: type[BaseModel], llm_kwargs: dict[str, Any] | None) -> dict[str, Any]:
        schema = _closed_objects(output_cls.model_json_schema())
        response_format = {"type": "json_schema", "json_schema": {"name": output_cls.__name__, "schema": schema}}
        return {**(llm_kwargs or {}), "response_format": response_format}

    @dispatcher.span
    def structured_predict(
        self,
        output_cls: type[Model],
        prompt: PromptTemplate,
        llm_kwargs: dict[str, Any] | None = None,
        **prompt_args: Any,
    ) -> Model:
        """The prompt's answer as ``output_cls``, decoded under its JSON schema (the grammar makes it valid
        JSON of the schema whatever the model). With ``pydantic_program_mode`` other than ``DEFAULT``,
        LlamaIndex's own program for that mode."""
        if self.pydantic_program_mode != PydanticProgramMode.DEFAULT:
            return super().structured_predict(output_cls, prompt, llm_kwargs, **prompt_args)
        dispatcher.event(
            LLMStructuredPredictStartEvent(output_cls=output_cls, template=prompt, template_args=prompt_args)
        )
        messages = self._structured_messages(output_cls, prompt, prompt_args)
        with _naming_the_output_class(output_cls):
            response = self.chat(messages, **self._structured_options(output_cls, llm_kwargs))
        output = _structured_output(output_cls, response)
        dispatcher.event(LLMStructuredPredictEndEvent(output=output))
        return output

    @dispatcher.span
    async def astructured_predict(
        self,
        output_cls: type[Model],
        prompt: PromptTemplate,
        llm_kwargs: dict[str, Any] | None = None,
        **prompt_args: Any,
    ) -> Model:
        """Async :meth:`structured_predict`."""
        if self.pydantic_program_mode != PydanticProgramMode.DEFAULT:
            return await super().astructured_predict(output_cls, prompt, llm_kwargs, **prompt_args)
        dispatcher.event(
            LLMStructuredPredictStartEvent(output_cls=output_cls, template=prompt, template_args=prompt_args)
        )
        messages = self._structured_messages(output_cls, prompt, prompt_args)
        with _naming_the_output_class(output_cls):
            response = await self.achat(messages, **self._structured_options(output_cls, llm_kwargs))
        output = _structured_output(output_cls, response)
        dispatcher.event(LLMStructuredPredictEndEvent(output=output))
        return output

    def _structured_stream_call(
        self,
        output_cls: type[Model],
        prompt: PromptTemplate,
        llm_kwargs: dict[str, Any] | None = None,
        **prompt_args: Any,
    ) -> Generator[Any, None, None]:
        """Partial objects while the JSON streams (``stream_structured_predict``), the last one validated."""
        if self.pydantic_program_mode != PydanticProgramMode.DEFAULT:
            return super()._structured_stream_call(output_cls, prompt, llm_kwargs, **prompt_args)
        messages = self._structured_messages(output_cls, prompt, prompt_args)
        with _naming_the_output_class(output_cls):
            responses = self.stream_chat(messages, **self._structured_options(output_cls, llm_kwargs))

        def gen() -> Generator[Any, None, None]:
            partial = _PartialObjects(output_cls)
            for response in responses:
                value = partial.update(response)
                if value is not None:
                    yield value

        return gen()

    async def _structured_astream_call(
        self,
        output_cls: type[Model],
        prompt: PromptTemplate,
        llm_kwargs: dict[str, Any] | None = None,
        **prompt_args: Any,
    ) -> AsyncGenerator[Any, None]:
        """Async :meth:`_structured_stream_call`."""
        if self.pydantic_program_mode != PydanticProgramMode.DEFAULT:
            return await super()._structured_astream_call(output_cls, prompt, llm_kwargs, **prompt_args)
        messages = self._structured_messages(output_cls, prompt, prompt_args)
        with _naming_the_output_class(output_cls):
            responses = await self.astream_chat(messages, **self._structured_options(output_cls, llm_kwargs))

        async def gen() -> AsyncGenerator[Any, None]:
            partial = _PartialObjects(output_cls)
            async for response in responses:
                value = partial.update(response)
                if value is not None:
                    yield value

        return gen()

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
        """What the decoder gets for chat messages (text, tool calls and tool results), and whether it applies
        the chat template."""
        if isinstance(messages, str | ChatMessage) or not isinstance(messages, Sequence):
            raise TypeError(f"GGRO: messages must be a sequence of ChatMessage, got {type(messages).__name__}")
        if not messages:
            raise ValueError("GGRO: messages must not be empty")
        turns: list[dict[str, Any]] = []
        for i, message in enumerate(messages):
            if not isinstance(message, ChatMessage):
                raise TypeError(f"GGRO: messages[{i}] must be a ChatMessage, got {type(message).__name__}")
            turns.append(_turn(i, message))
        if not any(t["content"].strip() or t.get("tool_calls") for t in turns):
            raise ValueError("GGRO: every message is empty")
        to_prompt = self.messages_to_prompt or generic_messages_to_prompt
        if to_prompt is not generic_messages_to_prompt or not self._has_chat_template():
            return to_prompt(messages), False
        return turns, True

    def _has_chat_template(self) -> bool:
        return bool(getattr(self.decoder.tokenizer, "chat_template", None))

    def _prepare(
        self,
        prompt_input: PromptInput,
        use_template: bool,
        *,
        tools: Sequence[BaseTool | Mapping[str, Any]] | None = None,
        tool_choice: Any = None,
        response_format: Any = None,
    ) -> ChatCall:
        """The call: prompt ids (tools rendered, cut to fit with ``truncate_prompt``), grammar, parser. Bad tools,
        tool choices and response formats fail here, naming the argument."""
        decoder = self.decoder
        specs = _openai_tools(tools)
        truncate = self.truncate_prompt and use_template and not isinstance(prompt_input, str)
        limit = self.context_window
        if truncate and limit is not None and (decoder.context_window is None or limit < decoder.context_window):
            # A context window of one's own is smaller than the model's: cut to it first.
            prompt_input = truncate_messages(decoder.tokenizer, prompt_input, limit - 1, specs)  # type: ignore[arg-type]
        call = self.chat_call(
            decoder, prompt_input, tools=specs, tool_choice=tool_choice, response_format=response_format,
            truncate=truncate,
        )  # fmt: skip
        if not use_template and self._has_chat_template():
            # A prompt text of one's own (completion_to_prompt / messages_to_prompt) is decoded as it is; any
            # tool instructions go before it.
            ids = decoder.encode_prompt(prompt_input, chat_template=False, tools=call.tools or None)
            call = dataclasses.replace(call, prompt_ids=ids)
        if call.constraint is not None:
            decoder.grammar_vocabulary()  # built once per decoder (a second for a large vocabulary): not on a loop
        return call

    async def _aprepare(self, prompt_input: PromptInput, use_template: bool, **options: Any) -> ChatCall:
        """:meth:`_prepare` in a worker thread (tokenising a long chat and compiling a grammar take time)."""
        return await asyncio.to_thread(self._prepare, prompt_input, use_template, **options)

    # ------------------------------------------------------------------ decoding
    # Each reads the span id of the call when called: a call's span closes as soon as its stream is returned.
    def _generate(self, call: ChatCall, config: GGROConfig) -> GGROResult:
        send = self._nudge_sender(active_span_id.get())
        *_, last = stream_chunks(call.stream(self.decoder, config, send))
        assert last.result is not None
        return last.result

    async def _agenerate(self, call: ChatCall, config: GGROConfig) -> GGROResult:
        # The decoding runs in a worker thread; each nudge is dispatched on the loop as it comes.
        *_, result = [r async for r in self._astream(call, config, _result_of)]
        assert result is not None
        return result

    def _stream(self, call: ChatCall, config: GGROConfig, respond: _Respond[_R]) -> Generator[_R, None, None]:
        """``respond(chunk)`` per streamed chunk; the last chunk has the result and the last segment's text
        (held back so that the chunk with text also carries the usage). Bad input raises here, before any
        iteration."""
        send = self._nudge_sender(active_span_id.get())
        stream = call.stream(self.decoder, config)

        def gen() -> Generator[_R, None, None]:
            with closing(stream_chunks(stream, on_nudge=send, hold_last=True)) as chunks:
                for chunk in chunks:
                    yield respond(chunk)

        return gen()

    def _astream(self, call: ChatCall, config: GGROConfig, respond: _Respond[_R]) -> AsyncGenerator[_R, None]:
        """Async :meth:`_stream` (the decoding runs in a worker thread)."""
        send = self._nudge_sender(active_span_id.get())
        run = AsyncDecoding(call.stream(self.decoder, config))

        async def gen() -> AsyncGenerator[_R, None]:
            async with aclosing(astream_chunks(run, on_nudge=send, hold_last=True)) as chunks:
                async for chunk in chunks:
                    yield respond(chunk)

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

    def _chat_response(self, call: ChatCall, result: GGROResult) -> ChatResponse:
        parsed = call.parse(result.text)
        info = self._info(result)
        _add_invalid_calls(info, parsed)
        return ChatResponse(message=_reply_message(parsed, result.text), raw=self._raw(result), additional_kwargs=info)

    def _completion_responder(self) -> _Respond[CompletionResponse]:
        text = ""

        def respond(chunk: StreamChunk) -> CompletionResponse:
            nonlocal text
            text += chunk.text
            return CompletionResponse(
                text=text, delta=chunk.text, raw=self._raw(chunk.result), additional_kwargs=self._chunk_info(chunk)
            )

        return respond

    def _chat_responder(self, call: ChatCall) -> _Respond[ChatResponse]:
        reply = _StreamedReply(call)

        def respond(chunk: StreamChunk) -> ChatResponse:
            message, delta, parsed = reply.feed(chunk)
            info = self._chunk_info(chunk)
            if parsed is not None:
                _add_invalid_calls(info, parsed)
            return ChatResponse(message=message, delta=delta, raw=self._raw(chunk.result), additional_kwargs=info)

        return respond

    def _chunk_info(self, chunk: StreamChunk) -> dict[str, Any]:
        info: dict[str, Any] = self._info(chunk.result) if chunk.result is not None else {}
        if chunk.nudges:
            info[NUDGES_KEY] = [n.model_dump(mode="json") for n in chunk.nudges]
        return info


# ---------------------------------------------------------------------------------------------- tools
def _pop_call_options(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The call-shaping options out of a call's keyword arguments (what remains are GGRO options)."""
    return {key: kwargs.pop(key) for key in _CALL_OPTIONS if key in kwargs}


def _openai_tools(tools: Any) -> list[dict[str, Any]] | None:
    """LlamaIndex tools (or OpenAI tool dicts, taken as they are) as checked OpenAI tool dicts; None for no tools.
    A LlamaIndex tool's objects are closed (``additionalProperties: false`` where its schema says nothing), as
    its function takes no other arguments. A malformed tool is a ``ValueError`` naming it (its position and its
    name)."""
    if tools is None:
        return None
    if isinstance(tools, str | bytes | Mapping | BaseTool) or not isinstance(tools, Sequence):
        raise TypeError(f"tools: expected a list of LlamaIndex tools or OpenAI tool dicts, got {type(tools).__name__}")
    specs: list[Any] = []
    for i, tool in enumerate(tools):
        if isinstance(tool, BaseTool):
            name = tool.metadata.name
            try:
                spec = tool.metadata.to_openai_tool(skip_length_check=True)
            except Exception as error:
                raise ValueError(f"tools[{i}] ({name!r}): its schema cannot be built: {error}") from error
            # A LlamaIndex tool's parameters are its function's: no other keys (the grammar then allows none).
            function = spec.get("function")
            if isinstance(function, dict) and isinstance(function.get("parameters"), dict):
                spec = {**spec, "function": {**function, "parameters": _closed_objects(function["parameters"])}}
            specs.append(spec)
        elif isinstance(tool, Mapping):
            specs.append(dict(tool))
        else:
            kind = type(tool).__name__
            raise TypeError(f"tools[{i}]: expected a LlamaIndex BaseTool or an OpenAI tool dict, got {kind}")
    try:
        return normalize_tools(specs)
    except ValueError as error:
        raise ValueError(_naming_the_tool(str(error), specs)) from None


def _naming_the_tool(message: str, specs: list[Any]) -> str:
    """``message`` (which starts ``tools[i]...``) with tool ``i``'s name added after its position."""
    match = re.match(r"tools\[(\d+)\]", message)
    if match is None or int(match.group(1)) >= len(specs):
        return message
    spec = specs[int(match.group(1))]
    function = spec.get("function", spec) if isinstance(spec, Mapping) else None
    name = function.get("name") if isinstance(function, Mapping) else None
    return message if not isinstance(name, str) else f"{match.group(0)} ({name!r}){message[match.end() :]}"


def _turn(i: int, message: ChatMessage) -> dict[str, Any]:
    """A LlamaIndex message as a chat-template message: text, assistant tool calls (``ToolCallBlock`` s, else
    OpenAI-style ``additional_kwargs["tool_calls"]``), tool results (``tool_call_id`` / ``name`` from
    ``additional_kwargs``)."""
    texts: list[str] = []
    for block in message.blocks:
        if isinstance(block, TextBlock):
            texts.append(block.text)
        elif not isinstance(block, ToolCallBlock | ThinkingBlock | CachePoint):
            kind = type(block).__name__
            raise TypeError(f"GGRO: messages[{i}] holds a {kind}; GGRO takes text only (and tool calls)")
    role = _ROLE_NAMES.get(message.role, message.role.value)
    # ChatMessage.content joins text blocks with newlines; a message without blocks is empty.
    turn: dict[str, Any] = {"role": role, "content": "\n".join(texts)}
    calls = [
        {**({"id": call_id} if call_id else {}), "type": "function", "function": {"name": name, "arguments": arguments}}
        for call_id, name, arguments in _message_calls(message)
    ]
    if calls:
        turn["tool_calls"] = calls
    if role == "tool":
        extra = message.additional_kwargs
        found = {"tool_call_id": extra.get("tool_call_id"), "name": extra.get("name", extra.get("tool_name"))}
        turn.update((key, value) for key, value in found.items() if value is not None)
    return turn


def _message_calls(message: ChatMessage) -> list[tuple[str | None, str, Any]]:
    """(id, name, arguments as a dict or JSON text) of each tool call a message carries."""
    blocks = [b for b in message.blocks if isinstance(b, ToolCallBlock)]
    if blocks:
        return [(b.tool_call_id, b.tool_name, b.tool_kwargs) for b in blocks]
    legacy = message.additional_kwargs.get("tool_calls")
    if not isinstance(legacy, list):
        return []
    calls: list[tuple[str | None, str, Any]] = []
    for call in legacy:
        if hasattr(call, "model_dump"):  # an OpenAI SDK object
            call = call.model_dump()
        if not isinstance(call, Mapping):
            continue
        function = call.get("function", call)
        if isinstance(function, Mapping) and isinstance(function.get("name"), str):
            calls.append((call.get("id"), function["name"], function.get("arguments", function.get("args", {}))))
    return calls


def _selection(call_id: str | None, name: str, arguments: Any) -> ToolSelection:
    if isinstance(arguments, str):
        try:
            arguments = parse_partial_json(arguments) if arguments.strip() else {}
        except (ValueError, TypeError):
            arguments = {}
    kwargs = arguments if isinstance(arguments, dict) else {}
    return ToolSelection(tool_id=call_id or "", tool_name=name, tool_kwargs=kwargs)


def _keep_first_call(message: ChatMessage) -> None:
    calls = [b for b in message.blocks if isinstance(b, ToolCallBlock)]
    if len(calls) > 1:
        message.blocks = [b for b in message.blocks if not isinstance(b, ToolCallBlock) or b is calls[0]]
    legacy = message.additional_kwargs.get("tool_calls")
    if isinstance(legacy, list) and len(legacy) > 1:
        message.additional_kwargs["tool_calls"] = legacy[:1]


def _reply_message(parsed: ParsedResponse, text: str) -> ChatMessage:
    """The assistant message of a whole response: its text, and its valid tool calls as ``ToolCallBlock`` s and
    OpenAI-style ``additional_kwargs["tool_calls"]``. A response whose only calls are invalid keeps all its text
    as the content (what the model wrote is never lost; the calls' errors are in the response's
    ``additional_kwargs["invalid_tool_calls"]``)."""
    calls = parsed.tool_calls
    content = text if parsed.invalid_tool_calls and not calls else parsed.content
    blocks: list[Any] = [TextBlock(text=content)] if content or not calls else []
    blocks += [ToolCallBlock(tool_call_id=c.id, tool_name=c.name, tool_kwargs=dict(c.arguments)) for c in calls]
    extra = {"tool_calls": [c.to_openai() for c in calls]} if calls else {}
    return ChatMessage(role=MessageRole.ASSISTANT, blocks=blocks, additional_kwargs=extra)


def _add_invalid_calls(info: dict[str, Any], parsed: ParsedResponse) -> None:
    if parsed.invalid_tool_calls:
        info[INVALID_TOOL_CALLS_KEY] = [dataclasses.asdict(c) for c in parsed.invalid_tool_calls]


class _StreamedReply:
    """The assistant message of a streamed response, chunk by chunk: text outside calls as it comes, calls in
    progress as ``ToolCallBlock`` s with their arguments' JSON text so far, and at the end the whole parse."""

    def __init__(self, call: ChatCall) -> None:
        self._parser = call.stream_parser()
        self._text = ""  # everything the model wrote
        self._content = ""  # the text outside tool calls
        self._calls: dict[int, list[Any]] = {}  # index -> [id, name, arguments' text]

    def feed(self, chunk: StreamChunk) -> tuple[ChatMessage, str, ParsedResponse | None]:
        """(message so far, text delta, the whole parse on the last chunk)."""
        self._text += chunk.text
        if self._parser is None:
            self._content += chunk.text
            parsed = ParsedResponse(self._content) if chunk.result is not None else None
            return ChatMessage(role=MessageRole.ASSISTANT, content=self._content), chunk.text, parsed
        pieces = self._parser.feed(chunk.text)
        if chunk.result is not None:
            pieces += self._parser.finish()
        delta = ""
        for piece in pieces:
            if isinstance(piece, ToolCallChunk):
                entry = self._calls.setdefault(piece.index, [None, None, ""])
                entry[0] = entry[0] or piece.id
                entry[1] = entry[1] or piece.name
                entry[2] += piece.args_delta
            else:
                delta += piece
        self._content += delta
        if chunk.result is not None:
            parsed = self._parser.result()
            return _reply_message(parsed, self._text), delta, parsed
        blocks: list[Any] = [TextBlock(text=self._content)] if self._content else []
        blocks += [
            ToolCallBlock(tool_call_id=call_id, tool_name=name or "", tool_kwargs=arguments)
            for call_id, name, arguments in (self._calls[i] for i in sorted(self._calls))
        ]
        return ChatMessage(role=MessageRole.ASSISTANT, blocks=blocks), delta, None


# ---------------------------------------------------------------------------------------------- structured
def _structured_output(output_cls: type[Model], response: ChatResponse) -> Model:
    text = response.message.content or ""
    try:
        return output_cls.model_validate_json(text)
    except (ValidationError, ValueError) as error:
        raise ValueError(
            f"structured output: the response is not a valid {output_cls.__name__} ({error}); response: {text[:300]!r}"
        ) from error


@contextmanager
def _naming_the_output_class(output_cls: type[BaseModel]) -> Iterator[None]:
    """A schema the grammar engine refuses is an error naming the output class (and where in its schema)."""
    try:
        yield
    except ValueError as error:
        if str(error).startswith("response_format"):
            raise ValueError(f"output_cls {output_cls.__name__}: its JSON schema cannot be used: {error}") from error
        raise


def _closed_objects(schema: Any) -> Any:
    """``schema`` with ``"additionalProperties": false`` on every object schema that lists its properties and
    says nothing about others (as OpenAI's strict structured outputs do): pydantic would drop unknown keys
    anyway, and the model then spends no tokens writing them."""
    if not isinstance(schema, dict):
        return schema
    closed: dict[str, Any] = {}
    for key, value in schema.items():
        if key in _SCHEMA_MAPS and isinstance(value, dict):  # names to schemas
            closed[key] = {name: _closed_objects(sub) for name, sub in value.items()}
        elif key in _SCHEMA_LISTS and isinstance(value, list):
            closed[key] = [_closed_objects(sub) for sub in value]
        elif key in _SCHEMA_ONE:
            closed[key] = _closed_objects(value)
        else:
            closed[key] = value
    if isinstance(schema.get("properties"), dict) and "additionalProperties" not in schema:
        closed["additionalProperties"] = False
    return closed


# Where JSON Schema keywords hold sub-schemas.
_SCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")
_SCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems", "items")
_SCHEMA_ONE = ("items", "additionalProperties", "not", "contains", "if", "then", "else", "propertyNames")


class _PartialObjects:
    """Partial objects of a streamed JSON response (LlamaIndex's own repair of incomplete JSON); on the last
    chunk (the one with the result), the validated object."""

    def __init__(self, output_cls: type[BaseModel]) -> None:
        self._output_cls = output_cls
        self._current: list[Any] | None = None

    def update(self, response: ChatResponse) -> Any:
        """The object so far: None while nothing parses yet."""
        from llama_index.core.program.utils import process_streaming_objects

        if response.raw is not None:  # the last chunk: the whole response
            return _structured_output(self._output_cls, response)
        try:
            objects = process_streaming_objects(
                response, self._output_cls, cur_objects=self._current, flexible_mode=True
            )
        except Exception as error:  # an unparsable prefix: keep the last object
            logger.debug("GGRO: partial structured output not parsable yet: %s", error)
            return self._current[0] if self._current else None
        self._current = objects if isinstance(objects, list) else [objects]
        return objects


def _result_of(chunk: StreamChunk) -> GGROResult | None:
    return chunk.result
