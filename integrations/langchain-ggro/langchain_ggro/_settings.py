"""What `GGROLLM` and `ChatGGRO` share beyond :class:`ggro.GGROAdapter`: LangChain's standard parameter
names, LangSmith parameters and the metadata of responses and streamed chunks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Literal

from ggro import EMBEDDED_MODEL_NAME, GGROAdapter, GGROResult, NudgeEvent, token_usage
from pydantic import AliasChoices, ConfigDict, Field, field_validator

__all__ = [
    "EMBEDDED_MODEL_NAME",
    "PROVIDER",
    "WRAPPER_CONFIG",
    "GGROSettings",
    "chunk_info",
    "final_chunk_info",
    "generation_info",
]

PROVIDER = "ggro"

WRAPPER_CONFIG = ConfigDict(
    extra="forbid", populate_by_name=True, arbitrary_types_allowed=True, protected_namespaces=()
)
"""Set again on each wrapper class: LangChain's base classes come later in the MRO and would otherwise make
unknown arguments silently ignored (their `extra` wins over ours)."""


class GGROSettings(GGROAdapter):
    """What the LLM and the chat model add to :class:`ggro.GGROAdapter` (every GGRO option, the models to
    load, the shared decoder, ``from_decoder``, the per-call configuration): LangChain's standard parameters."""

    model_config: ClassVar[ConfigDict] = ConfigDict(**WRAPPER_CONFIG)

    # LangChain's standard parameter names are accepted too (as validation aliases: the kit then rejects a
    # field given under both names, and `from_decoder` accepts them).
    max_new_tokens: int = GGROAdapter.field(
        "max_new_tokens", validation_alias=AliasChoices("max_new_tokens", "max_tokens")
    )
    stop_sequences: list[str] = GGROAdapter.field(
        "stop_sequences", validation_alias=AliasChoices("stop_sequences", "stop")
    )
    model_id: str | None = GGROAdapter.field("model_id", validation_alias=AliasChoices("model_id", "model"))
    temperature: float | None = Field(
        default=None,
        description="GGRO decodes greedily; accepted for LangChain's standard parameters, only as 0 or None.",
    )
    streaming: bool = Field(default=False, description="Generate through the streaming path on `invoke` too.")

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

    def get_token_ids(self, text: str) -> list[int]:
        """The policy tokenizer's ids for ``text`` (no special tokens added); LangChain's ``get_num_tokens``
        counts them. A ``custom_get_token_ids`` function, when set, is used instead."""
        custom = getattr(self, "custom_get_token_ids", None)
        if custom is not None:
            return list(custom(text))
        return list(self.decoder.tokenizer.encode(text, add_special_tokens=False))

    @property
    def _identifying_params(self) -> dict[str, Any]:
        config = self.ggro_config().model_dump()
        return {"model_id": self.model_name, "reward_model": self.reward_model, **config}


def generation_info(result: GGROResult) -> dict[str, Any]:
    """Per-response metadata: finish reason, token usage, what steering did, and every nudge."""
    from .callbacks import NUDGES_KEY, nudge_payload

    return {
        "finish_reason": result.finish_reason,
        "token_usage": token_usage(result),
        "ggro": result.summary(),
        NUDGES_KEY: [nudge_payload(n) for n in result.nudges],
        "token_ids": list(result.token_ids),  # e.g. for `decoder.entropy_profile` in analyses
    }


def chunk_info(nudges: Sequence[NudgeEvent], result: GGROResult | None = None) -> dict[str, Any] | None:
    """A streamed chunk's ``generation_info``: the nudges since the previous chunk (None when there are none;
    the chat stream's relay handler sends them from here), and on the last chunk the response's metadata."""
    from .callbacks import NUDGES_KEY, nudge_payload

    info = {} if result is None else final_chunk_info(result)
    if nudges:
        info[NUDGES_KEY] = [nudge_payload(n) for n in nudges]
    return info or None


def final_chunk_info(result: GGROResult) -> dict[str, Any]:
    """The response's metadata on its last streamed chunk, without the nudges (they rode on earlier chunks)."""
    from .callbacks import NUDGES_KEY

    return {k: v for k, v in generation_info(result).items() if k != NUDGES_KEY}
