"""Batched policy forward passes for sequences that each roll back and advance on their own.

Every sequence owns a row: a list of slots in one batch row of a shared KV cache, its home; sequences with short
prompts share a home (:func:`shared_homes`). A step feeds each home a chunk (its rows' tokens side by side,
right-padded with dead slots to the widest home's). Rolling a row back marks its slots dead in the attention mask
instead of moving memory; RoPE/learned positions come from explicit ``position_ids`` so holes change nothing
numerically meaningful. A fork's branch rows share their parent's home and prefix slots: their tokens are fed
side by side in the home's chunk under a 4-D mask that lets each token see its own row's slots only (a tree
over one cache row, as in tree-based speculative decoding), so a fork copies no KV. Dead tails common to all
homes are cropped, and the cache is compacted once it holds more than :data:`COMPACT_SLACK` slots beyond its
fullest home.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Generator, Iterable, Sequence
from dataclasses import dataclass, field
from itertools import pairwise

import torch
from transformers import PreTrainedModel

from ._compat import (
    append_cache_rows,
    attention_mask_4d,
    cache_kwargs,
    cache_position_kwargs,
    cache_rows,
    cache_slots,
    copy_cache_row,
    crop_to,
    gather_cache_slots,
    merge_cache_rows,
    new_cache,
    output_cache,
    takes_4d_mask,
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

    def read_offsets(self) -> range:
        """The offsets within ``tokens`` whose logits the request reads."""
        n = len(self.tokens)
        return range(n) if self.all_logits else range(n - 1, n)


@dataclass
class Rollback:
    """Ask for the sequence's cache row (or its branch row ``branch``) to be cut back to its first ``length``
    tokens."""

    length: int
    branch: int | None = None


@dataclass
class Fork:
    """Ask for ``count`` branch rows, each holding the sequence's row cut back to its first ``length`` tokens
    (parallel refinement decodes several candidates at once over the shared prefix; they share its KV)."""

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
    sequence's own (its tokens and their KV), else the sequence's row is untouched."""

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
"""A pass feeds only the homes that have rows to feed when they are at most this share of the batch: below it,
copying their KV costs less than computing the idle homes (measured on a 2-core CPU with SmolLM2-135M, batches
of 8 to 64 rows of about 120 slots: 2 of 8 fed rows 96 -> 63 ms a pass, 4 of 8 87 -> 93 ms)."""


COMPACT_SLACK = 8
"""The cache is compacted once it holds more than this many slots beyond its fullest home (the most live slots
of one batch row). Each pass adds its width to every home, fed or not, so idle homes gather dead slots, as do
the branches a join drops; compacting early keeps the cache near the fullest home. Bench (SmolLM2-135M, 8
prompts, 48 new tokens, before forks shared their home): ggro-batch peak memory 1.47-1.59x greedy in three runs
under the earlier rule (twice the longest row plus 64), 1.35-1.41x in two runs under this one, no slower."""


def _pass_fed_rows_only(idle: int, fed: int) -> bool:
    return idle > 0 and fed <= FED_ROW_SHARE * (fed + idle)


HOME_SLOTS_PER_HIDDEN = 2
"""Sequences share a cache row while their prompts and new tokens add up to at most this many times the policy's
hidden size (see :func:`shared_homes`)."""


def shared_homes(model: PreTrainedModel, prompt_lengths: Sequence[int], new_tokens: int = 0) -> list[int]:
    """A home for each of a batch's sequences, given their prompts' lengths and the tokens each may add: in order,
    sequences share a cache row while those add up to at most :data:`HOME_SLOTS_PER_HIDDEN` times the policy's
    hidden size (one home each where the attention takes no 4-D mask).

    Why: a pass feeds every home a chunk as wide as its widest one, so homes of one sequence each are padded to
    the home with a fork's branches (up to 7 tokens a pass against 1): over half the positions computed. In a
    shared home the chunk is the rows' tokens side by side, unpadded, but each token's attention reads (and
    masks) every slot of the home, about ``slots / (6 * hidden)`` of a position's linear work: at most a third
    under this budget, while long prompts (RAG contexts) keep a home each. Bench (SmolLM2-135M, hidden 576, 8
    prompts of 37-42 tokens, 48 new tokens, one home): 2783 positions computed instead of 5928, policy passes
    20.9 s instead of 24.1-25.1."""
    if not takes_4d_mask(model):
        return list(range(len(prompt_lengths)))
    budget = HOME_SLOTS_PER_HIDDEN * int(getattr(model.config, "hidden_size", 0) or 0)
    homes: list[int] = []
    home, used = 0, 0
    for n in prompt_lengths:
        if homes and used + n + new_tokens > budget:
            home, used = home + 1, 0
        homes.append(home)
        used += n + new_tokens
    return homes


@dataclass
class _Row:
    home: int
    """The cache batch row this row's KV lives in; a fork's branch rows live in their parent's."""
    slots: list[int] = field(default_factory=list)
    """Cache slot index of each live token, in order."""


class PolicyBatch:
    """Rows of sequences decoded together. A row is a list of slots in one cache batch row, its home; sequences
    given one home (``homes``) share it, and rows forked from one parent share its home and the prefix slots they
    were forked with (a tree over one cache row, as in tree-based speculative decoding): a fork copies no KV, and
    a pass feeds each home one chunk holding every fed row's tokens, with a 4-D attention mask that lets each
    token see its own row's slots only. Attention kernels that take no 4-D mask (flash attention) get a home per
    sequence and per branch instead, a branch's a copy of its parent's."""

    def __init__(
        self, model: PreTrainedModel, num_rows: int, pad_token_id: int = 0, homes: Sequence[int] | None = None
    ) -> None:
        """``homes``: each row's cache row, numbered from 0 in order of first use (:func:`shared_homes`); rows of
        one home must not see each other, which takes a 4-D mask. None: a home per row."""
        self.model = model
        self.device = next(model.parameters()).device
        self.cache = new_cache(model)
        self.tree_forks = takes_4d_mask(model)
        """Whether a fork's rows share their parent's home (else each gets a copy of it)."""
        homes = list(range(num_rows)) if homes is None else list(homes)
        steps = [b - a for a, b in pairwise(homes)]
        if len(homes) != num_rows or homes[:1] not in ([], [0]) or any(d not in (0, 1) for d in steps):
            raise ValueError(
                f"homes: expected {num_rows} home numbers counting up from 0 in steps of 0 or 1, got {homes}"
            )
        if len(set(homes)) < num_rows and not self.tree_forks:
            raise ValueError("homes: rows share a home only where the attention takes a 4-D mask (SDPA or eager)")
        self.rows = [_Row(h) for h in homes]
        self.live = torch.zeros(len(set(homes)), 0, dtype=torch.bool)
        """[homes, slots]: the slots some row of the home holds."""
        self.pad_token_id = pad_token_id
        self.forward_passes = 0

    def length(self, row: int) -> int:
        return len(self.rows[row].slots)

    @property
    def num_slots(self) -> int:
        return self.live.shape[1]

    @property
    def num_homes(self) -> int:
        return self.live.shape[0]

    def _refresh_live(self, home: int) -> None:
        live = torch.zeros(self.num_slots, dtype=torch.bool)
        for row in self.rows:
            if row.home == home and row.slots:
                live[row.slots] = True
        self.live[home] = live

    def rollback(self, row: int, length: int) -> None:
        """Forget everything of ``row`` after its first ``length`` tokens."""
        slots = self.rows[row].slots
        if length >= len(slots):
            return
        del slots[length:]
        self._refresh_live(self.rows[row].home)  # a slot dies once no row of its home holds it
        self._trim()

    def _trim(self) -> None:
        last = max((r.slots[-1] + 1 for r in self.rows if r.slots), default=0)
        if last < self.num_slots:
            crop_to(self.cache, last)
            self.live = self.live[:, :last]
        longest = int(self.live.sum(dim=1).max()) if self.live.numel() else 0
        if self.num_slots > longest + COMPACT_SLACK:
            self._compact(longest)

    def _compact(self, longest: int) -> None:
        """Right-align each home's live slots in a cache of ``longest`` slots (order kept, so every row's slots
        stay in order)."""
        index = torch.zeros(self.num_homes, longest, dtype=torch.long)
        live = torch.zeros(self.num_homes, longest, dtype=torch.bool)
        moved: list[dict[int, int]] = []
        for home in range(self.num_homes):
            kept = self.live[home].nonzero().flatten()
            first = longest - len(kept)
            index[home, first:] = kept
            live[home, first:] = True
            moved.append({int(old): first + j for j, old in enumerate(kept)})
        for row in self.rows:
            row.slots = [moved[row.home][s] for s in row.slots]
        gather_cache_slots(self.cache, index)
        self.live = live

    def fork(self, parent: int, count: int, length: int) -> list[int]:
        """Append ``count`` rows holding row ``parent``'s first ``length`` tokens, in its home (no KV is copied:
        what each feeds afterwards is its own); returns their indices."""
        home, slots = self.rows[parent].home, self.rows[parent].slots[:length]
        first = len(self.rows)
        if self.tree_forks:
            self.rows.extend(_Row(home, list(slots)) for _ in range(count))
        else:
            append_cache_rows(self.cache, torch.full((count,), home, dtype=torch.long))
            live = torch.zeros(count, self.num_slots, dtype=torch.bool)
            live[:, slots] = True
            homes = range(self.num_homes, self.num_homes + count)
            self.live = torch.cat([self.live, live])
            self.rows.extend(_Row(h, list(slots)) for h in homes)
        return list(range(first, first + count))

    def adopt_row(self, target: int, source: int) -> None:
        """Make row ``target`` hold row ``source``'s tokens (a branch kept): in one home its slots, else a copy
        of its home's KV (``target``'s home must hold no other row)."""
        home, source_home = self.rows[target].home, self.rows[source].home
        if home != source_home:
            if any(r.home == home for i, r in enumerate(self.rows) if i != target):
                raise ValueError(f"adopt_row: row {target} shares its cache row; it cannot take a copy of another")
            copy_cache_row(self.cache, home, source_home)
        self.rows[target].slots = list(self.rows[source].slots)
        self._refresh_live(home)

    def _chunks(self, requests: dict[int, FeedRequest]) -> dict[int, list[tuple[int, int]]]:
        """Per home, its fed rows and where each one's tokens start in the home's chunk, in row order."""
        chunks: dict[int, list[tuple[int, int]]] = {}
        for i in sorted(requests):
            home = self.rows[i].home
            placed = chunks.setdefault(home, [])
            offset = placed[-1][1] + len(requests[placed[-1][0]].tokens) if placed else 0
            placed.append((i, offset))
        return chunks

    def _tree_mask(
        self, requests: dict[int, FeedRequest], chunks: dict[int, list[tuple[int, int]]], width: int
    ) -> torch.Tensor:
        """[homes, 1, width, slots + width] bool: each fed token sees its row's slots and its row's tokens fed
        before it in the chunk; a padding position sees itself only."""
        start = self.num_slots
        mask = torch.zeros(self.num_homes, 1, width, start + width, dtype=torch.bool)
        padding = torch.ones(self.num_homes, width, dtype=torch.bool)
        for home, placed in chunks.items():
            for i, offset in placed:
                n = len(requests[i].tokens)
                queries = slice(offset, offset + n)
                if self.rows[i].slots:
                    mask[home, 0, queries, torch.tensor(self.rows[i].slots)] = True
                mask[home, 0, queries, start + offset : start + offset + n] = torch.ones(n, n, dtype=torch.bool).tril()
                padding[home, queries] = False
        pad_home, pad_query = padding.nonzero(as_tuple=True)
        mask[pad_home, 0, pad_query, start + pad_query] = True
        return mask

    def step(self, requests: dict[int, FeedRequest]) -> dict[int, torch.Tensor]:
        """One forward pass over every home's chunk. Returns float32 logits per requesting row:
        [len(tokens), vocab] when ``all_logits`` else [1, vocab] (the last fed position)."""
        if not requests:
            return {}
        chunks = self._chunks(requests)
        width = max(placed[-1][1] + len(requests[placed[-1][0]].tokens) for placed in chunks.values())
        # Homes holding one row need only the plain padding mask (the model adds causality); a fork's rows must
        # not see each other's tokens (built before the chunk's slots join the rows).
        tree = self._shared_homes(chunks.keys())
        tree_mask = self._tree_mask(requests, chunks, width) if tree else None
        n_homes = self.num_homes
        ids = torch.full((n_homes, width), self.pad_token_id, dtype=torch.long)
        positions = torch.zeros(n_homes, width, dtype=torch.long)
        chunk_live = torch.zeros(n_homes, width, dtype=torch.bool)
        start = self.num_slots
        for home in range(n_homes):
            placed = chunks.get(home, [])
            if not placed:  # an idle home (a full pass): its chunk is padding
                base = max((len(r.slots) for r in self.rows if r.home == home), default=0)
                positions[home] = base
            last = 0
            for i, offset in placed:
                row, tokens = self.rows[i], requests[i].tokens
                n = len(tokens)
                ids[home, offset : offset + n] = torch.tensor(tokens)
                positions[home, offset : offset + n] = len(row.slots) + torch.arange(n)
                chunk_live[home, offset : offset + n] = True
                row.slots.extend(range(start + offset, start + offset + n))
                last = offset + n
            if placed:
                positions[home, last:] = positions[home, last - 1]
        # Logits only where someone reads them: never a [length x vocab] tensor over a prefill.
        wanted: set[int] = set()
        for placed in chunks.values():
            for i, offset in placed:
                wanted.update(offset + k for k in requests[i].read_offsets())
        keep = sorted(wanted)
        attention = torch.cat([self.live, chunk_live], dim=1)
        fed_homes = sorted(chunks)
        # Idle homes (a sequence parked while its branches decode, branches that ended) would cost a row of
        # compute each; a pass over the fed homes alone costs copying their KV instead.
        subset = start > 0 and _pass_fed_rows_only(n_homes - len(fed_homes), len(fed_homes))
        cache = self.cache
        mask = attention.to(torch.long) if tree_mask is None else attention_mask_4d(self.model, tree_mask)
        if subset:
            picked = torch.tensor(fed_homes)
            ids, positions, mask = ids[picked], positions[picked], mask[picked]
            cache = cache_rows(self.model, self.cache, picked)
        kwargs = cache_kwargs(self.model, cache)
        kwargs.update(cache_position_kwargs(self.model, start, width, self.device))
        hidden = any(r.hidden for r in requests.values())
        if hidden:
            kwargs["output_hidden_states"] = True
        with torch.no_grad():
            out = self.model(
                input_ids=ids.to(self.device),
                attention_mask=mask.to(self.device),
                position_ids=positions.to(self.device),
                use_cache=True,
                logits_to_keep=torch.tensor(keep, device=self.device),
                **kwargs,
            )
        # The output's batch index of each fed home.
        out_row = {h: j for j, h in enumerate(fed_homes)} if subset else {h: h for h in fed_homes}
        where = {i: (out_row[home], offset) for home, placed in chunks.items() for i, offset in placed}
        if hidden:  # the last entry is the final (normed) hidden state, what the LM head reads
            final = out.hidden_states[-1]
            for i, req in requests.items():
                if req.hidden:
                    b, offset = where[i]
                    req.states = final[b, offset : offset + len(req.tokens)].float()
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
            b, offset = where[i]
            cols = [column[offset + p] for p in req.read_offsets()]
            result[i] = logits[b, cols].float()
        return result

    def _shared_homes(self, fed_homes: Iterable[int]) -> bool:
        """Whether a fed home holds more than one row (a fed row must not see the others' slots)."""
        rows_of = Counter(row.home for row in self.rows)
        return any(rows_of[home] > 1 for home in fed_homes)

    def gradient_pass(self, requests: dict[int, GradientFeed]) -> None:
        """One forward with gradients over the rows' requests (each on a copy of the slots its row's first
        ``length`` tokens hold), then one backward per reward term for all of them; answers each request in
        place."""
        started = time.perf_counter()
        fed_rows = sorted(requests)
        picked = torch.tensor([self.rows[i].home for i in fed_rows])
        width = max(len(requests[i].tokens) for i in fed_rows)
        for i in fed_rows:
            req = requests[i]
            if not 0 < req.length <= len(self.rows[i].slots) or not req.tokens:
                raise ValueError(
                    f"gradient request: length {req.length} and {len(req.tokens)} tokens on a row of {self.length(i)}"
                )
        # Only the slots each request reads are copied: a home's other rows and dead slots are not computed.
        start = max(requests[i].length for i in fed_rows)
        index = torch.zeros(len(fed_rows), start, dtype=torch.long)
        ids = torch.full((len(fed_rows), width), self.pad_token_id, dtype=torch.long)
        positions = torch.zeros(len(fed_rows), width, dtype=torch.long)
        attention = torch.zeros(len(fed_rows), start + width, dtype=torch.bool)
        for j, i in enumerate(fed_rows):
            req = requests[i]
            n = len(req.tokens)
            index[j, : req.length] = torch.tensor(self.rows[i].slots[: req.length])
            attention[j, : req.length] = True
            attention[j, start : start + n] = True
            ids[j, :n] = torch.tensor(req.tokens)
            positions[j] = req.length + torch.arange(width).clamp(max=n - 1)
        decoder = self.model.get_decoder()
        cache = cache_slots(self.model, self.cache, picked, index)
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
        """Keep only ``keep_rows`` (finished sequences leave the batch, a join drops branches); a home goes with
        its last row. Returns the old->new mapping order."""
        keep = list(keep_rows)
        if len(keep) == len(self.rows):
            return keep
        self.rows = [self.rows[i] for i in keep]
        homes = sorted({row.home for row in self.rows})
        if len(homes) < self.num_homes:
            self.cache.batch_select_indices(torch.tensor(homes, device=self.device))
            self.live = self.live[homes]
            renumber = {old: new for new, old in enumerate(homes)}
            for row in self.rows:
                row.home = renumber[row.home]
        for home in range(self.num_homes):  # the dropped rows' own slots die
            self._refresh_live(home)
        self._trim()
        return keep
