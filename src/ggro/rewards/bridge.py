"""Cross-tokenizer gradient bridge: steer a policy with a differentiable reward model of another vocabulary.

The exact gradient path (:class:`~ggro.rewards.hf.HFRewardModel`) indexes the RM's embedding matrix with the
policy's token ids, which only works when both share a tokenizer. :class:`TokenizerBridgeReward` works
through text instead:

* **Rendering.** The policy ids (prompt + response) become ``(prompt_text, response_text)``: the prompt text
  the decoder passes in its :class:`~ggro.rewards.base.RewardContext`, the response decoded with the policy
  tokenizer. A renderer turns them into what the RM reads: by default the RM tokenizer's chat template
  (user turn + an *open* assistant turn, ``continue_final_message=True``, so a partial response is not
  closed with an end-of-turn) when it has one, else ``prompt + "\\n" + response``. A renderer may return a
  ``(first, second)`` pair for cross-encoders such as BERT (:func:`pair_renderer`).
* **Span alignment.** The RM tokenizer (a fast one: offset mappings) tokenises the rendering. The policy
  token at the insertion position covers the characters ``[len(decode(resp[:j])), len(decode(resp[:j+1])))``
  of the response text; the RM tokens whose character spans overlap those characters are its *covering
  span*. The bridge's gradient is the mean of dr/de over the covering span, in the RM's embedding space
  (the decoder treats gradients as opaque). A policy token that no RM token represents (whitespace a BERT
  tokenizer drops, a special token, the first half of a split UTF-8 character) gets a zero gradient: the
  bridge predicts no change there, so no nudge is proposed on its account.
* **Candidate rows.** ``candidate_scores(g, v) = B[v] · g`` with ``B[v]`` the mean RM embedding of the RM's
  tokenisation of v's text; the decoder subtracts the current token's own score, so a candidate scores
  ``(B[v] - B[current]) · g``: the first-order reward change of moving each covering RM embedding by
  ``B[v] - B[current]``, divided by the span length (a per-position scale, irrelevant to the argmax).
  Special tokens and tokens whose text the RM tokenises to nothing get ``B[v] = 0``. Rows are cached per id.
* **Byte-level / space-prefix conventions.** A token's text is read *in context*: ``decode([a, v])`` minus
  ``decode([a])`` for a fixed anchor token ``a`` (the policy's token for ``"a"``). Decoding ``v`` alone
  would lose a SentencePiece ``▁`` word boundary (``"▁the"`` decodes to ``"the"``); after the anchor it reads
  ``" the"``, as does byte-level ``"Ġthe"``, while WordPiece ``"##ing"`` reads ``"ing"``. The text is then
  tokenised by the RM alone (its own conventions: ``" the"`` becomes ``"Ġthe"``, ``"▁the"`` or ``"the"``).
  Continuation pieces such as ``"ing"`` are read as word-initial by the RM: an inherent approximation.

No prefix cache is kept: a re-rendered text can re-tokenise anywhere (and BERT-like RMs are not causal), so
every call renders, tokenises and runs the RM over the whole text. :func:`make_reward` picks the exact path
when the two tokenizers have identical vocabularies and the bridge otherwise.

The module also holds :class:`MeanPooledEncoderReward` (an encoder, mean pooling, a linear head, reading the
RM's own ids). The MiniLM gold probe made a steering reward (an experiment) is
:func:`ggro.lab.gold.minilm_probe_reward`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch

from .base import RewardContext, RewardError, RewardModel, RewardSession, SegmentScore, TokenEmbeddingReward

__all__ = [
    "BridgeAlignment",
    "MeanPooledEncoderReward",
    "Renderer",
    "TokenReward",
    "TokenizerBridgeReward",
    "chat_template_renderer",
    "make_reward",
    "pair_renderer",
    "plain_renderer",
    "same_vocabulary",
]

Renderer = Callable[[str, str], str | tuple[str, str]]
"""``(prompt_text, response_text) -> text`` (or a ``(first, second)`` pair) for the RM tokenizer. The
response text must appear in the output (at its end, or as the pair's second text) for span alignment."""


@runtime_checkable
class TokenReward(Protocol):
    """A differentiable reward over its own token ids (an :class:`HFRewardModel`, a
    :class:`MeanPooledEncoderReward`, ...)."""

    name: str

    def score(self, sequences: Sequence[Sequence[int]]) -> list[float]: ...

    def embedding_gradients(self, ids: Sequence[int], positions: Sequence[int]) -> tuple[float, torch.Tensor]: ...


def plain_renderer(prompt: str, response: str) -> str:
    """``prompt + "\\n" + response`` (just the response when there is no prompt)."""
    return f"{prompt}\n{response}" if prompt else response


def pair_renderer(prompt: str, response: str) -> tuple[str, str]:
    """The pair ``(prompt, response)``: a BERT-style tokenizer encodes it ``[CLS] prompt [SEP] response [SEP]``."""
    return prompt, response


def chat_template_renderer(tokenizer: Any, *, system: str | None = None) -> Renderer:
    """Render with ``tokenizer``'s chat template: (system,) user = prompt, assistant = response, left open."""

    def render(prompt: str, response: str) -> str:
        messages = [{"role": "system", "content": system}] if system is not None else []
        messages += [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
        try:
            text = tokenizer.apply_chat_template(messages, tokenize=False, continue_final_message=True)
        except ValueError:
            # An empty or whitespace-only response cannot be "continued" by transformers' check; a closed
            # turn holds no response characters either, so alignment is unaffected.
            text = tokenizer.apply_chat_template(messages, tokenize=False)
        return str(text)

    return render


def same_vocabulary(a: Any, b: Any) -> bool:
    """True when both tokenizers map the same token strings to the same ids (the exact path applies)."""
    return a is b or dict(a.get_vocab()) == dict(b.get_vocab())


def _input_embedding_weight(rm: Any) -> torch.Tensor:
    """The RM's input embedding matrix, wherever its wrapper keeps the model."""
    for owner in (rm, getattr(rm, "model", None), getattr(rm, "backbone", None), getattr(rm, "encoder", None)):
        getter = getattr(owner, "get_input_embeddings", None)
        if callable(getter):
            module = getter()
            if module is not None and isinstance(getattr(module, "weight", None), torch.Tensor):
                return module.weight
    raise TypeError(
        f"reward {getattr(rm, 'name', type(rm).__name__)!r}: cannot find its input embeddings; pass embedding_weight="
    )


def _common_prefix_length(a: str, b: str) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def _locate(container: str, response: str) -> tuple[int, int, int]:
    """(offset, region start, region end): response character c is container character c + offset, valid
    inside the region (templates may trim the response's outer whitespace)."""
    if container.endswith(response):
        base = len(container) - len(response)
        return base, base, len(container)
    at = container.rfind(response)
    if at >= 0:
        return at, at, at + len(response)
    core = response.strip()
    if not core:
        return len(container), len(container), len(container)
    at = container.rfind(core)
    if at < 0:
        raise RewardError("bridge renderer: the rendered text does not contain the response text")
    lead = len(response) - len(response.lstrip())
    return at - lead, at, at + len(core)


@dataclass(frozen=True)
class BridgeAlignment:
    """How one policy sequence reads in the RM's tokens."""

    rm_ids: list[int]
    """The RM token ids of the rendered text (after truncation to ``max_length``)."""
    covering: list[list[int]]
    """Per requested policy position: the indices into ``rm_ids`` of the RM tokens covering its characters."""
    char_spans: list[tuple[int, int]]
    """Per requested policy position: its character span in the response text."""
    rendered: str | tuple[str, str]
    """What the RM tokenizer read."""


class TokenizerBridgeReward(RewardModel):
    """A differentiable reward over another vocabulary, made to read the policy's token ids (module docstring).

    Args:
        rm: the reward over its own ids: ``score(rm_id_batches)`` and ``embedding_gradients(rm_ids, positions)``.
        rm_tokenizer: the RM's (fast) tokenizer.
        policy_tokenizer: decodes policy ids when a session has no :class:`RewardContext` (and for
            :meth:`score` / :meth:`embedding_gradients`, which read whole sequences as responses to an empty
            prompt); token texts for candidate rows always come from it.
        renderer: see :data:`Renderer`; default: the RM's chat template if it has one, else
            :func:`plain_renderer`.
        add_special_tokens: passed to the RM tokenizer; default False with the chat template (it writes its
            own), True otherwise.
        max_length: RM tokens kept at most (the earliest non-special tokens are dropped first, i.e. the
            prompt); default the RM tokenizer's ``model_max_length`` when it is a real limit.
        embedding_weight: the RM's input embedding matrix, when it cannot be found on ``rm``.
    """

    differentiable = True

    def __init__(
        self,
        rm: TokenReward,
        rm_tokenizer: Any,
        policy_tokenizer: Any = None,
        *,
        renderer: Renderer | None = None,
        add_special_tokens: bool | None = None,
        max_length: int | None = None,
        embedding_weight: torch.Tensor | None = None,
        name: str | None = None,
    ) -> None:
        if not getattr(rm_tokenizer, "is_fast", False):
            raise ValueError("TokenizerBridgeReward: the RM tokenizer must be a fast tokenizer (offset mappings)")
        self.rm = rm
        self.rm_tokenizer = rm_tokenizer
        self.policy_tokenizer = policy_tokenizer
        uses_template = renderer is None and bool(getattr(rm_tokenizer, "chat_template", None))
        if renderer is None:
            renderer = chat_template_renderer(rm_tokenizer) if uses_template else plain_renderer
        self.renderer: Renderer = renderer
        self.add_special_tokens = (not uses_template) if add_special_tokens is None else add_special_tokens
        if max_length is None:
            limit = getattr(rm_tokenizer, "model_max_length", None)
            max_length = int(limit) if isinstance(limit, int) and 0 < limit <= 1_000_000 else None
        self.max_length = max_length
        self.embedding_weight = embedding_weight if embedding_weight is not None else _input_embedding_weight(rm)
        self.name = name or f"bridge({getattr(rm, 'name', type(rm).__name__)})"
        self._rows: dict[int, torch.Tensor] = {}
        self._anchor: int | None = None
        self._anchor_text = ""
        if policy_tokenizer is not None:
            self._set_anchor(policy_tokenizer)

    # ------------------------------------------------------------------ RewardModel interface
    def check_vocabulary(self, policy_vocab_size: int) -> None:
        """Never rejects: reading another vocabulary is what the bridge is for."""

    def open_session(self, context: RewardContext | None = None) -> RewardSession:
        if self.policy_tokenizer is None and context is not None:
            # Built without one: adopt the decoder's tokenizer for candidate rows (cached per its ids).
            self.policy_tokenizer = context.tokenizer
            self._set_anchor(context.tokenizer)
        return _BridgeSession(self, self._context(context))

    def score(self, sequences: Sequence[Sequence[int]]) -> list[float]:
        """Rewards of whole policy sequences, each read as a response to an empty prompt."""
        return self._score_many(self._context(None), sequences)[0]

    def embedding_gradients(self, ids: Sequence[int], positions: Sequence[int]) -> tuple[float, torch.Tensor]:
        """Reward of ``ids`` (a response to an empty prompt) and the bridge gradient at each position."""
        reward, grads, _ = self._gradients(self._context(None), ids, positions)
        return reward, grads

    def candidate_scores(self, gradient: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
        rows = self.candidate_rows(token_ids.reshape(-1).tolist())
        return rows @ gradient.to(rows.device).float()

    # ------------------------------------------------------------------ the bridge
    @property
    def hidden_size(self) -> int:
        return int(self.embedding_weight.shape[1])

    def token_text(self, token_id: int) -> str:
        """The text policy token ``token_id`` adds after a word (see the module docstring)."""
        tok = self._policy_tokenizer()
        if self._anchor is not None:
            both = self._decode(tok, [self._anchor, token_id])
            if both.startswith(self._anchor_text):
                return both[len(self._anchor_text) :]
        return self._decode(tok, [token_id])

    def candidate_rows(self, token_ids: Sequence[int]) -> torch.Tensor:
        """``B[v]`` for each id: float32 [len(token_ids), hidden] on the RM's device (cached per id)."""
        weight = self.embedding_weight
        out = []
        for v in token_ids:
            row = self._rows.get(int(v))
            if row is None:
                text = self.token_text(int(v))
                rm_ids = self.rm_tokenizer(text, add_special_tokens=False)["input_ids"] if text else []
                with torch.no_grad():
                    if rm_ids:
                        row = weight[torch.tensor(rm_ids, device=weight.device)].float().mean(0)
                    else:
                        row = torch.zeros(weight.shape[1], dtype=torch.float32, device=weight.device)
                self._rows[int(v)] = row
            out.append(row)
        if not out:
            return torch.zeros(0, weight.shape[1], dtype=torch.float32, device=weight.device)
        return torch.stack(out)

    def render(self, prompt_text: str, response_text: str) -> str | tuple[str, str]:
        return self.renderer(prompt_text, response_text)

    def align(
        self, context: RewardContext | None, ids: Sequence[int], positions: Sequence[int] = ()
    ) -> BridgeAlignment:
        """Render ``ids`` (prompt + response, policy ids), tokenise for the RM, and find the RM tokens
        covering each policy token in ``positions`` (indices into ``ids``, inside the response)."""
        ctx = self._context(context)
        ids = [int(x) for x in ids]
        n = len(ctx.prompt_ids)
        start = n if n and ids[:n] == list(ctx.prompt_ids) else 0
        response = ids[start:]
        tok = ctx.tokenizer
        text = self._decode(tok, response)
        spans: list[tuple[int, int]] = []
        for p in positions:
            j = int(p) - start
            if not 0 <= j < len(response):
                raise ValueError(f"bridge: position {p} is not in the response (it starts at {start} of {len(ids)})")
            # Prefix decodes may end in a half UTF-8 character ("\ufffd"): the common prefix with the full
            # text gives that character to the token that completes it.
            lo = _common_prefix_length(self._decode(tok, response[:j]), text)
            hi = _common_prefix_length(self._decode(tok, response[: j + 1]), text)
            spans.append((lo, max(lo, hi)))
        rendered = self.render(ctx.prompt_text, text)
        pair = isinstance(rendered, tuple)
        container = rendered[1] if isinstance(rendered, tuple) else rendered
        offset, region_lo, region_hi = _locate(container, text)
        if isinstance(rendered, tuple):
            enc = self.rm_tokenizer(
                rendered[0],
                rendered[1],
                add_special_tokens=self.add_special_tokens,
                return_offsets_mapping=True,
                return_special_tokens_mask=True,
            )
        else:
            enc = self.rm_tokenizer(
                rendered,
                add_special_tokens=self.add_special_tokens,
                return_offsets_mapping=True,
                return_special_tokens_mask=True,
            )
        rm_ids = list(enc["input_ids"])
        offsets = [tuple(o) for o in enc["offset_mapping"]]
        special = list(enc["special_tokens_mask"])
        sequence = enc.sequence_ids()
        keep = self._kept(special)
        rm_ids = [rm_ids[i] for i in keep]
        offsets = [offsets[i] for i in keep]
        special = [special[i] for i in keep]
        sequence = [sequence[i] for i in keep]
        target = 1 if pair else 0
        covering: list[list[int]] = []
        for lo, hi in spans:
            a, b = max(lo + offset, region_lo), min(hi + offset, region_hi)
            covering.append(
                [
                    i
                    for i, ((s, e), sp, seq) in enumerate(zip(offsets, special, sequence, strict=True))
                    if seq == target and not sp and s < e and s < b and a < e
                ]
                if a < b
                else []
            )
        return BridgeAlignment(rm_ids=rm_ids, covering=covering, char_spans=spans, rendered=rendered)

    # ------------------------------------------------------------------ internals
    def _kept(self, special: Sequence[int]) -> list[int]:
        """Indices kept under ``max_length``: the earliest non-special tokens go first (the prompt side)."""
        n = len(special)
        if self.max_length is None or n <= self.max_length:
            return list(range(n))
        excess = n - self.max_length
        removable = [i for i, s in enumerate(special) if not s]
        if excess > len(removable):
            raise RewardError(f"bridge: {n} RM tokens cannot be cut to max_length={self.max_length}")
        dropped = set(removable[:excess])
        return [i for i in range(n) if i not in dropped]

    def _context(self, context: RewardContext | None) -> RewardContext:
        if context is not None:
            return context
        return RewardContext(prompt_ids=(), prompt_text="", tokenizer=self._policy_tokenizer())

    def _policy_tokenizer(self) -> Any:
        if self.policy_tokenizer is None:
            raise RewardError(f"reward {self.name!r}: the bridge needs the policy tokenizer (policy_tokenizer=)")
        return self.policy_tokenizer

    def _set_anchor(self, tokenizer: Any) -> None:
        ids = tokenizer("a", add_special_tokens=False)["input_ids"]
        if ids:
            self._anchor = int(ids[-1])
            self._anchor_text = self._decode(tokenizer, [self._anchor])

    @staticmethod
    def _decode(tokenizer: Any, ids: Sequence[int]) -> str:
        # No clean-up: it rewrites spaces around punctuation, so prefix decodes would stop lining up.
        return str(tokenizer.decode(list(ids), skip_special_tokens=True, clean_up_tokenization_spaces=False))

    def _checked_rm_ids(self, rm_ids: list[int]) -> list[int]:
        if not rm_ids:
            raise RewardError(f"reward {self.name!r}: the rendered text has no RM tokens to score")
        return rm_ids

    def _score_many(self, context: RewardContext, sequences: Sequence[Sequence[int]]) -> tuple[list[float], int]:
        """Rewards of whole policy sequences and the number of RM tokens read. Sequences of equal RM length
        go in one batch: no padding, which some RMs pool wrongly (e.g. [CLS] pooling with left padding)."""
        rm_rows = [self._checked_rm_ids(self.align(context, s).rm_ids) for s in sequences]
        groups: dict[int, list[int]] = {}
        for i, row in enumerate(rm_rows):
            groups.setdefault(len(row), []).append(i)
        out = [float("nan")] * len(rm_rows)
        for members in groups.values():
            values = list(self.rm.score([rm_rows[i] for i in members]))
            if len(values) != len(members):
                raise RewardError(f"reward {self.name!r}: expected {len(members)} scores, got {len(values)}")
            for i, v in zip(members, values, strict=True):
                out[i] = float(v)
        return out, sum(len(r) for r in rm_rows)

    def _gradients(
        self, context: RewardContext, ids: Sequence[int], positions: Sequence[int]
    ) -> tuple[float, torch.Tensor, int]:
        """(reward, bridge gradients [len(positions), hidden], RM tokens read)."""
        al = self.align(context, ids, positions)
        rm_ids = self._checked_rm_ids(al.rm_ids)
        union = sorted({i for span in al.covering for i in span})
        out = torch.zeros(len(al.covering), self.hidden_size, dtype=torch.float32, device=self.embedding_weight.device)
        if not union:
            (value,) = self.rm.score([rm_ids])
            return float(value), out, len(rm_ids)
        reward, grads = self.rm.embedding_gradients(rm_ids, union)
        if tuple(grads.shape) != (len(union), self.hidden_size):
            raise RewardError(
                f"reward {self.name!r}: expected gradients of shape {(len(union), self.hidden_size)}, "
                f"got {tuple(grads.shape)}"
            )
        row_of = {i: k for k, i in enumerate(union)}
        grads = grads.float().to(out.device)
        for k, span in enumerate(al.covering):
            if span:
                out[k] = grads[[row_of[i] for i in span]].mean(0)
        return float(reward), out, len(rm_ids)


class _BridgeSession(RewardSession):
    """Recomputes everything on each call (no prefix cache: see the module docstring)."""

    def __init__(self, bridge: TokenizerBridgeReward, context: RewardContext) -> None:
        self.bridge = bridge
        self.context = context
        self.calls = 0
        self.tokens_processed = 0

    def score_segment(
        self, prefix_ids: Sequence[int], segment_ids: Sequence[int], grad_position: int | None
    ) -> SegmentScore:
        if not segment_ids:
            raise ValueError("score_segment: empty segment")
        ids = [*prefix_ids, *segment_ids]
        self.calls += 1
        if grad_position is None:
            (reward,), read = self.bridge._score_many(self.context, [ids])
            self.tokens_processed += read
            return SegmentScore(reward=reward, gradient=None)
        if not 0 <= grad_position < len(segment_ids):
            raise ValueError(f"score_segment: grad_position {grad_position} outside the segment")
        reward, grads, read = self.bridge._gradients(self.context, ids, [len(prefix_ids) + grad_position])
        self.tokens_processed += read
        return SegmentScore(reward=reward, gradient=grads[0])

    def score_sequence(self, ids: Sequence[int]) -> float:
        return self.score_many([ids])[0]

    def score_many(self, sequences: Sequence[Sequence[int]]) -> list[float]:
        if not sequences:
            return []
        self.calls += 1
        rewards, read = self.bridge._score_many(self.context, sequences)
        self.tokens_processed += read
        return rewards


def make_reward(rm: RewardModel, rm_tokenizer: Any, policy_tokenizer: Any, **bridge_options: Any) -> RewardModel:
    """``rm`` itself (the exact path) when both tokenizers have identical vocabularies, else a
    :class:`TokenizerBridgeReward` around it (``bridge_options`` go to its constructor). The exact path reads
    the policy's ids directly, so the bridge's rendering options do not apply to it."""
    if same_vocabulary(rm_tokenizer, policy_tokenizer):
        return rm
    return TokenizerBridgeReward(rm, rm_tokenizer, policy_tokenizer, **bridge_options)


class MeanPooledEncoderReward(TokenEmbeddingReward):
    """``reward = weight · pool(encoder(ids)) + bias`` over the encoder's own token ids.

    ``pool`` is the mean of the final hidden states over all tokens (special ones included, as
    sentence-transformers pools), L2-normalised when ``normalize``. With ``pair_sep_token_id`` the token type
    ids of a pair encoding are rebuilt from the ids (type 1 after the first separator), so a BERT pair
    ``[CLS] a [SEP] b [SEP]`` reads as its tokenizer would encode it. Works for non-causal encoders: every
    call runs the whole sequence (no prefix cache). Wrap it in :class:`TokenizerBridgeReward` to steer a
    policy of another vocabulary.
    """

    _vocabulary_hint = "wrap it in TokenizerBridgeReward (see make_reward)"

    differentiable = True

    def __init__(
        self,
        encoder: Any,
        weight: torch.Tensor,
        bias: float | torch.Tensor,
        *,
        normalize: bool = True,
        pair_sep_token_id: int | None = None,
        pad_token_id: int = 0,
        name: str = "mean-pooled-encoder",
    ) -> None:
        self.encoder = encoder.eval()
        for p in self.encoder.parameters():
            p.requires_grad_(False)
        self._embedding = encoder.get_input_embeddings()
        hidden = int(self._embedding.weight.shape[1])
        # A private copy: a head computed under inference_mode could not enter the gradient graph.
        weight = torch.as_tensor(weight, dtype=torch.float32).detach().clone().reshape(-1)
        if weight.shape[0] != hidden:
            raise ValueError(f"reward head: weight has {weight.shape[0]} values but the hidden size is {hidden}")
        self.weight = weight.to(self.device)
        self.bias = float(torch.as_tensor(bias, dtype=torch.float32).reshape(-1)[0])
        self.normalize = normalize
        types = int(getattr(getattr(encoder, "config", None), "type_vocab_size", 0) or 0)
        self.pair_sep_token_id = pair_sep_token_id if types > 1 else None
        self.pad_token_id = pad_token_id
        self.name = name

    def get_input_embeddings(self) -> Any:
        return self._embedding

    def token_type_ids(self, ids: Sequence[int]) -> list[int] | None:
        """Pair token types rebuilt from the ids (None: the encoder has no token types to set)."""
        if self.pair_sep_token_id is None:
            return None
        ids = list(ids)
        if self.pair_sep_token_id not in ids:
            return [0] * len(ids)
        first = ids.index(self.pair_sep_token_id)
        return [0] * (first + 1) + [1] * (len(ids) - first - 1)

    def reward_from_embeddings(
        self, embeds: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None
    ) -> torch.Tensor:
        """[batch] rewards from input embeddings [batch, n, hidden] (differentiable)."""
        kwargs: dict[str, Any] = {"inputs_embeds": embeds, "attention_mask": attention_mask}
        if token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        try:
            hidden = self.encoder(**kwargs).last_hidden_state.float()
        except Exception as exc:  # the encoder is user code: name the reward, keep the cause
            raise RewardError(f"reward model {self.name!r} failed: {exc}") from exc
        mask = attention_mask.unsqueeze(-1).float()
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        if self.normalize:
            pooled = torch.nn.functional.normalize(pooled, dim=-1)
        return pooled @ self.weight + self.bias

    def _types(self, rows: Sequence[Sequence[int]], width: int) -> torch.Tensor | None:
        if self.pair_sep_token_id is None:
            return None
        types = []
        for r in rows:
            t = self.token_type_ids(r) or []
            types.append(t + [0] * (width - len(t)))
        return torch.tensor(types, device=self.device)

    def score(self, sequences: Sequence[Sequence[int]]) -> list[float]:
        """Batched rewards (right padding: an encoder's absolute positions start at the first token)."""
        rows = [list(s) for s in sequences]
        if not rows or any(not r for r in rows):
            raise ValueError("score: every sequence needs at least one token")
        width = max(len(r) for r in rows)
        ids = torch.tensor([r + [self.pad_token_id] * (width - len(r)) for r in rows], device=self.device)
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], device=self.device)
        with torch.no_grad():
            rewards = self.reward_from_embeddings(self._embedding(ids), mask, self._types(rows, width))
        return [float(x) for x in rewards.cpu()]

    def embedding_gradients(self, ids: Sequence[int], positions: Sequence[int]) -> tuple[float, torch.Tensor]:
        ids = list(ids)
        with torch.no_grad():
            embeds = self._embedding(torch.tensor([ids], device=self.device))
        embeds.requires_grad_(True)
        mask = torch.ones(1, len(ids), dtype=torch.long, device=self.device)
        with torch.enable_grad():
            reward = self.reward_from_embeddings(embeds, mask, self._types([ids], len(ids)))[0]
            (grad,) = torch.autograd.grad(reward, embeds)
        return float(reward.detach()), grad[0, list(positions)].float()

    def open_session(self, context: RewardContext | None = None) -> RewardSession:
        return _EncoderSession(self)


class _EncoderSession(RewardSession):
    """The exact path for an encoder sharing the policy's vocabulary: whole-sequence passes, no cache."""

    def __init__(self, rm: MeanPooledEncoderReward) -> None:
        self.rm = rm
        self.calls = 0
        self.tokens_processed = 0

    def score_segment(
        self, prefix_ids: Sequence[int], segment_ids: Sequence[int], grad_position: int | None
    ) -> SegmentScore:
        ids = [*prefix_ids, *segment_ids]
        self.calls += 1
        self.tokens_processed += len(ids)
        if grad_position is None:
            return SegmentScore(reward=self.rm.score([ids])[0], gradient=None)
        reward, grads = self.rm.embedding_gradients(ids, [len(prefix_ids) + grad_position])
        return SegmentScore(reward=reward, gradient=grads[0])

    def score_sequence(self, ids: Sequence[int]) -> float:
        self.calls += 1
        self.tokens_processed += len(ids)
        return self.rm.score([ids])[0]
