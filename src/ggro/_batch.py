"""Batched policy forward passes for sequences that each roll back and advance on their own.

Every sequence owns one row of a shared KV cache. A step feeds each row a chunk of its own length
(right-padded with dead slots). Rolling a row back marks its slots dead in the attention mask instead of
moving memory; RoPE/learned positions come from explicit ``position_ids`` so holes change nothing
numerically meaningful. Dead tails common to all rows are cropped, and the cache is compacted once it
holds more than :data:`COMPACT_SLACK` slots beyond its longest row. With one row there are never holes: a
rollback is a crop.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field

import torch
from transformers import PreTrainedModel

from ._compat import (
    append_cache_rows,
    cache_kwargs,
    cache_position_kwargs,
    cache_rows,
    copy_cache_row,
    crop_to,
    gather_cache_slots,
    merge_cache_rows,
    new_cache,
    output_cache,
)


@dataclass
class FeedRequest:
    tokens: list[int]
    all_logits: bool = False
    """Return logits for every fed position (speculative verification); else only for the last."""
    hidden: bool = False
    """Also return the policy's final hidden states of the fed positions, in :attr:`states`."""
    states: torch.Tensor | None = None
    """Filled by the pass when ``hidden``: float32 [len(tokens), hidden size]."""


@dataclass
class Rollback:
    """Ask for the sequence's cache row (or its branch row ``branch``) to be cut back to its first ``length``
    tokens."""

    length: int
    branch: int | None = None


@dataclass
class Fork:
    """Ask for ``count`` branch rows, each a copy of the sequence's row cut back to its first ``length`` tokens
    (parallel refinement decodes several candidates at once over the shared prefix)."""

    count: int
    length: int


@dataclass
class BranchFeed:
    """One pass over the sequence's branch rows: ``requests[b]`` feeds branch ``b`` (None: not this pass).
    Answered with each branch's logits (None where it was not fed)."""

    requests: list[FeedRequest | None]


@dataclass
class Join:
    """Ask for the sequence's branch rows to be dropped; with ``keep``, branch ``keep``'s row first replaces the
    sequence's own (cache and tokens), else the sequence's row is untouched."""

    keep: int | None = None


@dataclass
class GradientFeed:
    """Ask for a reward's gradient from the policy's own transformer: ``tokens`` are fed with gradients after the
    first ``length`` tokens of the sequence's row (on a scratch copy of it: the row is untouched), and
    ``objective`` turns their final hidden states (float32 [len(tokens), hidden], a graph from the embedding of
    ``tokens[0]``) into the reward's terms [T]. Answered on the request: each term's value and its gradient with
    respect to that embedding, or the error the objective raised. Requests of several sequences share one pass."""

    length: int
    tokens: list[int]
    objective: Callable[[torch.Tensor], torch.Tensor]
    values: list[float] | None = None
    gradients: torch.Tensor | None = None
    """float32 [T, hidden]."""
    error: Exception | None = None
    seconds: float = 0.0
    """This request's share of the pass (forward and backward)."""
    backward_seconds: float = 0.0


Request = FeedRequest | Rollback | Fork | BranchFeed | Join | GradientFeed
"""What a sequence coroutine yields to the scheduler."""
Answer = torch.Tensor | list[torch.Tensor | None] | None
"""What the scheduler sends back: logits for a FeedRequest, a list for a BranchFeed, None otherwise."""


def feed(request: FeedRequest) -> Generator[Request, Answer, torch.Tensor]:
    """Yield one feed and return its logits (for ``yield from`` in sequence coroutines)."""
    out = yield request
    assert isinstance(out, torch.Tensor)
    return out


def gradient(request: GradientFeed) -> Generator[Request, Answer, GradientFeed]:
    """Yield one gradient request and return it, answered."""
    yield request
    return request


def feed_branches(requests: list[FeedRequest | None]) -> Generator[Request, Answer, list[torch.Tensor | None]]:
    """Yield one pass over branch rows and return each branch's logits."""
    out = yield BranchFeed(requests)
    assert isinstance(out, list)
    return out


FED_ROW_SHARE = 0.25
"""A pass feeds only the rows that asked to be fed when they are at most this share of the batch: below it,
copying their KV costs less than computing the idle rows (measured on a 2-core CPU with SmolLM2-135M, batches
of 8 to 64 rows of about 120 slots: 2 of 8 fed rows 96 -> 63 ms a pass, 4 of 8 87 -> 93 ms)."""


COMPACT_SLACK = 8
"""The cache is compacted once it holds more than this many slots beyond its longest row. Each pass adds its
width to every row, fed or not, so idle rows gather dead slots; compacting early keeps the cache near the
longest row. Bench (SmolLM2-135M, 8 prompts, 48 new tokens): ggro-batch peak memory 1.47-1.59x greedy in three
runs under the earlier rule (twice the longest row plus 64), 1.35-1.41x in two runs under this one, no slower."""


def _pass_fed_rows_only(idle: int, fed: int) -> bool:
    return idle > 0 and fed <= FED_ROW_SHARE * (fed + idle)


@dataclass
class _Row:
    slots: list[int] = field(default_factory=list)
    """Cache slot index of each live token, in order."""


class PolicyBatch:
    def __init__(self, model: PreTrainedModel, num_rows: int, pad_token_id: int = 0) -> None:
        self.model = model
        self.device = next(model.parameters()).device
        self.cache = new_cache(model)
        self.rows = [_Row() for _ in range(num_rows)]
        self.live = torch.zeros(num_rows, 0, dtype=torch.bool)
        self.pad_token_id = pad_token_id
        self.forward_passes = 0

    def length(self, row: int) -> int:
        return len(self.rows[row].slots)

    @property
    def num_slots(self) -> int:
        return self.live.shape[1]

    def rollback(self, row: int, length: int) -> None:
        """Forget everything of ``row`` after its first ``length`` tokens."""
        slots = self.rows[row].slots
        if length >= len(slots):
            return
        dead = slots[length:]
        del slots[length:]
        self.live[row, dead] = False
        self._trim()

    def _trim(self) -> None:
        last = max((r.slots[-1] + 1 for r in self.rows if r.slots), default=0)
        if last < self.num_slots:
            crop_to(self.cache, last)
            self.live = self.live[:, :last]
        longest = max((len(r.slots) for r in self.rows), default=0)
        if self.num_slots > longest + COMPACT_SLACK:
            self._compact(longest)

    def _compact(self, longest: int) -> None:
        """Right-align each row's live slots in a cache of ``longest`` slots."""
        index = torch.zeros(len(self.rows), longest, dtype=torch.long)
        live = torch.zeros(len(self.rows), longest, dtype=torch.bool)
        for i, row in enumerate(self.rows):
            n = len(row.slots)
            if n:
                index[i, longest - n :] = torch.tensor(row.slots)
                live[i, longest - n :] = True
            row.slots = list(range(longest - n, longest))
        gather_cache_slots(self.cache, index)
        self.live = live

    def fork(self, parent: int, count: int, length: int) -> list[int]:
        """Append ``count`` rows that copy row ``parent`` cut back to its first ``length`` tokens (they share no
        memory with it afterwards); returns their indices."""
        slots = self.rows[parent].slots[:length]
        first = len(self.rows)
        append_cache_rows(self.cache, torch.full((count,), parent, dtype=torch.long))
        live = torch.zeros(count, self.num_slots, dtype=torch.bool)
        live[:, slots] = True
        self.live = torch.cat([self.live, live])
        self.rows.extend(_Row(list(slots)) for _ in range(count))
        return list(range(first, first + count))

    def adopt_row(self, target: int, source: int) -> None:
        """Make row ``target`` a copy of row ``source`` (its cache, live slots and tokens)."""
        copy_cache_row(self.cache, target, source)
        self.live[target] = self.live[source]
        self.rows[target].slots = list(self.rows[source].slots)

    def step(self, requests: dict[int, FeedRequest]) -> dict[int, torch.Tensor]:
        """One forward pass over every row's chunk. Returns float32 logits per requesting row:
        [len(tokens), vocab] when ``all_logits`` else [1, vocab] (the last fed position)."""
        if not requests:
            return {}
        width = max(len(r.tokens) for r in requests.values())
        n_rows = len(self.rows)
        ids = torch.full((n_rows, width), self.pad_token_id, dtype=torch.long)
        positions = torch.zeros(n_rows, width, dtype=torch.long)
        chunk_live = torch.zeros(n_rows, width, dtype=torch.bool)
        start = self.num_slots
        for i, row in enumerate(self.rows):
            base = len(row.slots)
            req = requests.get(i)
            n = len(req.tokens) if req is not None else 0
            if req is not None and n:
                ids[i, :n] = torch.tensor(req.tokens)
                chunk_live[i, :n] = True
            positions[i] = base + torch.arange(width).clamp(max=max(n - 1, 0))
            row.slots.extend(range(start, start + n))
        # Logits only where someone reads them: never a [length x vocab] tensor over a prefill.
        wanted: set[int] = set()
        for req in requests.values():
            n = len(req.tokens)
            wanted.update(range(n) if req.all_logits else [n - 1])
        keep = sorted(wanted)
        attention = torch.cat([self.live, chunk_live], dim=1)
        fed_rows = sorted(requests)
        # Idle rows (a sequence parked while its branches decode, branches that ended) would cost a row of
        # compute each; a pass over the fed rows alone costs copying their KV instead.
        subset = self.num_slots > 0 and _pass_fed_rows_only(n_rows - len(fed_rows), len(fed_rows))
        cache = self.cache
        if subset:
            picked = torch.tensor(fed_rows)
            ids, positions, attention_in = ids[picked], positions[picked], attention[picked]
            cache = cache_rows(self.model, self.cache, picked)
        else:
            attention_in = attention
        kwargs = cache_kwargs(self.model, cache)
        kwargs.update(cache_position_kwargs(self.model, start, width, self.device))
        hidden = any(r.hidden for r in requests.values())
        if hidden:
            kwargs["output_hidden_states"] = True
        with torch.no_grad():
            out = self.model(
                input_ids=ids.to(self.device),
                attention_mask=attention_in.to(self.device, torch.long),
                position_ids=positions.to(self.device),
                use_cache=True,
                logits_to_keep=torch.tensor(keep, device=self.device),
                **kwargs,
            )
        # The output's batch index of each fed row.
        out_row = {i: j for j, i in enumerate(fed_rows)} if subset else {i: i for i in fed_rows}
        if hidden:  # the last entry is the final (normed) hidden state, what the LM head reads
            final = out.hidden_states[-1]
            for i, req in requests.items():
                if req.hidden:
                    req.states = final[out_row[i], : len(req.tokens)].float()
        self.forward_passes += 1
        returned = output_cache(out)
        if subset:
            merge_cache_rows(self.cache, returned if returned is not None else cache, picked, width)
        elif returned is not None:
            self.cache = returned
        self.live = attention
        column = {pos: j for j, pos in enumerate(keep)}
        logits = out.logits
        result: dict[int, torch.Tensor] = {}
        for i, req in requests.items():
            n = len(req.tokens)
            cols = [column[p] for p in (range(n) if req.all_logits else [n - 1])]
            result[i] = logits[out_row[i], cols].float()
        return result

    def gradient_pass(self, requests: dict[int, GradientFeed]) -> None:
        """One forward with gradients over the rows' requests (each on a copy of its row cut to the request's
        length), then one backward per reward term for all of them; answers each request in place."""
        started = time.perf_counter()
        fed_rows = sorted(requests)
        picked = torch.tensor(fed_rows)
        width = max(len(requests[i].tokens) for i in fed_rows)
        start = self.num_slots
        ids = torch.full((len(fed_rows), width), self.pad_token_id, dtype=torch.long)
        positions = torch.zeros(len(fed_rows), width, dtype=torch.long)
        attention = torch.zeros(len(fed_rows), start + width, dtype=torch.bool)
        for j, i in enumerate(fed_rows):
            req = requests[i]
            n = len(req.tokens)
            if not 0 < req.length <= len(self.rows[i].slots) or n == 0:
                raise ValueError(f"gradient request: length {req.length} and {n} tokens on a row of {self.length(i)}")
            attention[j, self.rows[i].slots[: req.length]] = True
            attention[j, start : start + n] = True
            ids[j, :n] = torch.tensor(req.tokens)
            positions[j] = req.length + torch.arange(width).clamp(max=n - 1)
        decoder = self.model.get_decoder()
        cache = cache_rows(self.model, self.cache, picked) if start else new_cache(self.model)
        with torch.no_grad():
            embeds = self.model.get_input_embeddings()(ids.to(self.device))
        leaf = embeds[:, 0].detach().clone().requires_grad_(True)
        embeds = torch.cat([leaf[:, None], embeds[:, 1:]], dim=1)
        kwargs = cache_kwargs(decoder, cache)
        kwargs.update(cache_position_kwargs(decoder, start, width, self.device))
        terms: dict[int, torch.Tensor] = {}
        with torch.enable_grad():
            out = decoder(
                inputs_embeds=embeds,
                attention_mask=attention.to(self.device, torch.long),
                position_ids=positions.to(self.device),
                use_cache=True,
                **kwargs,
            )
            states = out.last_hidden_state.float()
            for j, i in enumerate(fed_rows):
                req = requests[i]
                try:  # the objective is reward code: its failure belongs to its sequence alone
                    value = req.objective(states[j, : len(req.tokens)])
                    if value.dim() != 1 or value.numel() == 0:
                        raise ValueError(f"expected the reward's terms as a 1-D tensor, got shape {tuple(value.shape)}")
                    terms[j] = value
                except Exception as exc:
                    req.error = exc
            backward = time.perf_counter()
            count = max((v.numel() for v in terms.values()), default=0)
            grads: list[torch.Tensor] = []
            for t in range(count):
                # Rows are independent, so the gradient of the sum gives each row its own term's gradient.
                total = torch.stack([v[t] for v in terms.values() if v.numel() > t]).sum()
                grad = None
                if total.requires_grad:  # else no term depends on the states: every gradient is 0
                    (grad,) = torch.autograd.grad(total, leaf, retain_graph=t < count - 1, allow_unused=True)
                grads.append(torch.zeros_like(leaf, dtype=torch.float32) if grad is None else grad.detach().float())
        finished = time.perf_counter()
        for j, value in terms.items():
            req = requests[fed_rows[j]]
            req.values = [float(v) for v in value.detach().float()]
            req.gradients = torch.stack([g[j] for g in grads[: value.numel()]])
        share = 1.0 / len(fed_rows)
        for req in requests.values():
            req.seconds = (finished - started) * share
            req.backward_seconds = (finished - backward) * share

    def drop_rows(self, keep_rows: Sequence[int]) -> list[int]:
        """Keep only ``keep_rows`` (finished sequences leave the batch). Returns the old->new mapping order."""
        keep = list(keep_rows)
        if len(keep) == len(self.rows):
            return keep
        self.cache.batch_select_indices(torch.tensor(keep, device=self.device))
        self.live = self.live[keep]
        self.rows = [self.rows[i] for i in keep]
        self._trim()
        return keep
