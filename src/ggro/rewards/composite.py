"""A weighted sum of rewards, e.g. harmlessness + an LM judge, each term reported by name.

``reward = sum_i w_i * r_i``. Each term keeps its own gradient space (hidden sizes differ, a cross-tokenizer
bridge has its own), so the composite's gradient is the concatenation of the terms' vectors and
:meth:`CompositeReward.candidate_scores` splits it again: ``sum_i w_i * term_i.candidate_scores(g_i, ids)``.
The composite is differentiable only when every term is; otherwise the decoder asks it for exact scores.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch

from .base import RewardContext, RewardError, RewardModel, RewardSession, SegmentScore

__all__ = ["CompositeReward"]

T = TypeVar("T")


class CompositeReward(RewardModel):
    """``sum_i weight_i * reward_i`` over named terms ``[(name, weight, reward), ...]``.

    A term's non-finite value makes the sum non-finite (the decoder's ``nonfinite_reward`` policy then
    applies); a term that raises gives a :class:`RewardError` naming the term.
    """

    def __init__(self, terms: Sequence[tuple[str, float, RewardModel]], *, name: str = "composite"):
        if not terms:
            raise ValueError("terms: a composite reward needs at least one term")
        names: list[str] = []
        weights: list[float] = []
        rewards: list[RewardModel] = []
        for i, term in enumerate(terms):
            if not isinstance(term, tuple | list) or len(term) != 3:
                raise ValueError(f"terms[{i}]: expected (name, weight, reward), got {term!r}")
            term_name, weight, reward = term
            if not isinstance(term_name, str) or not term_name:
                raise ValueError(f"terms[{i}].name: expected a non-empty string, got {term_name!r}")
            if term_name in names:
                raise ValueError(f"terms[{i}].name: {term_name!r} is used twice; term names must be unique")
            if isinstance(weight, bool) or not isinstance(weight, int | float) or not math.isfinite(weight):
                raise ValueError(f"terms[{i}].weight ({term_name!r}): expected a finite number, got {weight!r}")
            if not isinstance(reward, RewardModel):
                raise ValueError(
                    f"terms[{i}].reward ({term_name!r}): expected a RewardModel, got {type(reward).__name__}"
                )
            names.append(term_name)
            weights.append(float(weight))
            rewards.append(reward)
        self.name = name
        self.names = tuple(names)
        self.weights = tuple(weights)
        self.rewards = tuple(rewards)
        self.differentiable = all(r.differentiable for r in rewards)
        self.differentiates_states = all(r.differentiates_states for r in rewards)
        # Each term's gradient length, learnt from the first gradient it gives: candidate_scores splits the
        # concatenated vector with it (the decoder treats the gradient as opaque and hands it back here).
        self._sizes: list[int | None] = [None] * len(rewards)

    def _guard(self, index: int, fn: Callable[..., T], *args: Any) -> T:
        """Run one term's call ``fn(*args)``; any failure becomes a RewardError naming the term."""
        try:
            return fn(*args)
        except Exception as exc:
            raise RewardError(f"reward {self.name!r}: term {self.names[index]!r} failed: {exc}") from exc

    def _weighted(self, values: Sequence[float]) -> float:
        if not all(math.isfinite(v) for v in values):
            return math.nan  # also for a zero weight: a broken term must not pass as 0
        return sum(w * v for w, v in zip(self.weights, values, strict=True))

    def _checked_scores(self, index: int, scores: Sequence[float], expected: int) -> list[float]:
        try:
            values = [float(x) for x in scores]
        except (TypeError, ValueError) as exc:
            raise RewardError(
                f"reward {self.name!r}: term {self.names[index]!r} gave {type(scores).__name__}, not a list of numbers"
            ) from exc
        if len(values) != expected:
            raise RewardError(
                f"reward {self.name!r}: term {self.names[index]!r} gave {len(values)} scores for {expected} sequences"
            )
        return values

    def _record_size(self, index: int, size: int) -> None:
        known = self._sizes[index]
        if known is None:
            self._sizes[index] = size
        elif known != size:
            raise RewardError(
                f"reward {self.name!r}: term {self.names[index]!r} gave a gradient of {size} values, earlier {known}"
            )

    # ------------------------------------------------------------------ RewardModel
    def check_vocabulary(self, policy_vocab_size: int) -> None:
        for name, reward in zip(self.names, self.rewards, strict=True):
            try:
                reward.check_vocabulary(policy_vocab_size)
            except ValueError as exc:
                raise ValueError(f"reward {self.name!r}: term {name!r}: {exc}") from exc

    def open_session(self, context: RewardContext | None = None) -> RewardSession:
        sessions = [self._guard(i, reward.open_session, context) for i, reward in enumerate(self.rewards)]
        return _CompositeSession(self, sessions)

    def score(self, sequences: Sequence[Sequence[int]]) -> list[float]:
        per_term = [
            self._checked_scores(i, self._guard(i, reward.score, sequences), len(sequences))
            for i, reward in enumerate(self.rewards)
        ]
        return [self._weighted(column) for column in zip(*per_term, strict=True)] if sequences else []

    def embedding_gradients(self, ids: Sequence[int], positions: Sequence[int]) -> tuple[float, torch.Tensor]:
        """Weighted reward and, per position, the terms' gradients concatenated [len(positions), sum of sizes]."""
        if not self.differentiable:
            raise RewardError(f"reward {self.name!r}: a term has no gradient ({self._plain_terms()})")
        values: list[float] = []
        grads: list[torch.Tensor] = []
        for i, reward in enumerate(self.rewards):
            value, grad = self._guard(i, reward.embedding_gradients, ids, positions)
            self._record_size(i, grad.shape[-1])
            values.append(value)
            grads.append(grad.float().to(grads[0].device if grads else grad.device))
        return self._weighted(values), torch.cat(grads, dim=-1)

    def candidate_scores(self, gradient: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
        if not self.differentiable:
            raise RewardError(f"reward {self.name!r}: a term has no gradient ({self._plain_terms()})")
        sizes = self._sizes
        if any(s is None for s in sizes):
            raise RewardError(f"reward {self.name!r}: candidate_scores needs a gradient this reward produced")
        known = [int(s) for s in sizes if s is not None]
        if gradient.shape[-1] != sum(known):
            per_term = dict(zip(self.names, known, strict=True))
            raise RewardError(
                f"reward {self.name!r}: expected a gradient of {sum(known)} values (per term {per_term}), "
                f"got {gradient.shape[-1]}"
            )
        total: torch.Tensor | None = None
        for i, (reward, part) in enumerate(zip(self.rewards, gradient.split(known, dim=-1), strict=True)):
            scores = self._guard(i, reward.candidate_scores, part, token_ids)
            weighted = self.weights[i] * scores.float().cpu()
            total = weighted if total is None else total + weighted
        assert total is not None
        return total

    def reads_policy_states(self, policy: Any) -> bool:
        # Fused only when every term is a head on the policy's own transformer.
        return all(r.reads_policy_states(policy) for r in self.rewards)

    def reward_from_states(self, ids: Sequence[int], states: torch.Tensor) -> float | None:
        score = self.score_from_states(ids, states)
        return None if score is None else score.reward

    def score_from_states(self, ids: Sequence[int], states: torch.Tensor) -> SegmentScore | None:
        values: list[float] = []
        for i, reward in enumerate(self.rewards):
            value = self._guard(i, reward.reward_from_states, ids, states)
            if value is None:  # the term needs a state it was not given: the decoder feeds it and asks again
                return None
            values.append(float(value))
        return SegmentScore(
            reward=self._weighted(values), gradient=None, terms=dict(zip(self.names, values, strict=True))
        )

    def terms_from_states(self, ids: Sequence[int], states: torch.Tensor) -> torch.Tensor:
        parts: list[torch.Tensor] = []
        for i, reward in enumerate(self.rewards):
            value = self._guard(i, reward.terms_from_states, ids, states)
            if value.numel() != 1:  # a nested composite's terms would need their own split of the gradient
                raise RewardError(f"reward {self.name!r}: term {self.names[i]!r} gave {value.numel()} terms, not one")
            parts.append(value.reshape(1))
        return torch.cat(parts)

    def score_from_term_gradients(self, values: Sequence[float], gradients: torch.Tensor) -> SegmentScore:
        if len(values) != len(self.rewards) or gradients.shape[0] != len(self.rewards):
            raise RewardError(f"reward {self.name!r}: expected {len(self.rewards)} terms, got {len(values)}")
        reward = self._weighted(values)
        gradient = None
        if math.isfinite(reward):
            for i in range(len(self.rewards)):
                self._record_size(i, gradients.shape[1])
            gradient = gradients.reshape(-1)  # the terms' gradients concatenated, as the sessions give them
        return SegmentScore(reward=reward, gradient=gradient, terms=dict(zip(self.names, values, strict=True)))

    def _plain_terms(self) -> str:
        return ", ".join(repr(n) for n, r in zip(self.names, self.rewards, strict=True) if not r.differentiable)


class _CompositeSession(RewardSession):
    """One sub-session per term, all given the same context."""

    def __init__(self, rm: CompositeReward, sessions: list[RewardSession]):
        self.rm = rm
        self.sessions = sessions
        self.calls = 0
        self.tokens_processed = 0

    def _count(self) -> None:
        self.calls = sum(s.calls for s in self.sessions)
        self.tokens_processed = sum(s.tokens_processed for s in self.sessions)

    def _each(self, method: str, *args: Any) -> list[Any]:
        """``session.<method>(*args)`` for every term's session, failures named by term."""
        try:
            return [self.rm._guard(i, getattr(s, method), *args) for i, s in enumerate(self.sessions)]
        finally:
            self._count()

    def score_segment(
        self, prefix_ids: Sequence[int], segment_ids: Sequence[int], grad_position: int | None
    ) -> SegmentScore:
        want_grad = grad_position is not None and self.rm.differentiable
        scores: list[SegmentScore] = self._each(
            "score_segment", prefix_ids, segment_ids, grad_position if want_grad else None
        )
        values = [float(s.reward) for s in scores]
        terms = dict(zip(self.rm.names, values, strict=True))
        reward = self.rm._weighted(values)
        gradient: torch.Tensor | None = None
        if want_grad and math.isfinite(reward):
            parts: list[torch.Tensor] = []
            for i, s in enumerate(scores):
                if s.gradient is None:
                    raise RewardError(
                        f"reward {self.rm.name!r}: term {self.rm.names[i]!r} gave no gradient for a finite reward"
                    )
                g = s.gradient.reshape(-1).float()
                self.rm._record_size(i, g.shape[0])
                parts.append(g.to(parts[0].device) if parts else g)
            gradient = torch.cat(parts)
        return SegmentScore(reward=reward, gradient=gradient, terms=terms)

    def score_sequence(self, ids: Sequence[int]) -> float:
        values = self._each("score_sequence", ids)
        return self.rm._weighted([float(v) for v in values])

    def score_many(self, sequences: Sequence[Sequence[int]]) -> list[float]:
        if not sequences:
            return []
        return [self.rm._weighted(column) for column in self._columns(len(sequences), "score_many", sequences)]

    def _columns(self, count: int, method: str, *args: Any) -> list[tuple[float, ...]]:
        """Per input, the terms' values, from every term's batched ``method`` over ``count`` inputs."""
        raw = self._each(method, *args)
        per_term = [self.rm._checked_scores(i, r, count) for i, r in enumerate(raw)]
        return list(zip(*per_term, strict=True))

    def score_continuations(self, prefix_ids: Sequence[int], continuations: Sequence[Sequence[int]]) -> list[float]:
        return [s.reward for s in self.score_continuation_segments(prefix_ids, continuations)]

    def score_continuation_segments(
        self, prefix_ids: Sequence[int], continuations: Sequence[Sequence[int]]
    ) -> list[SegmentScore]:
        if not continuations:
            return []
        columns = self._columns(len(continuations), "score_continuations", prefix_ids, continuations)
        return [
            SegmentScore(
                reward=self.rm._weighted(column), gradient=None, terms=dict(zip(self.rm.names, column, strict=True))
            )
            for column in columns
        ]
