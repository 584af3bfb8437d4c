"""The framework-wrapper kit: what the LangChain and LlamaIndex packages (and any other wrapper) share, so
each wrapper only maps its framework's calls, responses and callbacks onto GGRO.

- :class:`GGROAdapter`: a pydantic mixin with the wrapper fields (every GGRO option, the models to load), the
  decoder (loaded on first use, shared by the process: :func:`shared_decoder`), ``from_decoder`` and the
  per-call configuration (:func:`merge_config`).
- :func:`stream_chunks` / :func:`astream_chunks`: a decoding run as text chunks, each with the nudges tried
  since the previous chunk, the last one of a response with its result.
- :func:`token_usage` and :data:`EMBEDDED_MODEL_NAME`.
"""

from __future__ import annotations

import asyncio
import copy
import inspect
import threading
from collections import defaultdict
from collections.abc import AsyncGenerator, Awaitable, Callable, Generator, Hashable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import torch
from pydantic import AliasChoices, Field, PrivateAttr, field_serializer, model_validator

from ._aio import AsyncDecoding, Decoding
from .config import GGROConfig, GGROOptions, merge_config
from .decoder import GGRODecoder
from .events import GGROEvent, GGROResult, NudgeEvent
from .prompting import PromptInput
from .structured import ChatCall, prepare_chat_call
from .tools import ParsedResponse

__all__ = [
    "CUSTOM_MODEL_NAME",
    "EMBEDDED_MODEL_NAME",
    "GGROAdapter",
    "StreamChunk",
    "astream_chunks",
    "merge_config",
    "shared_decoder",
    "stream_chunks",
    "token_usage",
]

EMBEDDED_MODEL_NAME = "SmolLM2-135M-Instruct"
"""The model name a wrapper reports when no ``model_id`` is given: the embedded default policy."""

CUSTOM_MODEL_NAME = "custom"
"""The model name ``from_decoder`` reports for a policy built in memory (it has no hub id or path)."""

# ---------------------------------------------------------------------------------------------- the decoder
_SHARED_DECODERS: dict[tuple[Hashable, ...], GGRODecoder] = {}
_SHARED_LOCK = threading.Lock()


def _hashable(value: Any) -> Hashable:
    """A hashable stand-in for a loading option (a dict of kwargs, a device map, a quantization config): equal
    options give equal stand-ins, so the shared-decoder cache finds them again."""
    if isinstance(value, Mapping):
        return ("mapping", tuple(sorted((str(k), _hashable(v)) for k, v in value.items())))
    if isinstance(value, list | tuple):
        return ("sequence", tuple(_hashable(v) for v in value))
    if isinstance(value, set | frozenset):
        return ("set", frozenset(_hashable(v) for v in value))
    to_dict = getattr(value, "to_dict", None)
    if callable(to_dict):  # transformers' configs (quantization_config, ...)
        return (type(value).__qualname__, _hashable(to_dict()))
    if isinstance(value, torch.device):
        return ("device", str(value))
    try:
        hash(value)
    except TypeError:
        return (type(value).__qualname__, repr(value))
    return value


def shared_decoder(
    policy: str | Path | None = None,
    reward: str | Path | None = None,
    *,
    dtype: torch.dtype | str = torch.float32,
    device: str | torch.device = "cpu",
    model_kwargs: Mapping[str, Any] | None = None,
    tokenizer_kwargs: Mapping[str, Any] | None = None,
    device_map: str | Mapping[str, Any] | None = None,
) -> GGRODecoder:
    """The process-wide decoder for (policy, reward, dtype, device, model_kwargs, tokenizer_kwargs,
    device_map): loaded on first use, then reused. The loading options are those of
    :meth:`GGRODecoder.from_pretrained` (None and ``{}`` are the same).

    Framework wrappers are constructed often (one per chain, per test, per request handler); they call this
    when they first generate, so weights load once per process, never per construction or per call.
    """
    torch_dtype = getattr(torch, dtype, None) if isinstance(dtype, str) else dtype
    if not isinstance(torch_dtype, torch.dtype):
        raise ValueError(f"dtype: expected a torch dtype name such as 'float32' or 'bfloat16', got {dtype!r}")
    key = (
        None if policy is None else str(policy),
        None if reward is None else str(reward),
        str(torch_dtype),
        str(torch.device(device)),
        _hashable(dict(model_kwargs or {})),
        _hashable(dict(tokenizer_kwargs or {})),
        _hashable(device_map),
    )
    with _SHARED_LOCK:  # held while loading, so concurrent first calls load once
        decoder = _SHARED_DECODERS.get(key)
        if decoder is None:
            decoder = GGRODecoder.from_pretrained(
                None if policy is None else str(policy),
                None if reward is None else str(reward),
                dtype=torch_dtype,
                device=device,
                model_kwargs=model_kwargs,
                tokenizer_kwargs=tokenizer_kwargs,
                device_map=device_map,
            )
            _SHARED_DECODERS[key] = decoder
    return decoder


# ---------------------------------------------------------------------------------------------- per call
def token_usage(*results: GGROResult) -> dict[str, int]:
    """Prompt, completion and total tokens of ``results`` together, under the names frameworks report."""
    prompt = sum(r.usage.prompt_tokens for r in results)
    completion = sum(r.usage.completion_tokens for r in results)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


# ---------------------------------------------------------------------------------------------- the mixin
_Wrapper = TypeVar("_Wrapper", bound="GGROAdapter")


class GGROAdapter(GGROOptions):
    """The fields and decoder handling of a framework wrapper: every GGRO option (from
    :class:`ggro.GGROOptions`, so each is a typed, described field of the wrapper), the models to load, the
    decoder (never loaded at construction: frameworks build wrappers eagerly, in configs and tests),
    ``from_decoder`` and the per-call configuration.

    Mix it in before the framework's base class (``class MyLLM(GGROAdapter, FrameworkLLM)``) and set
    ``model_config`` again on the wrapper (``extra="forbid"`` at least): pydantic merges configs in base
    order, so the framework's would win. A wrapper that accepts other names for a field declares them as the
    field's ``validation_alias`` (see :meth:`field`); giving both names is then an error, and ``from_decoder``
    accepts them too.
    """

    model_id: str | None = Field(
        default=None,
        description=f"The causal LM: an embedded one by name ('qwen2.5-coder-0.5b-instruct', a tool-capable chat "
        f"model; 'smollm2-135m-instruct'), or a hub id or local path; None: the embedded {EMBEDDED_MODEL_NAME}.",
    )
    reward_model: str | None = Field(
        default=None,
        description="Reward: 'smollm2-harm-head' (the embedded one; the default when None), 'reference-head', or "
        "the hub id / local path of a sequence-classification RM. One on another vocabulary than the policy's "
        "is read through the tokenizer bridge. Any other ggro RewardModel: build a GGRODecoder and use "
        "`from_decoder`.",
    )
    device: str = Field(
        default="cpu",
        description="Torch device for both models ('cpu', 'cuda', 'cuda:1', ...); with `device_map`, the reward's.",
    )
    dtype: Literal["float32", "bfloat16", "float16"] = Field(default="float32", description="Weights' dtype.")
    model_kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="Keyword arguments for the policy's `AutoModelForCausalLM.from_pretrained` (e.g. revision, "
        "trust_remote_code, attn_implementation, quantization_config); dtype and device_map have fields of "
        "their own.",
    )
    tokenizer_kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="Keyword arguments for the policy's `AutoTokenizer.from_pretrained` (e.g. revision, "
        "trust_remote_code).",
    )
    device_map: str | dict[str, int | str] | None = Field(
        default=None,
        description="Accelerate device map for the policy ('auto', 'cpu', {'': 0}, ...); None: the whole policy on "
        "`device`.",
    )

    tool_call_parser: Literal["hermes", "llama3_json"] | Callable[[str], ParsedResponse] = Field(
        default="hermes",
        description="How tool calls are written and read back: 'hermes' (<tool_call>{...}</tool_call>, Qwen2.5 and "
        "most fine-tunes; a bare call JSON is accepted too), 'llama3_json' (Llama 3.x), or a function from the "
        "response text to a ggro.ParsedResponse (its calls are still checked; the grammar is hermes').",
    )
    parallel_tool_calls: bool = Field(
        default=False,
        description="Allow several tool calls in one response. Off by default: small models repeat one call "
        "several times; an agent calls again on its next step.",
    )
    answer_instead_of_repeating: bool = Field(
        default=True,
        description="When a response would only repeat tool calls that already have results (small models do, "
        "and their agent loops never end), decode it again asked for the answer and constrained to plain text.",
    )
    describe_tool_results: bool = Field(
        default=True,
        description="Show a tool result to the model as `multiply(a=17, b=23) returned 391` rather than a bare "
        "`391` (which small models read as a new input and feed to the tool again).",
    )
    truncate_prompt: bool = Field(
        default=False,
        description="When a chat does not fit the context window, drop its oldest messages (system messages and "
        "the last user message kept; a tool-call turn with its results) instead of failing.",
    )

    _decoder: GGRODecoder | None = PrivateAttr(default=None)

    @field_serializer("tool_call_parser", when_used="json")
    def _parser_name(self, parser: Any) -> str:
        return parser if isinstance(parser, str) else str(getattr(parser, "__qualname__", "custom"))

    @classmethod
    def field(cls, name: str, **changes: Any) -> Any:
        """A copy of field ``name`` (default, bounds, description) with ``changes`` applied, to redeclare it
        in a wrapper, e.g. with a ``validation_alias`` for a framework's standard parameter name."""
        info = copy.deepcopy(cls.model_fields[name])
        for key, value in changes.items():
            setattr(info, key, value)
        return info

    @classmethod
    def _field_aliases(cls) -> dict[str, str]:
        """Other names the constructor accepts, to the field each names (the fields' validation aliases)."""
        aliases: dict[str, str] = {}
        for name, info in cls.model_fields.items():
            alias = info.validation_alias
            choices = alias.choices if isinstance(alias, AliasChoices) else [alias]
            aliases.update({c: name for c in choices if isinstance(c, str) and c != name})
        return aliases

    @model_validator(mode="before")
    @classmethod
    def _one_name_per_field(cls, values: Any) -> Any:
        if isinstance(values, dict):
            for alias, name in cls._field_aliases().items():
                if alias in values and name in values:
                    raise ValueError(f"{name}: given twice (as {name!r} and as {alias!r}); give one")
        return values

    def model_post_init(self, context: Any, /) -> None:
        super().model_post_init(context)
        self.ggro_config()  # GGROConfig's checks across options, at construction rather than at the first call

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_model_id(
        cls: type[_Wrapper], model_id: str | None = None, reward_model: str | None = None, **fields: Any
    ) -> _Wrapper:
        """Build for a policy id/path and a reward id/path (None: the embedded defaults). Weights load on the
        first generation and are shared by every instance that names the same models."""
        return cls(model_id=model_id, reward_model=reward_model, **fields)

    @classmethod
    def from_decoder(cls: type[_Wrapper], decoder: GGRODecoder, **fields: Any) -> _Wrapper:
        """Wrap an existing :class:`ggro.GGRODecoder` (any policy, any reward, e.g. a ``CallableReward``): its
        config gives the defaults of the GGRO options, ``fields`` (under any name the wrapper accepts)
        override them. The model name is the policy's hub id or path, else :data:`CUSTOM_MODEL_NAME`."""
        aliases = cls._field_aliases()
        given = {aliases.get(key, key) for key in fields}
        values = {k: v for k, v in decoder.config.model_dump().items() if k not in given}
        if "model_id" not in given:
            values["model_id"] = str(getattr(decoder.policy, "name_or_path", "") or CUSTOM_MODEL_NAME)
        instance = cls(**values, **fields)
        instance._decoder = decoder
        return instance

    @property
    def decoder(self) -> GGRODecoder:
        """The decoder: the one given to ``from_decoder``, else the process-wide one for these models (loaded
        on first access)."""
        if self._decoder is None:
            self._decoder = shared_decoder(
                self.model_id,
                self.reward_model,
                dtype=self.dtype,
                device=self.device,
                model_kwargs=self.model_kwargs,
                tokenizer_kwargs=self.tokenizer_kwargs,
                device_map=self.device_map,
            )
        return self._decoder

    async def adecoder(self) -> GGRODecoder:
        """:attr:`decoder`, loaded in a worker thread when it is not loaded yet, so that a first load never
        blocks a running event loop."""
        if self._decoder is None:
            await asyncio.to_thread(lambda: self.decoder)
        return self.decoder

    @property
    def model_name(self) -> str:
        """The name frameworks report: ``model_id``, else the embedded policy's name."""
        return self.model_id or EMBEDDED_MODEL_NAME

    # ------------------------------------------------------------------ per call
    def ggro_config(self, stop: str | Sequence[str] | None = None, **overrides: Any) -> GGROConfig:
        """The decoding configuration of one call: these fields, then ``overrides`` (any GGROConfig field;
        ``max_tokens`` for ``max_new_tokens``), and ``stop`` added to ``stop_sequences`` (see
        :func:`merge_config`)."""
        return merge_config(self, overrides, stop=stop, owner=type(self).__name__)

    def chat_call(
        self,
        decoder: GGRODecoder,
        messages: PromptInput,
        *,
        tools: Sequence[Mapping[str, Any]] | None = None,
        tool_choice: Any = None,
        response_format: Any = None,
        truncate: bool | None = None,
        tool_call_parser: Literal["hermes", "llama3_json"] | Callable[[str], ParsedResponse] | None = None,
    ) -> ChatCall:
        """One chat call with these fields' tool options (see :func:`ggro.prepare_chat_call`); ``truncate`` and
        ``tool_call_parser`` override the fields for this call."""
        return prepare_chat_call(
            decoder,
            messages,
            tools=tools,
            tool_choice=tool_choice,
            response_format=response_format,
            tool_call_parser=self.tool_call_parser if tool_call_parser is None else tool_call_parser,
            truncate=self.truncate_prompt if truncate is None else truncate,
            answer_instead_of_repeating=self.answer_instead_of_repeating,
            parallel_tool_calls=self.parallel_tool_calls,
            describe_tool_results=self.describe_tool_results,
        )


# ---------------------------------------------------------------------------------------------- streaming
@dataclass(frozen=True)
class StreamChunk:
    """A piece of a streamed response with the nudges tried since the response's previous chunk. The last
    chunk of each response has its ``result``; its text is empty, or the last segment's when that was held
    back (``hold_last``), and its nudges are any not delivered yet."""

    text: str
    nudges: tuple[NudgeEvent, ...] = ()
    sequence_index: int = 0
    result: GGROResult | None = None


class _Chunker:
    """The buffering both iterators share: a response's nudges wait for its next chunk with text; with
    ``hold_last``, the text of its last segment waits for its result."""

    def __init__(self, hold_last: bool) -> None:
        self._hold_last = hold_last
        self._nudges: defaultdict[int, list[NudgeEvent]] = defaultdict(list)
        self._held: defaultdict[int, str] = defaultdict(str)

    def feed(self, event: GGROEvent) -> StreamChunk | None:
        row = event.sequence_index
        if event.kind == "nudge":
            self._nudges[row].append(event)
            return None
        if self._hold_last and event.finished:
            self._held[row] += event.text
            return None
        if not event.text:  # nothing to show: its nudges ride on the next chunk
            return None
        return StreamChunk(event.text, tuple(self._nudges.pop(row, ())), row)

    def finish(self, results: list[GGROResult] | None) -> list[StreamChunk]:
        assert results is not None  # the run ended normally, so it has its results
        return [
            StreamChunk(self._held.pop(i, ""), tuple(self._nudges.pop(i, ())), i, result)
            for i, result in enumerate(results)
        ]


def stream_chunks(
    run: Decoding | Generator[GGROEvent, None, list[GGROResult]],
    *,
    on_nudge: Callable[[NudgeEvent], object] | None = None,
    hold_last: bool = False,
) -> Generator[StreamChunk, None, None]:
    """A decoding run (``decoder.stream(...)`` or a :class:`ggro.Decoding`) as :class:`StreamChunk` s: one
    per segment with text, then one per response with its result. ``on_nudge`` gets each nudge as it
    happens (framework callbacks want it then, not with the next chunk). ``hold_last``: the text of a
    response's last segment comes on its final chunk, so the chunk with the text also carries the usage.
    Closing this generator early closes the run."""
    decoding = run if isinstance(run, Decoding) else Decoding(run)
    chunker = _Chunker(hold_last)
    try:
        for event in decoding:
            if on_nudge is not None and event.kind == "nudge":
                on_nudge(event)
            chunk = chunker.feed(event)
            if chunk is not None:
                yield chunk
    finally:
        decoding.close()
    yield from chunker.finish(decoding.results)


async def astream_chunks(
    run: AsyncDecoding,
    *,
    on_nudge: Callable[[NudgeEvent], Awaitable[object] | object] | None = None,
    hold_last: bool = False,
) -> AsyncGenerator[StreamChunk, None]:
    """Async :func:`stream_chunks` over ``decoder.astream(...)`` (the decoding runs in a worker thread; chunks
    arrive on the event loop). ``on_nudge`` may be a coroutine function; it is awaited before the run goes
    on. Leaving early (break and ``aclose``, an error, cancellation) stops the worker at its next event."""
    events = run.__aiter__()
    chunker = _Chunker(hold_last)
    try:
        async for event in events:
            if on_nudge is not None and event.kind == "nudge":
                sent = on_nudge(event)
                if inspect.isawaitable(sent):
                    await sent
            chunk = chunker.feed(event)
            if chunk is not None:
                yield chunk
    finally:
        aclose = getattr(events, "aclose", None)
        if aclose is not None:
            await aclose()
    for chunk in chunker.finish(run.results):
        yield chunk
