"""`GGRO`: GGRO decoding (gradient-guided reward optimisation) of a local Hugging Face causal LM as a
LlamaIndex LLM. The decoding itself is :class:`ggro.GGRODecoder`'s; this module maps LlamaIndex calls,
responses and instrumentation onto it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Generator, Sequence
from typing import TYPE_CHECKING, Any, Literal

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
from llama_index.core.bridge.pydantic import ConfigDict, Field, PrivateAttr, ValidationError
from llama_index.core.constants import DEFAULT_CONTEXT_WINDOW
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.span import active_span_id
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.llms.custom import CustomLLM
from llama_index.core.llms.llm import default_completion_to_prompt

from ggro import GGROConfig, GGROEvent, GGROResult, NudgeEvent
from ggro.config import GGROOptions
from ggro.decoder import Decoding, PromptInput
from ggro.events import Listener

from .events import GGRONudgeEvent

if TYPE_CHECKING:
    from ggro import GGRODecoder

__all__ = ["EMBEDDED_MODEL_NAME", "GGRO", "NUDGES_KEY"]

dispatcher = get_dispatcher(__name__)

EMBEDDED_MODEL_NAME = "SmolLM2-135M-Instruct"
"""The model name reported when no ``model_id`` is given (the embedded default policy)."""

NUDGES_KEY = "ggro_nudges"
"""Key of a streamed chunk's nudges in its ``additional_kwargs``."""

# LlamaIndex / OpenAI-style names accepted per call for GGROConfig fields.
_PER_CALL_ALIASES = {"max_tokens": "max_new_tokens"}
# Chat templates know system/user/assistant; LlamaIndex's other names for the same roles are mapped to them.
_ROLE_NAMES = {MessageRole.DEVELOPER: "system", MessageRole.CHATBOT: "assistant", MessageRole.MODEL: "assistant"}


class GGRO(GGROOptions, CustomLLM):
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

    model_id: str | None = Field(
        default=None,
        description="Hub id or local path of the causal LM; None: the embedded SmolLM2-135M-Instruct.",
    )
    reward_model: str | None = Field(
        default=None,
        description="Reward: 'smollm2-harm-head' (the embedded one; the default when None), 'reference-head', or "
        "the hub id / local path of a sequence-classification RM with the policy's vocabulary. Any other ggro "
        "RewardModel: build a GGRODecoder and use `GGRO.from_decoder`.",
    )
    device: str = Field(default="cpu", description="Torch device for both models ('cpu', 'cuda', 'cuda:1', ...).")
    dtype: Literal["float32", "bfloat16", "float16"] = Field(default="float32", description="Weights' dtype.")
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

    _decoder: GGRODecoder | None = PrivateAttr(default=None)

    def model_post_init(self, context: Any, /) -> None:
        super().model_post_init(context)
        self._config({})  # GGROConfig's cross-field checks, at construction

    @classmethod
    def class_name(cls) -> str:
        return "GGRO_LLM"

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_decoder(cls, decoder: GGRODecoder, **fields: Any) -> GGRO:
        """Wrap an existing :class:`ggro.GGRODecoder` (any policy, any reward, e.g. a ``CallableReward``);
        its config gives the defaults of the GGRO fields, ``fields`` override them."""
        values: dict[str, Any] = decoder.config.model_dump()
        values.update(fields)
        values.setdefault("model_id", str(getattr(decoder.policy, "name_or_path", "") or type(decoder.policy).__name__))
        instance = cls(**values)
        instance._decoder = decoder
        return instance

    @property
    def decoder(self) -> GGRODecoder:
        """The decoder: the one given to `from_decoder`, else the process-wide one for these models (loaded
        on first access)."""
        if self._decoder is None:
            from ggro.adapters import shared_decoder

            self._decoder = shared_decoder(self.model_id, self.reward_model, dtype=self.dtype, device=self.device)
        return self._decoder

    async def aload(self) -> GGRO:
        """Load the models in a worker thread, so that a running event loop is not blocked by the first load
        (the async methods do this themselves; ``metadata`` loads synchronously)."""
        if self._decoder is None:
            await asyncio.to_thread(lambda: self.decoder)
        return self

    @property
    def model_name(self) -> str:
        return self.model_id or EMBEDDED_MODEL_NAME

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
        span_id = active_span_id.get()
        config = self._config(kwargs)
        prompt_input, use_template = self._completion_input(prompt, formatted)
        result = self.decoder.generate(
            [prompt_input], config=config, chat_template=use_template, listener=self._nudge_listener(span_id)
        )[0]
        return CompletionResponse(text=result.text, raw=self._raw(result), additional_kwargs=self._info(result))

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        # The span closes when this returns the generator: its id is captured now, for the nudges.
        span_id = active_span_id.get()
        config = self._config(kwargs)
        prompt_input, use_template = self._completion_input(prompt, formatted)
        stream = self.decoder.stream([prompt_input], config=config, chat_template=use_template)  # bad input raises here

        def gen() -> CompletionResponseGen:
            for text, delta, nudges, result in self._chunks(stream, span_id):
                yield CompletionResponse(
                    text=text, delta=delta, raw=self._raw(result), additional_kwargs=self._chunk_info(nudges, result)
                )

        return gen()

    @llm_completion_callback()
    async def acomplete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        span_id = active_span_id.get()
        config = self._config(kwargs)
        await self.aload()
        prompt_input, use_template = self._completion_input(prompt, formatted)
        result = await self._agenerate(prompt_input, use_template, config, span_id)
        return CompletionResponse(text=result.text, raw=self._raw(result), additional_kwargs=self._info(result))

    @llm_completion_callback()
    async def astream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseAsyncGen:
        span_id = active_span_id.get()
        config = self._config(kwargs)
        await self.aload()  # before anything reads the tokenizer: never load on the event loop
        prompt_input, use_template = self._completion_input(prompt, formatted)
        run = self.decoder.astream([prompt_input], config=config, chat_template=use_template)

        async def gen() -> CompletionResponseAsyncGen:
            async for text, delta, nudges, result in self._achunks(run.__aiter__(), lambda: run.results, span_id):
                yield CompletionResponse(
                    text=text, delta=delta, raw=self._raw(result), additional_kwargs=self._chunk_info(nudges, result)
                )

        return gen()

    # ------------------------------------------------------------------ chat
    @llm_chat_callback()
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        span_id = active_span_id.get()
        config = self._config(kwargs)
        prompt_input, use_template = self._chat_input(messages)
        result = self.decoder.generate(
            [prompt_input], config=config, chat_template=use_template, listener=self._nudge_listener(span_id)
        )[0]
        return ChatResponse(
            message=_assistant(result.text), raw=self._raw(result), additional_kwargs=self._info(result)
        )

    @llm_chat_callback()
    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        span_id = active_span_id.get()  # see stream_complete
        config = self._config(kwargs)
        prompt_input, use_template = self._chat_input(messages)
        stream = self.decoder.stream([prompt_input], config=config, chat_template=use_template)

        def gen() -> ChatResponseGen:
            for text, delta, nudges, result in self._chunks(stream, span_id):
                yield ChatResponse(
                    message=_assistant(text),
                    delta=delta,
                    raw=self._raw(result),
                    additional_kwargs=self._chunk_info(nudges, result),
                )

        return gen()

    @llm_chat_callback()
    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        span_id = active_span_id.get()
        config = self._config(kwargs)
        await self.aload()
        prompt_input, use_template = self._chat_input(messages)
        result = await self._agenerate(prompt_input, use_template, config, span_id)
        return ChatResponse(
            message=_assistant(result.text), raw=self._raw(result), additional_kwargs=self._info(result)
        )

    @llm_chat_callback()
    async def astream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseAsyncGen:
        span_id = active_span_id.get()
        config = self._config(kwargs)
        await self.aload()  # before anything reads the tokenizer: never load on the event loop
        prompt_input, use_template = self._chat_input(messages)
        run = self.decoder.astream([prompt_input], config=config, chat_template=use_template)

        async def gen() -> ChatResponseAsyncGen:
            async for text, delta, nudges, result in self._achunks(run.__aiter__(), lambda: run.results, span_id):
                yield ChatResponse(
                    message=_assistant(text),
                    delta=delta,
                    raw=self._raw(result),
                    additional_kwargs=self._chunk_info(nudges, result),
                )

        return gen()

    # ------------------------------------------------------------------ per call
    def ggro_config(self, **overrides: Any) -> GGROConfig:
        """The decoding configuration of a call with these options: the fields, then ``overrides`` (any
        GGROConfig field, ``max_tokens`` for ``max_new_tokens``, and ``stop``, added to ``stop_sequences``)."""
        return self._config(dict(overrides))

    def _config(self, kwargs: dict[str, Any]) -> GGROConfig:
        values = {name: getattr(self, name) for name in GGROConfig.model_fields}
        stop = kwargs.pop("stop", None)
        unknown = sorted(k for k in kwargs if _PER_CALL_ALIASES.get(k, k) not in GGROConfig.model_fields)
        if unknown:
            allowed = sorted({*GGROConfig.model_fields, *_PER_CALL_ALIASES, "stop"})
            raise TypeError(f"GGRO: unknown option(s) {unknown}; allowed per call: {allowed}")
        for key, value in kwargs.items():
            values[_PER_CALL_ALIASES.get(key, key)] = value
        if stop is not None:
            stops = [stop] if isinstance(stop, str) else stop
            if not isinstance(stops, list | tuple) or not all(isinstance(s, str) for s in stops):
                raise TypeError(f"GGRO: stop must be a string or a list of strings, got {stop!r}")
            known = list(values["stop_sequences"])
            values["stop_sequences"] = known + [s for s in stops if s not in known]
        try:
            return GGROConfig.model_validate(values)
        except ValidationError as error:
            raise ValueError(f"GGRO: invalid GGRO option: {error}") from error

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

    # ------------------------------------------------------------------ decoding helpers
    def _nudge_listener(self, span_id: str | None) -> Listener:
        def listener(event: GGROEvent) -> None:
            if event.kind == "nudge":
                self._dispatch_nudge(event, span_id)

        return listener

    def _dispatch_nudge(self, nudge: NudgeEvent, span_id: str | None) -> None:
        dispatcher.event(GGRONudgeEvent(nudge=nudge, model_name=self.model_name, span_id=span_id))

    async def _agenerate(
        self, prompt_input: PromptInput, use_template: bool, config: GGROConfig, span_id: str | None
    ) -> GGROResult:
        await self.aload()
        run = self.decoder.astream([prompt_input], config=config, chat_template=use_template)
        async for event in run:  # the decoding runs in a worker thread; events arrive on the loop
            if event.kind == "nudge":
                self._dispatch_nudge(event, span_id)
        assert run.results is not None
        return run.results[0]

    def _chunks(
        self, stream: Generator[GGROEvent, None, list[GGROResult]], span_id: str | None
    ) -> Generator[tuple[str, str, list[NudgeEvent], GGROResult | None], None, None]:
        """(cumulative text, delta, nudges since the last chunk, result on the last chunk) per accepted segment.
        The last segment's chunk waits for the result (it is ready by then) so that it carries the usage."""
        text, held, nudges = "", "", []
        run = Decoding(stream)
        try:
            for event in run:
                if event.kind == "nudge":
                    self._dispatch_nudge(event, span_id)
                    nudges.append(event)
                    continue
                text += event.text
                if event.finished:
                    held += event.text
                elif event.text:
                    yield text, event.text, nudges, None
                    nudges = []
        finally:
            run.close()
        assert run.results is not None
        yield text, held, nudges, run.results[0]

    async def _achunks(
        self,
        events: AsyncIterator[GGROEvent],
        results: Callable[[], list[GGROResult] | None],
        span_id: str | None,
    ) -> AsyncGenerator[tuple[str, str, list[NudgeEvent], GGROResult | None], None]:
        """Async :meth:`_chunks` over an ``AsyncDecoding``'s iterator (``results()`` gives its results)."""
        text, held, nudges = "", "", []
        try:
            async for event in events:
                if event.kind == "nudge":
                    self._dispatch_nudge(event, span_id)
                    nudges.append(event)
                    continue
                text += event.text
                if event.finished:
                    held += event.text
                elif event.text:
                    yield text, event.text, nudges, None
                    nudges = []
        finally:
            # Leaving early (break, error, cancellation) stops the worker thread at its next event.
            aclose = getattr(events, "aclose", None)
            if aclose is not None:
                await aclose()
        final = results()
        assert final is not None  # the iteration ended normally, so the run has its results
        yield text, held, nudges, final[0]

    # ------------------------------------------------------------------ responses
    def _raw(self, result: GGROResult | None) -> dict[str, Any] | None:
        if result is None:
            return None
        return {
            "model": self.model_name,
            "finish_reason": result.finish_reason,
            "usage": _usage(result),
            "ggro": result.summary(),
            "nudges": [n.model_dump(mode="json") for n in result.nudges],
            "result": result,  # the whole ggro.GGROResult: token ids, segments, candidate rewards, timing
        }

    def _info(self, result: GGROResult) -> dict[str, Any]:
        return {"finish_reason": result.finish_reason, **_usage(result), "ggro": result.summary()}

    def _chunk_info(self, nudges: list[NudgeEvent], result: GGROResult | None) -> dict[str, Any]:
        info: dict[str, Any] = self._info(result) if result is not None else {}
        if nudges:
            info[NUDGES_KEY] = [n.model_dump(mode="json") for n in nudges]
        return info


def _assistant(text: str) -> ChatMessage:
    return ChatMessage(role=MessageRole.ASSISTANT, content=text)


def _usage(result: GGROResult) -> dict[str, int]:
    return {
        "prompt_tokens": result.usage.prompt_tokens,
        "completion_tokens": result.usage.completion_tokens,
        "total_tokens": result.usage.total_tokens,
    }
