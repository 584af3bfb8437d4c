"""Naive GGRO decoder with the structure of the authors' release.

This module is deliberately straightforward.  It serves two purposes:

* the slow side of benchmarks: like the authors' release it re-encodes the whole
  context for every refinement (fresh policy cache each time), runs the reward model
  over the full sequence through a one-hot x embedding product and computes (and
  discards) a second, soft-token reward pass;
* an independent oracle: the optimised decoder must reproduce its output token for
  token.

Algorithm (greedy everywhere)
-----------------------------
The response is built segment by segment.  For each segment, up to
``refinement_steps`` candidates are generated from the current context.  A candidate
is decoded greedily until EOS, the absolute token budget, or a high-entropy point
(at least ``min_segment_tokens`` tokens and the entropy of the distribution the last
token was drawn from is at least ``entropy_threshold``; that last token is then
dropped).  Each candidate is scored by the reward model over the full sequence; the
gradient of the reward with respect to the RM input embedding at the insertion
position (offset ``first_insertion_offset`` in the first segment, 0 afterwards)
ranks the policy's top-``nudge_top_k`` tokens there, and the best one is forced at
the insertion position in the next refinement.  The loop stops early when a candidate
repeats an earlier one.  The best-rewarded candidate (first strict maximum) is
appended to the context.

Quirks of the release reproduced on purpose: the token currently at the insertion
position competes with its score multiplied by ``1e-10``; the token budget is fixed
from the original prompt length; entropy uses probabilities clamped at ``1e-9``;
optionally, segments are joined through text (decode and re-tokenise).
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from transformers import PreTrainedTokenizerBase

from .._compat import cache_kwargs, output_cache

__all__ = [
    "NaiveCandidate",
    "NaiveResult",
    "NaiveSegment",
    "entropy_of_logits",
    "naive_ggro_generate",
]

CURRENT_TOKEN_SCORE_SCALE = 1e-10
"""Factor applied to the gradient score of the token currently at the insertion
position (the release multiplies it by this instead of masking it out)."""

ENTROPY_PROB_FLOOR = 1e-9
"""Probabilities are clamped to at least this value before ``p * log p``."""


@dataclass
class NaiveCandidate:
    """One refinement of a segment.

    Attributes:
        token_ids: newly generated token ids (after the high-entropy trim).
        reward: reward-model score of ``context + token_ids`` (``-inf`` if the RM
            returned a non-finite value; ``nan`` never occurs here).
        finished: the candidate ended with the EOS token.
        nudge_token: the token forced at the insertion offset, or ``None`` for the
            draft and for refinements where no nudge was applied.
    """

    token_ids: list[int]
    reward: float
    finished: bool
    nudge_token: int | None


@dataclass
class NaiveSegment:
    """One outer-loop iteration (a segment and its refinements).

    Attributes:
        start: absolute length of the context the segment was generated from.
        insertion_offset: offset (relative to ``start``) of the nudged position.
        candidates: evaluated candidates, in refinement order (a candidate that
            repeated an earlier one is not included).
        kept: index into ``candidates`` of the kept one.
        stopped_on_repeat: the refinement loop stopped because a candidate equalled an
            earlier one.
    """

    start: int
    insertion_offset: int
    candidates: list[NaiveCandidate] = field(default_factory=list)
    kept: int = 0
    stopped_on_repeat: bool = False


@dataclass
class NaiveResult:
    """Output of :func:`naive_ggro_generate`.

    Attributes:
        response_ids: token ids after the prompt (a trailing EOS is included when the
            response finished).
        segments: per-segment details.
        finished: the response ended with EOS.
        policy_forward_passes: number of forward calls made on the policy.
        reward_calls: number of forward calls made on the reward model (the discarded
            soft-token pass included).
    """

    response_ids: list[int]
    segments: list[NaiveSegment]
    finished: bool
    policy_forward_passes: int
    reward_calls: int


def entropy_of_logits(logits: torch.Tensor) -> float:
    """Entropy (nats) of ``softmax(logits)`` at temperature 1, as the release computes it.

    Probabilities are clamped to at least :data:`ENTROPY_PROB_FLOOR` before
    ``-(p * log p).sum()``; the computation is done in float32.
    """
    p = torch.softmax(logits.float(), dim=-1).clamp_min(ENTROPY_PROB_FLOOR)
    return float(-(p * p.log()).sum())


def _model_device(model: Any) -> torch.device:
    device = getattr(model, "device", None)
    if isinstance(device, torch.device):
        return device
    return next(model.parameters()).device


@dataclass
class _Counters:
    policy_forward_passes: int = 0
    reward_calls: int = 0


@dataclass
class _Generation:
    token_ids: list[int]
    finished: bool
    insertion_logits: torch.Tensor | None  # float32 logits that produced token_ids[offset]
    soft_rows: list[torch.Tensor]  # per-step softmax rows (only with mimic overheads)


def _generate_candidate(
    policy: Any,
    context: list[int],
    *,
    total: int,
    offset: int,
    forced_token: int | None,
    eos: int | None,
    entropy_threshold: float,
    min_segment_tokens: int,
    keep_soft_rows: bool,
    counters: _Counters,
) -> _Generation:
    """Greedy decoding of one candidate with a fresh cache (prefill of the whole context)."""
    device = _model_device(policy)
    params = inspect.signature(policy.forward).parameters
    extra: dict[str, Any] = {"logits_to_keep": 1} if "logits_to_keep" in params else {}
    prompt_len = len(context)
    gen: list[int] = []
    soft_rows: list[torch.Tensor] = []
    insertion_logits: torch.Tensor | None = None
    finished = False
    cache: Any = None
    while True:
        if prompt_len + len(gen) >= total:
            break
        if not gen:
            ids = torch.tensor([context], dtype=torch.long, device=device)
            out = policy(input_ids=ids, use_cache=True, **extra)
        else:
            ids = torch.tensor([[gen[-1]]], dtype=torch.long, device=device)
            out = policy(input_ids=ids, use_cache=True, **cache_kwargs(policy, cache), **extra)
        counters.policy_forward_passes += 1
        cache = output_cache(out)
        logits = out.logits[0, -1].to(torch.float32, copy=True)
        at_insertion = len(gen) == offset
        if at_insertion:
            insertion_logits = logits
        token = int(forced_token) if forced_token is not None and at_insertion else int(torch.argmax(logits))
        gen.append(token)
        if keep_soft_rows:
            soft_rows.append(torch.softmax(logits, dim=-1))
        if eos is not None and token == eos:
            finished = True
            break
        if prompt_len + len(gen) == total:
            break
        if len(gen) >= min_segment_tokens and entropy_of_logits(logits) >= entropy_threshold:
            gen.pop()
            if keep_soft_rows:
                soft_rows.pop()
            break
    if len(gen) <= offset:
        insertion_logits = None
    return _Generation(gen, finished, insertion_logits, soft_rows)


def _pooled_reward(output: Any) -> torch.Tensor:
    """Score-head output at the last position, as a 0-d tensor.

    HF ``*ForSequenceClassification`` models given ``inputs_embeds`` (no
    ``input_ids``) pool at the last position, so ``logits`` is ``[1, num_labels]``;
    unpooled ``[1, len, num_labels]`` logits are pooled here.
    """
    logits = output.logits
    if logits.dim() == 3:
        return logits[0, -1, 0]
    return logits.reshape(-1)[0]


def _score_candidate(
    reward_model: Any,
    full_ids: list[int],
    *,
    grad_position: int | None,
    mimic_release_overheads: bool,
    context_len: int,
    soft_rows: list[torch.Tensor],
    counters: _Counters,
) -> tuple[float, torch.Tensor | None, torch.Tensor | None]:
    """Reward of ``full_ids`` and, if ``grad_position`` is given, the gradient.

    Returns ``(reward, g, onehot_grad_row)``: ``g`` is d reward / d (RM input embedding
    at ``grad_position``); ``onehot_grad_row`` (mimic mode only) is d reward / d
    (one-hot row at ``grad_position``), i.e. ``E @ g`` over the whole vocabulary, the
    quantity the release ranks candidates with.
    """
    device = _model_device(reward_model)
    emb = reward_model.get_input_embeddings().weight
    ids = torch.tensor(full_ids, dtype=torch.long, device=device)
    mask = torch.ones(1, len(full_ids), dtype=torch.long, device=device)
    want_grad = grad_position is not None
    g: torch.Tensor | None = None
    onehot_row: torch.Tensor | None = None
    with torch.set_grad_enabled(want_grad):
        if mimic_release_overheads:
            onehot = F.one_hot(ids, num_classes=emb.shape[0]).to(emb.dtype)
            onehot.requires_grad_(want_grad)
            embeds = (onehot @ emb).unsqueeze(0)
            leaf = onehot
        else:
            embeds = emb[ids].detach().unsqueeze(0).requires_grad_(want_grad)
            leaf = embeds
        out = reward_model(inputs_embeds=embeds, attention_mask=mask)
        counters.reward_calls += 1
        reward_t = _pooled_reward(out)
        reward = float(reward_t.detach().float())
        if want_grad and reward_t.requires_grad:
            assert grad_position is not None
            if mimic_release_overheads:
                grad_onehot, grad_embeds = torch.autograd.grad(reward_t, [leaf, embeds])
                onehot_row = grad_onehot[grad_position]
                g = grad_embeds[0, grad_position]
            else:
                (grad_embeds,) = torch.autograd.grad(reward_t, [leaf])
                g = grad_embeds[0, grad_position]
    if mimic_release_overheads:
        # The release also scores the soft-token version (softmax rows for generated
        # positions, one-hot rows for the context) and throws the result away.
        with torch.no_grad():
            rows = [F.one_hot(ids[:context_len], num_classes=emb.shape[0]).to(emb.dtype)]
            if soft_rows:
                rows.append(torch.stack(soft_rows).to(device=device, dtype=emb.dtype))
            soft = torch.cat(rows, dim=0)
            reward_model(inputs_embeds=(soft @ emb).unsqueeze(0), attention_mask=mask)
            counters.reward_calls += 1
    if not math.isfinite(reward):
        reward = -math.inf
    return reward, g, onehot_row


def _propose_nudge(
    reward_model: Any,
    insertion_logits: torch.Tensor,
    current_token: int,
    g: torch.Tensor | None,
    onehot_row: torch.Tensor | None,
    nudge_top_k: int,
) -> int:
    """Pick the nudge token among the policy's top-k at the insertion position."""
    k = min(nudge_top_k, insertion_logits.shape[-1])
    cands = torch.topk(insertion_logits, k).indices
    if onehot_row is not None:
        scores = onehot_row[cands.to(onehot_row.device)].float()
    else:
        assert g is not None
        emb = reward_model.get_input_embeddings().weight
        rows = emb[cands.to(emb.device)].detach().float()
        scores = rows @ g.detach().float()
    scores = scores.clone()
    scores[cands.to(scores.device) == current_token] *= CURRENT_TOKEN_SCORE_SCALE
    return int(cands[int(torch.argmax(scores))])


def naive_ggro_generate(
    policy: Any,
    reward_model: Any,
    tokenizer: PreTrainedTokenizerBase | None,
    prompt_ids: list[int],
    *,
    max_new_tokens: int,
    entropy_threshold: float = 1.5,
    min_segment_tokens: int = 4,
    first_insertion_offset: int = 4,
    refinement_steps: int = 8,
    nudge_top_k: int = 25,
    retokenize_between_segments: bool = False,
    eos_token_id: int | None = None,
    mimic_release_overheads: bool = True,
) -> NaiveResult:
    """Generate a response with GGRO, the way the authors' release is structured.

    Args:
        policy: any HF causal LM (``logits`` output, KV cache support); used with its
            own device and dtype.  Put it in eval mode yourself.
        reward_model: an HF ``AutoModelForSequenceClassification``-style model that
            shares the policy's vocabulary and accepts ``inputs_embeds``; the reward is
            the first score-head output at the last position.
        tokenizer: needed for ``retokenize_between_segments`` and, when
            ``eos_token_id`` is ``None``, for its ``eos_token_id``; may be ``None``
            otherwise.
        prompt_ids: prompt token ids (chat template already applied).
        max_new_tokens: token budget; the absolute limit ``len(prompt_ids) +
            max_new_tokens`` is fixed from the original prompt.
        entropy_threshold: a segment ends when the distribution of its latest token
            has at least this entropy (nats) and it holds ``min_segment_tokens``.
        min_segment_tokens: minimum segment length before the entropy rule applies.
        first_insertion_offset: nudge position in the first segment (0 afterwards).
        refinement_steps: candidates per segment, the draft included.
        nudge_top_k: number of policy top tokens considered for a nudge.
        retokenize_between_segments: join segments through text (decode, then
            re-tokenise the whole context), as the release does.
        eos_token_id: EOS id; defaults to ``tokenizer.eos_token_id``.
        mimic_release_overheads: build RM inputs as one-hot x embedding matrix and run
            the discarded soft-token RM pass (and propose a nudge even for the last
            refinement), like the release.  ``False`` uses a plain embedding lookup and
            skips all of that; results are the same up to float rounding.

    Returns:
        A :class:`NaiveResult`.
    """
    if refinement_steps < 1:
        raise ValueError("refinement_steps must be >= 1")
    if retokenize_between_segments and tokenizer is None:
        raise ValueError("retokenize_between_segments=True needs a tokenizer")
    eos = eos_token_id
    if eos is None and tokenizer is not None:
        eos = tokenizer.eos_token_id
    prompt_ids = [int(t) for t in prompt_ids]
    total = len(prompt_ids) + max_new_tokens
    context = list(prompt_ids)
    counters = _Counters()
    segments: list[NaiveSegment] = []
    finished = False

    with torch.no_grad():
        while True:
            seg_index = len(segments)
            offset = first_insertion_offset if seg_index == 0 else 0
            start = len(context)
            segment = NaiveSegment(start=start, insertion_offset=offset)
            best = -math.inf
            pending_nudge: int | None = None
            for r in range(refinement_steps):
                prev = segment.candidates[-1] if segment.candidates else None
                forced: int | None = None
                if r > 0 and pending_nudge is not None and prev is not None and len(prev.token_ids) > offset:
                    forced = pending_nudge
                gen = _generate_candidate(
                    policy,
                    context,
                    total=total,
                    offset=offset,
                    forced_token=forced,
                    eos=eos,
                    entropy_threshold=entropy_threshold,
                    min_segment_tokens=min_segment_tokens,
                    keep_soft_rows=mimic_release_overheads,
                    counters=counters,
                )
                applied = forced if forced is not None and len(gen.token_ids) > offset else None
                if any(c.token_ids == gen.token_ids for c in segment.candidates):
                    segment.stopped_on_repeat = True
                    break
                long_enough = len(gen.token_ids) > offset
                wants_proposal = long_enough and (mimic_release_overheads or r + 1 < refinement_steps)
                reward, g, onehot_row = _score_candidate(
                    reward_model,
                    context + gen.token_ids,
                    grad_position=start + offset if wants_proposal else None,
                    mimic_release_overheads=mimic_release_overheads,
                    context_len=start,
                    soft_rows=gen.soft_rows,
                    counters=counters,
                )
                segment.candidates.append(
                    NaiveCandidate(
                        token_ids=list(gen.token_ids),
                        reward=reward,
                        finished=gen.finished,
                        nudge_token=applied,
                    )
                )
                if reward > best:
                    best = reward
                    segment.kept = len(segment.candidates) - 1
                pending_nudge = None
                if wants_proposal and gen.insertion_logits is not None and (g is not None or onehot_row is not None):
                    pending_nudge = _propose_nudge(
                        reward_model,
                        gen.insertion_logits,
                        gen.token_ids[offset],
                        g,
                        onehot_row,
                        nudge_top_k,
                    )
            segments.append(segment)
            kept = segment.candidates[segment.kept]
            context = context + kept.token_ids
            if retokenize_between_segments:
                assert tokenizer is not None
                text = tokenizer.decode(context, skip_special_tokens=False)
                context = list(tokenizer(text, add_special_tokens=False).input_ids)
            if kept.finished:
                finished = True
                break
            body = context[:-1] if context and eos is not None and context[-1] == eos else context
            if len(body) - len(prompt_ids) >= max_new_tokens:
                break
            if not kept.token_ids:
                # No progress is possible (budget exhausted or an empty segment);
                # the release would loop forever here.
                break

    return NaiveResult(
        response_ids=context[len(prompt_ids) :],
        segments=segments,
        finished=finished,
        policy_forward_passes=counters.policy_forward_passes,
        reward_calls=counters.reward_calls,
    )
