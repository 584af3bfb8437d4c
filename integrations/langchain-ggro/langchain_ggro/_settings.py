"""What `GGROLLM` and `ChatGGRO` share: their fields (every `GGROConfig` option plus the model to load),
the lazily loaded, process-shared decoder, and the per-call configuration."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Literal

from ggro.config import GGROConfig, GGROOptions
from pydantic import (
    AliasChoices,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

if TYPE_CHECKING:
    from ggro import GGRODecoder, GGROResult

__all__ = [
    "EMBEDDED_MODEL_NAME",
    "PROVIDER",
    "WRAPPER_CONFIG",
    "GGROSettings",
    "final_chunk_info",
    "generation_info",
    "usage_of",
]

PROVIDER = "ggro"
EMBEDDED_MODEL_NAME = "SmolLM2-135M-Instruct"
"""Reported as the model name when no ``model_id`` is given (the embedded default policy)."""


_PER_CALL_ALIASES = {"max_tokens": "max_new_tokens"}
_CONSTRUCTOR_ALIASES = {"max_tokens": "max_new_tokens", "stop": "stop_sequences", "model": "model_id"}


WRAPPER_CONFIG = ConfigDict(
    extra="forbid", populate_by_name=True, arbitrary_types_allowed=True, protected_namespaces=()
)
"""Set again on each wrapper class: LangChain's base classes come later in the MRO and would otherwise make
unknown arguments silently ignored (their `extra` wins over ours)."""


class GGROSettings(GGROOptions):
    """Fields and decoder handling shared by the LLM and the chat model: every GGRO option (inherited from
    :class:`ggro.config.GGROOptions`), the models to load, and LangChain's standard parameters."""

    model_config: ClassVar[ConfigDict] = ConfigDict(**WRAPPER_CONFIG)

    # LangChain's standard parameter names are accepted too.
    max_new_tokens: int = GGROConfig.field(
        "max_new_tokens", validation_alias=AliasChoices("max_new_tokens", "max_tokens")
    )
    stop_sequences: list[str] = GGROConfig.field(
        "stop_sequences", validation_alias=AliasChoices("stop_sequences", "stop")
    )

    model_id: str | None = Field(
        default=None,
        validation_alias=AliasChoices("model_id", "model"),
        description="Hub id or local path of the causal LM; None: the embedded SmolLM2-135M-Instruct.",
    )
    reward_model: str | None = Field(
        default=None,
        description="Reward: 'smollm2-harm-head' (the embedded one; the default when None), 'reference-head', or "
        "the hub id / local path of a sequence-classification RM with the policy's vocabulary. Any other "
        "ggro RewardModel: build a GGRODecoder and use `from_decoder`.",
    )
    device: str = Field(default="cpu", description="Torch device for both models ('cpu', 'cuda', 'cuda:1', ...).")
    dtype: Literal["float32", "bfloat16", "float16"] = Field(default="float32", description="Weights' dtype.")
    temperature: float | None = Field(
        default=None,
        description="GGRO decodes greedily; accepted for LangChain's standard parameters, only as 0 or None.",
    )
    streaming: bool = Field(default=False, description="Generate through the streaming path on `invoke` too.")

    _decoder: GGRODecoder | None = None

    @model_validator(mode="before")
    @classmethod
    def _one_name_per_field(cls, values: Any) -> Any:
        if isinstance(values, dict):
            for alias, name in _CONSTRUCTOR_ALIASES.items():
                if alias in values and name in values:
                    raise ValueError(f"{name}: given twice (as {name!r} and as {alias!r}); give one")
        return values

    @field_validator("temperature")
    @classmethod
    def _greedy_only(cls, value: float | None) -> float | None:
        if value not in (None, 0, 0.0):
            raise ValueError("temperature: GGRO decodes greedily; allowed values are 0 or None")
        return value

    @field_validator("stop_sequences", mode="before")
    @classmethod
    def _no_stop_is_empty(cls, value: Any) -> Any:
        if value is None:
            return []
        if isinstance(value, str):
            return [value]
        return value

    def model_post_init(self, context: Any, /) -> None:
        super().model_post_init(context)
        self.ggro_config()  # cross-field checks of GGROConfig, at construction

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_model_id(cls, model_id: str | None = None, reward_model: str | None = None, **kwargs: Any) -> Any:
        """Build for a policy id/path and a reward id/path (None: the embedded defaults). Weights load on
        the first generation and are shared by every instance that names the same models."""
        return cls(model_id=model_id, reward_model=reward_model, **kwargs)

    @classmethod
    def from_decoder(cls, decoder: GGRODecoder, **kwargs: Any) -> Any:
        """Wrap an existing :class:`ggro.GGRODecoder` (any policy, any reward); its config gives the defaults."""
        values: dict[str, Any] = decoder.config.model_dump()
        for key, value in kwargs.items():
            name = _CONSTRUCTOR_ALIASES.get(key, key)
            if name in values and name != key:
                del values[name]  # the alias given here replaces the decoder's value
            values[key] = value
        if "model" not in values and "model_id" not in values:
            values["model_id"] = str(getattr(decoder.policy, "name_or_path", "") or "custom")
        instance = cls(**values)
        instance._decoder = decoder
        return instance

    @property
    def decoder(self) -> GGRODecoder:
        """The decoder: the one given to `from_decoder`, else the process-wide one for these models."""
        if self._decoder is None:
            from ggro.adapters import shared_decoder

            self._decoder = shared_decoder(self.model_id, self.reward_model, dtype=self.dtype, device=self.device)
        return self._decoder

    @property
    def model_name(self) -> str:
        return self.model_id or EMBEDDED_MODEL_NAME

    # ------------------------------------------------------------------ per call
    def ggro_config(self, stop: list[str] | None = None, **overrides: Any) -> GGROConfig:
        """The decoding configuration of one call: these fields, the call's ``stop`` (added to
        ``stop_sequences``) and per-call options (any GGROConfig field; ``max_tokens`` = ``max_new_tokens``)."""
        values = {name: getattr(self, name) for name in GGROConfig.model_fields}
        for key, value in overrides.items():
            name = _PER_CALL_ALIASES.get(key, key)
            if name not in GGROConfig.model_fields:
                allowed = sorted({*GGROConfig.model_fields, *_PER_CALL_ALIASES})
                raise TypeError(f"{type(self).__name__}: unknown option {key!r}; allowed per call: {allowed}")
            values[name] = value
        stops = list(values["stop_sequences"] or [])
        stops += [s for s in (stop or []) if s not in stops]
        values["stop_sequences"] = stops
        try:
            return GGROConfig.model_validate(values)
        except ValidationError as error:
            raise ValueError(f"{type(self).__name__}: invalid GGRO option: {error}") from error

    def ls_params(self, model_type: Literal["llm", "chat"], stop: list[str] | None, **kwargs: Any) -> dict[str, Any]:
        """LangSmith's standard parameters for this call (provider, model, greedy temperature, budget, stops)."""
        model = kwargs.get("model")
        config = self.ggro_config()
        stops = stop or config.stop_sequences or None
        params: dict[str, Any] = {
            "ls_provider": PROVIDER,
            "ls_model_name": model if isinstance(model, str) else self.model_name,
            "ls_model_type": model_type,
            "ls_temperature": 0.0,
            "ls_max_tokens": kwargs.get("max_new_tokens", kwargs.get("max_tokens", config.max_new_tokens)),
        }
        if stops:
            params["ls_stop"] = list(stops)
        return params

    @property
    def _identifying_params(self) -> dict[str, Any]:
        config = self.ggro_config().model_dump()
        return {"model_id": self.model_name, "reward_model": self.reward_model, **config}


def generation_info(result: GGROResult) -> dict[str, Any]:
    """Per-response metadata: finish reason, token usage, what steering did, and every nudge."""
    from .callbacks import NUDGES_KEY, nudge_payload

    return {
        "finish_reason": result.finish_reason,
        "token_usage": usage_of(result),
        "ggro": result.summary(),
        NUDGES_KEY: [nudge_payload(n) for n in result.nudges],
        "token_ids": list(result.token_ids),  # e.g. for `decoder.entropy_profile` in analyses
    }


def final_chunk_info(result: GGROResult) -> dict[str, Any]:
    """What the last streamed chunk carries (the nudges already rode on the segment chunks)."""
    from .callbacks import NUDGES_KEY

    return {k: v for k, v in generation_info(result).items() if k != NUDGES_KEY}


def usage_of(result: GGROResult) -> dict[str, int]:
    return {
        "prompt_tokens": result.usage.prompt_tokens,
        "completion_tokens": result.usage.completion_tokens,
        "total_tokens": result.usage.total_tokens,
    }
