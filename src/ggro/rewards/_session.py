"""The per-sequence scoring state shared by rewards built on a causal (decoder-only) transformer.

The session keeps the KV cache of the accepted prefix, so scoring a candidate segment costs one forward
(+ backward, when a gradient is asked for) over the segment only. Subclasses say how to call their model
and how to turn its output over the fed positions into a reward.
"""

from __future__ import annotations

import time
from abc import abstractmethod
from collections.abc import Sequence
from typing import Any

import torch

from .._compat import cache_kwargs, crop_detached, crop_to, new_cache, output_cache, repeated_cache
from ..segments import common_prefix_length
from .base import RewardError, RewardSession, SegmentScore


class CausalPrefixSession(RewardSession):
    """Prefix-cached scoring for one sequence (``use_prefix_cache=False``: every call feeds everything)."""

    def __init__(self, *, name: str, model: Any, embed: Any, use_prefix_cache: bool):
        self.name = name
        self.model = model
        self.embed = embed
        self.use_prefix_cache = use_prefix_cache
        self.cache: Any = None
        self.cached_ids: list[int] = []
        self.calls = 0
        self.tokens_processed = 0
        self.backward_seconds = 0.0

    # -- what a subclass provides
    @abstractmethod
    def _call(self, embeds: torch.Tensor, cache: Any, past: int, **extra: Any) -> Any:
        """Run the model on ``embeds`` [batch, n, hidden] after ``past`` cached positions (``extra``: model
        arguments that replace the defaults, e.g. a padded batch's ``attention_mask``); return its output."""

    @abstractmethod
    def _reward(self, output: Any, ids: Sequence[int], start: int) -> torch.Tensor:
        """Reward [1] of the sequence ``ids`` from the output of a call that fed ``ids[start:]``."""

    def _continuation_rewards(
        self, output: Any, prefix_ids: Sequence[int], continuations: list[list[int]]
    ) -> torch.Tensor | None:
        """Rewards [n] of ``prefix_ids + c`` from one call that fed the continuations as a batch after the
        cached prefix, right-padded to the longest (padding masked out). None where this session cannot read
        them from such a call (the default), so they are scored one at a time."""
        return None

    def _batches_continuations(self, continuations: list[list[int]]) -> bool:
        """Whether :meth:`_continuation_rewards` can score these continuations (checked before the call)."""
        return type(self)._continuation_rewards is not CausalPrefixSession._continuation_rewards

    def _prefix_extended(self, output: Any, start: int, count: int) -> None:
        """The cache grew by the first ``count`` positions a call fed from ``start`` (pooled rewards keep their
        states)."""

    def _prefix_cropped(self, length: int) -> None:
        """The cache was rolled back to ``length`` positions."""

    # -- shared machinery
    def _call_model(self, embeds: torch.Tensor, cache: Any, past: int, **extra: Any) -> Any:
        """Feed ``embeds`` after ``past`` cached positions (``cache`` None: a fresh pass from position 0)."""
        batch, length = embeds.shape[0], embeds.shape[1]
        kwargs: dict[str, Any] = {
            "inputs_embeds": embeds,
            "attention_mask": torch.ones(batch, past + length, dtype=torch.long, device=embeds.device),
            "position_ids": torch.arange(past, past + length, device=embeds.device)[None].expand(batch, -1),
            **extra,
        }
        if cache is not None:
            kwargs.update(cache_kwargs(self.model, cache))
            kwargs["use_cache"] = True
        return self.model(**kwargs)

    def _forward(self, embeds: torch.Tensor, cache: Any, past: int, **extra: Any) -> Any:
        self.calls += 1
        self.tokens_processed += embeds.shape[0] * embeds.shape[1]
        try:
            return self._call(embeds, cache, past, **extra)
        except RewardError:
            raise
        except Exception as exc:  # the RM is user code: report it with its name, keep the original
            raise RewardError(f"reward model {self.name!r} failed: {exc}") from exc

    def _rollback(self, prefix_ids: Sequence[int]) -> int:
        """Cut the cache back to its longest common prefix with ``prefix_ids``; returns that length."""
        keep = common_prefix_length(self.cached_ids, prefix_ids)
        if self.cache is None:
            self.cache = new_cache(self.model)
            keep = 0
        elif keep < len(self.cached_ids):
            crop_to(self.cache, keep)
        self._prefix_cropped(keep)
        self.cached_ids = list(prefix_ids[:keep])
        return keep

    def _sync_prefix(self, prefix_ids: Sequence[int]) -> None:
        """Make the cache hold exactly ``prefix_ids`` (roll back to the common part, extend the rest)."""
        keep = self._rollback(prefix_ids)
        missing = list(prefix_ids[keep:])
        if missing:
            with torch.no_grad():
                output = self._forward_or_reset(self.embed(missing), keep)
            self.cache = output_cache(output)
            self._prefix_extended(output, keep, len(missing))
            self.cached_ids = list(prefix_ids)

    def _forward_or_reset(self, embeds: torch.Tensor, past: int) -> Any:
        """:meth:`_forward` on the cache; a failed call may have extended some layers' caches, so the session
        forgets its cache then (the next call re-feeds the prefix)."""
        try:
            return self._forward(embeds, self.cache, past)
        except BaseException:
            self.cache, self.cached_ids = None, []
            self._prefix_cropped(0)
            raise

    def score_segment(
        self, prefix_ids: Sequence[int], segment_ids: Sequence[int], grad_position: int | None
    ) -> SegmentScore:
        if not segment_ids:
            raise ValueError("score_segment: empty segment")
        use_cache = self.use_prefix_cache and len(prefix_ids) > 0
        if use_cache:
            # The part of the prefix the cache lacks (the segment accepted last) is fed in the same pass as the
            # candidate: one forward per segment instead of two.
            start = self._rollback(prefix_ids)
            feed = [*prefix_ids[start:], *segment_ids]
        else:
            feed, start = list(prefix_ids) + list(segment_ids), 0
        with torch.no_grad():
            embeds = self.embed(feed)
        leaf: torch.Tensor | None = None
        if grad_position is not None:
            # Only the insertion position needs dr/de; make just that row a leaf.
            at = len(prefix_ids) - start + grad_position
            leaf = embeds[0, at].detach().clone().requires_grad_(True)
            embeds = torch.cat([embeds[:, :at], leaf[None, None], embeds[:, at + 1 :]], dim=1)
        with torch.enable_grad() if leaf is not None else torch.no_grad():
            if use_cache:
                output = self._forward_or_reset(embeds, start)
                returned = output_cache(output)
                if returned is not None:  # not `or`: a cache's truth value is its length
                    self.cache = returned
                crop_detached(self.cache, len(prefix_ids))  # drop the candidate's KV; the prefix stays
                if len(prefix_ids) > start:
                    self._prefix_extended(output, start, len(prefix_ids) - start)
                self.cached_ids = list(prefix_ids)
            else:
                output = self._forward(embeds, None, start)
            reward_t = self._checked(self._reward(output, [*prefix_ids, *segment_ids], start))
            reward = float(reward_t[0].detach().float())
            gradient = None
            if leaf is not None and torch.isfinite(reward_t).all():
                started = time.perf_counter()
                (gradient,) = torch.autograd.grad(reward_t[0], leaf)
                gradient = gradient.detach().float()
                self.backward_seconds = (self.backward_seconds or 0.0) + time.perf_counter() - started
        return SegmentScore(reward=reward, gradient=gradient)

    def score_sequence(self, ids: Sequence[int]) -> float:
        ids = list(ids)
        if not ids:
            raise ValueError("score_sequence: empty sequence")
        with torch.no_grad():
            if self.use_prefix_cache and len(ids) > 1:
                self._sync_prefix(ids[:-1])
                output = self._forward(self.embed(ids[-1:]), self.cache, len(ids) - 1)
                crop_to(self.cache, len(ids) - 1)
                reward_t = self._reward(output, ids, len(ids) - 1)
            else:
                reward_t = self._reward(self._forward(self.embed(ids), None, 0), ids, 0)
        return float(self._checked(reward_t)[0].float())

    def score_many(self, sequences: Sequence[Sequence[int]]) -> list[float]:
        return self.score_batch(sequences)

    def score_continuations(self, prefix_ids: Sequence[int], continuations: Sequence[Sequence[int]]) -> list[float]:
        conts = [list(c) for c in continuations]
        batchable = [i for i, c in enumerate(conts) if c]
        if not (self.use_prefix_cache and prefix_ids and len(batchable) > 1):
            return super().score_continuations(prefix_ids, conts)
        batch = [conts[i] for i in batchable]
        if not self._batches_continuations(batch):
            return super().score_continuations(prefix_ids, conts)
        past, width = len(prefix_ids), max(len(c) for c in batch)
        with torch.no_grad():
            self._sync_prefix(prefix_ids)
            # The cached prefix, repeated once per continuation; each continuation right-padded (with its own
            # first token: any id works, the padding is masked out and never read).
            cache = repeated_cache(self.cache, len(batch))
            embeds = torch.cat([self.embed(c + [c[0]] * (width - len(c))) for c in batch])
            mask = torch.tensor([[1] * (past + len(c)) + [0] * (width - len(c)) for c in batch], device=embeds.device)
            output = self._forward(embeds, cache, past, attention_mask=mask)
            rewards = self._continuation_rewards(output, prefix_ids, batch)
        if rewards is None or rewards.shape != (len(batch),):
            got = None if rewards is None else tuple(rewards.shape)
            raise RewardError(f"reward model {self.name!r}: expected {len(batch)} rewards, got {got}")
        scores = dict(zip(batchable, (float(r) for r in rewards.float()), strict=True))
        if len(scores) < len(conts):  # an empty continuation is the prefix itself: scored once for all of them
            prefix_score = self.score_sequence(list(prefix_ids))
            scores.update((i, prefix_score) for i in range(len(conts)) if i not in scores)
        return [scores[i] for i in range(len(conts))]

    @abstractmethod
    def score_batch(self, sequences: Sequence[Sequence[int]]) -> list[float]:
        """The model's own batched, gradient-free scoring of whole sequences."""

    def _checked(self, reward_t: torch.Tensor) -> torch.Tensor:
        if reward_t.shape != (1,):
            raise RewardError(f"reward model {self.name!r}: expected one reward, got shape {tuple(reward_t.shape)}")
        return reward_t
