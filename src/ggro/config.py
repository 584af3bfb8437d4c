"""`GGROConfig`: every knob of the GGRO decoder, validated, with the paper's defaults.

Two presets exist. ``"default"`` is the algorithm of the paper with the release's defects fixed:
segments are joined as token ids (no text round trip) and the first nudge may land on the first
response token when the chat template already holds the assistant header. ``"reference"``
reproduces the authors' release bit for bit (see :meth:`GGROConfig.reference`).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

__all__ = ["GGROConfig", "GGROOptions", "ValidationError", "merge_config"]


class GGROOptions(BaseModel):
    """Every option of a GGRO decoding run, with the paper's defaults, bounds and descriptions.

    :class:`GGROConfig` adds the checks across options and the presets. The framework wrappers (LangChain,
    LlamaIndex) inherit this class, so each option is a field of theirs, visible to IDEs and type checkers.
    """

    entropy_threshold: float = Field(
        default=1.5,
        ge=0.0,
        le=20.0,
        description="A segment ends where the policy's next-token entropy (nats, temperature 1) reaches this "
        "value. Paper presets: 1.5 for safety/helpfulness, 2.0 for reasoning.",
    )
    min_segment_tokens: int = Field(
        default=4,
        ge=2,
        le=4096,
        description="Tokens a segment must reach, counting the high-entropy token that is handed on to the next "
        "segment, before entropy may end it (the release's rule: at least min_segment_tokens - 1 are kept).",
    )
    first_insertion_offset: int = Field(
        default=0,
        ge=0,
        le=4096,
        description="Insertion position of the nudge in the first segment of a response (later segments use 0). "
        "The release uses 4 because Llama-3 generates its 4-token assistant header itself; with a chat template "
        "whose generation prompt already holds the header, the faithful equivalent is 0 (our default).",
    )
    refinement_steps: int = Field(
        default=8,
        ge=1,
        le=64,
        description="Candidates per segment, the unnudged draft included (paper: 8; 3 for the 3B model on some "
        "tasks). 1 disables nudging (plain greedy decoding).",
    )
    nudge_top_k: int = Field(
        default=25,
        ge=1,
        le=1024,
        description="A nudge is chosen among the policy's top-k tokens at the insertion position.",
    )
    nudge_temperature: float = Field(
        default=0.1,
        gt=0.0,
        le=100.0,
        description="Temperature applied to the gradient scores before choosing (only matters with sampling).",
    )
    nudge_selection: Literal["greedy", "sample"] = Field(
        default="greedy", description="'greedy': argmax of the gradient score; 'sample': softmax(score / temperature)."
    )
    nudge_score_baseline: Literal["current", "zero"] = Field(
        default="current",
        description="'current': a candidate v scores (E[v] - E[current]) . dr/de, the first-order reward change of "
        "the swap, so the current token is the natural 'no change' at 0. 'zero' (release): the current token's "
        "score is multiplied by 1e-10 and the others are not offset.",
    )
    max_new_tokens: int = Field(default=256, ge=1, le=131072, description="Token budget of a response.")
    seed: int | None = Field(
        default=None,
        ge=0,
        le=2**64 - 1,
        description="Seed for nudge sampling; decoding is otherwise deterministic (greedy).",
    )
    max_nudges: int | None = Field(
        default=None, ge=0, description="Upper bound on nudged segments per response (None: unbounded)."
    )
    refinement: Literal["sequential", "parallel"] = Field(
        default="parallel",
        description="'parallel' (default, beyond the paper): one gradient from the draft ranks the top-k, and the "
        "draft's best refinement_steps - 1 alternatives with a predicted gain are decoded together as one batch "
        "over the shared prefix; the best-rewarded candidate is kept. One gradient per segment instead of up to "
        "refinement_steps - 1; it matched 'sequential' on guidance and gold (docs/evaluation.md#speed-options). "
        "'sequential' (paper, the reference preset): each refinement is nudged by the gradient of the candidate "
        "before it.",
    )
    early_exit_gain: float | None = Field(
        default=None,
        ge=0.0,
        le=1e6,
        description="Stop refining a segment when the best proposal's predicted reward gain over the current "
        "token (first-order, (E[v] - E[current]) . dr/de; the exact gain for rewards without gradients) is below "
        "this value, in reward units. None: refine while a proposal is predicted to do better at all (paper).",
    )
    fused_reward: bool = Field(
        default=True,
        description="When the reward is a head on the policy's own transformer (the embedded rewards are), read "
        "each candidate's reward from the hidden states the policy computed while decoding it instead of a "
        "second forward pass, and take nudge gradients through the policy's own cache (one pass with gradients "
        "over the candidate from the insertion position, shared by the sequences of a batch). Outputs are the "
        "same with it on or off, up to float rounding.",
    )
    speculative_refinement: bool = Field(
        default=True,
        description="Sequential refinement: verify a refinement's continuation against earlier candidates in "
        "one forward pass. Outputs are the same with it on or off; only the number of policy forward passes "
        "changes. (Parallel branches never speculate: guesses from the draft were rarely right.)",
    )
    retokenize_between_segments: bool = Field(
        default=False,
        description="Release quirk: join segments through text (decode, then re-tokenise), so ids can change "
        "between segments and the budget is counted after the round trip.",
    )
    final_reward_before_eos: bool = Field(
        default=False,
        description="Release quirk: read the final reward of a finished response at the token before the "
        "end-of-turn token (HF last-non-pad pooling with pad = eos).",
    )
    entropy_probability_floor: float = Field(
        default=1e-9,
        ge=0.0,
        le=1e-3,
        description="Probabilities are clamped to at least this value when computing entropy (the release uses 1e-9).",
    )
    stop_sequences: list[str] = Field(
        default_factory=list, description="Generation stops where any of these strings begins; it is cut there."
    )
    nonfinite_reward: Literal["skip", "raise"] = Field(
        default="skip",
        description="What a NaN/inf reward does: 'skip' (that candidate never wins, the draft stands, the segment "
        "event says so) or 'raise' (RewardError).",
    )
    reward_failure: Literal["raise", "fallback"] = Field(
        default="raise",
        description="What a reward model that raises or exceeds reward_timeout does: 'raise' fails the call with "
        "RewardError (no partial text is returned; in a batch, every response of the call fails); 'fallback' keeps "
        "the best candidate scored so far in that segment (else the draft), decodes the rest of that response "
        "greedily without reward work, and reports it (the segment event's reward_error, the result's "
        "reward_error).",
    )
    steer_structure: bool = Field(
        default=False,
        description="Under a constraint (tool calls, a JSON schema): False places nudges only in plain text and "
        "free-text string values, never on JSON syntax, keys, tool names, enum values, numbers or booleans; True "
        "lets them land anywhere the grammar allows.",
    )
    reward_timeout: float | None = Field(
        default=None,
        gt=0.0,
        le=86400.0,
        description="Seconds one reward-model call may take before it counts as failed (see reward_failure). The "
        "late call is abandoned: it finishes in a background thread and its result is never read. None: no limit. "
        "Under fused_reward, the gradient of a head on the policy's own states is taken in the policy's own "
        "backward pass, which is not timed.",
    )


class GGROConfig(GGROOptions):
    """Configuration of one GGRO decoding run (paper defaults), validated as a whole."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)

    @model_validator(mode="after")
    def _check_consistency(self) -> GGROConfig:
        if any(not s for s in self.stop_sequences):
            raise ValueError("stop_sequences: every stop sequence must be a non-empty string")
        return self

    @classmethod
    def field(cls, name: str, **changes: Any) -> Any:
        """A copy of option ``name``'s field (default, bounds, description), with ``changes`` applied (e.g. a
        ``validation_alias``), to redeclare the option in a wrapper."""
        info = copy.deepcopy(cls.model_fields[name])
        for key, value in changes.items():
            setattr(info, key, value)
        return info

    @classmethod
    def reference(cls, **overrides: object) -> GGROConfig:
        """The authors' release, quirks included: text round trip between segments, reward of a finished
        response read before its end-of-turn token, first insertion offset 4, and the paper's sequential refinement."""
        values: dict[str, object] = {
            "retokenize_between_segments": True,
            "final_reward_before_eos": True,
            "first_insertion_offset": 4,
            "nudge_score_baseline": "zero",
            "refinement": "sequential",
        }
        values.update(overrides)
        return cls.model_validate(values)

    @classmethod
    def preset(cls, name: str, **overrides: object) -> GGROConfig:
        """Build a named preset: ``default`` or ``reference``."""
        if name == "default":
            return cls.model_validate(overrides)
        if name == "reference":
            return cls.reference(**overrides)
        raise ValueError(f"unknown preset {name!r}; allowed: 'default', 'reference'")


_PER_CALL_ALIASES = {"max_tokens": "max_new_tokens"}
"""OpenAI-style names that frameworks pass per call, to the GGROConfig field each means."""


def merge_config(
    base: GGROOptions,
    overrides: Mapping[str, Any] | None = None,
    *,
    stop: str | Sequence[str] | None = None,
    owner: str = "GGRO",
) -> GGROConfig:
    """The configuration of one call: ``base``'s options, then ``overrides`` (any GGROConfig field,
    ``max_tokens`` for ``max_new_tokens``, ``stop`` as a string or strings added to ``stop_sequences``), then
    ``stop`` (added too). Frameworks pass options per call under these names; one merge gives every wrapper
    the same rules and errors: an unknown option is a TypeError listing the allowed ones, an invalid value a
    ValueError naming the field. ``owner`` starts each message (the wrapper's class name)."""
    options = dict(overrides or {})
    stops = _stop_list(options.pop("stop", None), owner) + _stop_list(stop, owner)
    unknown = sorted(k for k in options if _PER_CALL_ALIASES.get(k, k) not in GGROConfig.model_fields)
    if unknown:
        allowed = sorted({*GGROConfig.model_fields, *_PER_CALL_ALIASES, "stop"})
        names = ", ".join(map(repr, unknown))
        raise TypeError(
            f"{owner}: unknown option{'s' if len(unknown) > 1 else ''} {names}; allowed per call: {allowed}"
        )
    values = {name: getattr(base, name) for name in GGROConfig.model_fields}
    given: dict[str, str] = {}  # field -> the name it was given under
    for key, value in options.items():
        name = _PER_CALL_ALIASES.get(key, key)
        if name in given:
            raise TypeError(f"{owner}: {name} given twice (as {given[name]!r} and as {key!r}); give one")
        given[name] = key
        values[name] = value
    if stops:
        known = list(values["stop_sequences"] or [])
        values["stop_sequences"] = known + [s for s in dict.fromkeys(stops) if s not in known]
    try:
        return GGROConfig.model_validate(values)
    except ValidationError as error:
        raise ValueError(f"{owner}: invalid GGRO option: {_problems(error, given)}") from error


def _stop_list(stop: object, owner: str) -> list[str]:
    if stop is None:
        return []
    if isinstance(stop, str):
        return [stop]
    if isinstance(stop, list | tuple) and all(isinstance(s, str) for s in stop):
        return list(stop)
    raise ValueError(f"{owner}: invalid GGRO option: stop: expected a string or a list of strings, got {stop!r}")


def _problems(error: ValidationError, given: Mapping[str, str]) -> str:
    """Each validation error as 'field: message', saying which alias the field was given under."""
    parts = []
    for problem in error.errors():
        name = ".".join(str(p) for p in problem["loc"])
        message = str(problem["msg"]).removeprefix("Value error, ")
        if given.get(name, name) != name:
            name = f"{name} (given as {given[name]!r})"
        parts.append(f"{name}: {message}" if name else message)  # a check across fields names its fields
    return "; ".join(parts)
