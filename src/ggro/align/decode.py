"""Rows in, output records out: the step both engines run, with one decoder.

A batch of rows is decoded as one GGRO batch (``decoder.generate(list_of_prompts)``, which gives the same
outputs as decoding the prompts one at a time). A row whose prompt cannot be encoded (empty, too long for the
context window, a malformed chat) gets a record with ``error`` and the rest of the batch is decoded; when the
batch as a whole fails, its rows are decoded one at a time so that only the failing ones get an ``error``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from ..assets import embedded_policy_name
from ..config import GGROConfig
from ..decoder import GGRODecoder, PromptInput
from ..events import GGROResult, NudgeEvent, SegmentEvent
from ..rewards.base import RewardModel

__all__ = ["Aligner", "error_record", "policy_label", "result_record"]


def policy_label(policy: str | os.PathLike[str] | None) -> str:
    """The ``policy`` column's value: an embedded policy's registry name, else the id or path as given."""
    return embedded_policy_name(policy) or os.fspath(policy)  # type: ignore[arg-type]


def result_record(row_id: Any, result: GGROResult, policy: str, reward: str) -> dict[str, Any]:
    return {
        "id": row_id,
        "text": result.text,
        "finish_reason": result.finish_reason,
        "num_nudges": result.num_nudges,
        "nudges": [_event(n) for n in result.nudges],
        "segments": [_event(s) for s in result.segments],
        "usage": result.usage.model_dump(mode="json"),
        "final_reward": result.final_reward,
        "seconds": result.timing.seconds,
        "policy": policy,
        "reward": reward,
        "error": None,
    }


def _event(event: NudgeEvent | SegmentEvent) -> dict[str, Any]:
    """An event as JSON values, without ``sequence_index`` (the row's place in its decoding batch, which depends on
    how the rows were batched, not on the row)."""
    return event.model_dump(mode="json", exclude={"sequence_index"})


def error_record(row_id: Any, error: BaseException | str, policy: str, reward: str) -> dict[str, Any]:
    message = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
    return {
        "id": row_id,
        "text": None,
        "finish_reason": None,
        "num_nudges": None,
        "nudges": None,
        "segments": None,
        "usage": None,
        "final_reward": None,
        "seconds": None,
        "policy": policy,
        "reward": reward,
        "error": message,
    }


class Aligner:
    """A decoder and the names its records carry."""

    def __init__(self, decoder: GGRODecoder, policy: str) -> None:
        self.decoder = decoder
        self.policy = policy
        self.reward = decoder.reward.name

    @classmethod
    def load(
        cls,
        policy: str | None = None,
        reward: str | RewardModel | None = None,
        config: GGROConfig | None = None,
        *,
        device: str = "cpu",
        dtype: str = "float32",
    ) -> Aligner:
        import torch

        torch_dtype = getattr(torch, dtype, None)
        if not isinstance(torch_dtype, torch.dtype):
            raise ValueError(f"dtype: expected float32, bfloat16 or float16, got {dtype!r}")
        decoder = GGRODecoder.from_pretrained(policy, reward, config, dtype=torch_dtype, device=device)
        return cls(decoder, policy_label(policy))

    def align(self, rows: Sequence[tuple[Any, PromptInput | BaseException]]) -> list[dict[str, Any]]:
        """One record per ``(id, prompt)`` row, in order; a prompt given as an exception (a row the caller could
        not read) becomes an error record."""
        records: list[dict[str, Any] | None] = [None] * len(rows)
        ready: list[tuple[int, PromptInput]] = []
        for i, (row_id, prompt) in enumerate(rows):
            if isinstance(prompt, BaseException):
                records[i] = error_record(row_id, prompt, self.policy, self.reward)
                continue
            try:
                self.decoder.encode_prompt(prompt)
            except (ValueError, TypeError) as error:
                records[i] = error_record(row_id, error, self.policy, self.reward)
            else:
                ready.append((i, prompt))
        for i, outcome in zip([i for i, _ in ready], self._generate([p for _, p in ready]), strict=True):
            row_id = rows[i][0]
            if isinstance(outcome, GGROResult):
                records[i] = result_record(row_id, outcome, self.policy, self.reward)
            else:
                records[i] = error_record(row_id, outcome, self.policy, self.reward)
        return [r for r in records if r is not None]

    def _generate(self, prompts: list[PromptInput]) -> list[GGROResult | Exception]:
        if not prompts:
            return []
        try:
            return list(self.decoder.generate(prompts))
        except Exception as error:
            if len(prompts) == 1:
                return [error]
        outcomes: list[GGROResult | Exception] = []
        for prompt in prompts:  # one at a time: only the rows that fail on their own get an error
            try:
                outcomes.append(self.decoder.generate([prompt])[0])
            except Exception as error:
                outcomes.append(error)
        return outcomes
