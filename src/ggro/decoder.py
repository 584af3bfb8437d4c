"""`GGRODecoder`: the segment loop (draft -> score -> propose -> refine -> select) over any HF causal LM.

Each sequence runs the algorithm as a coroutine that asks for policy forward passes (``FeedRequest``) and
roll-backs; a scheduler batches the forward passes of all sequences of a call into one. The policy's KV
cache of prompt + accepted text is reused by every refinement (roll back to the insertion position,
never re-prefill); the reward model keeps its own prefix cache per sequence (see ``rewards.hf``).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ._aio import AsyncDecoding, Decoding
from ._batch import FeedRequest, PolicyBatch
from .config import GGROConfig
from .events import GGROEvent, GGROResult, Listener, NudgeEvent, SegmentEvent, Timing, Usage
from .nudging import NudgeProposal, choose_nudge, propose_nudge
from .rewards.base import RewardContext, RewardError, RewardModel, RewardSession
from .rewards.guard import RewardGuard
from .segments import common_prefix_length, token_entropy

__all__ = ["GGRODecoder", "PromptInput"]

PromptInput = str | Sequence[dict[str, Any]]
EndReason = Literal["entropy", "eos", "length", "stop_sequence"]
_MAX_SPECULATION = 16
# A position-aligned guess (no n-gram anchor) is right less often; a short one wastes less when wrong.
_MAX_ALIGNED_SPECULATION = 4


@dataclass
class _Rollback:
    length: int


@dataclass
class _Candidate:
    tokens: list[int]
    end: EndReason
    tail_logits: torch.Tensor | None  # logits after the last token, when entropy ended the candidate
    end_entropy: float | None
    nudge_token: int | None
    reward: float | None = None
    reward_terms: dict[str, float] | None = None
    proposal: NudgeProposal | None = None


@dataclass
class _Stats:
    forward_passes: int = 0
    tokens_processed: int = 0


@dataclass
class _SegmentPlan:
    """Everything fixed for one segment: where it starts, where a nudge goes, what the policy said there."""

    start: int  # absolute length of the context
    offset: int
    start_logits: torch.Tensor
    insertion_logits: torch.Tensor | None = None
    candidates: list[_Candidate] = field(default_factory=list)
    cached: list[int] = field(default_factory=list)
    """Tokens after ``start`` that the policy cache holds (those of the last generated candidate)."""


_Coroutine = Generator[FeedRequest | _Rollback, torch.Tensor | None, GGROResult]


class GGRODecoder:
    """Gradient-guided reward optimisation around a frozen policy and a frozen reward model.

    The decoder holds no per-call state: concurrent calls are independent (each builds its own caches).
    """

    def __init__(
        self,
        policy: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        reward: RewardModel,
        config: GGROConfig | None = None,
    ) -> None:
        self.policy = policy.eval()
        for p in self.policy.parameters():
            p.requires_grad_(False)
        self.tokenizer = tokenizer
        self.reward = reward
        self.config = config or GGROConfig()
        vocab = (
            policy.get_output_embeddings().weight.shape[0]
            if policy.get_output_embeddings() is not None
            else len(tokenizer)
        )
        reward.check_vocabulary(min(vocab, len(tokenizer)))
        eos: set[int] = set()
        for source in (getattr(policy.generation_config, "eos_token_id", None), tokenizer.eos_token_id):
            if isinstance(source, int):
                eos.add(source)
            elif isinstance(source, list | tuple):
                eos.update(int(x) for x in source)
        self.eos_token_ids = frozenset(eos)
        self.context_window = (
            int(
                getattr(policy.config, "max_position_embeddings", None) or getattr(policy.config, "n_positions", 0) or 0
            )
            or None
        )

    # ------------------------------------------------------------------ construction helpers
    @classmethod
    def from_pretrained(
        cls,
        policy: str | None = None,
        reward: str | RewardModel | None = None,
        config: GGROConfig | None = None,
        *,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
    ) -> GGRODecoder:
        """Build from a policy id/path (None: the embedded SmolLM2-135M-Instruct) and a reward id/path,
        a :class:`RewardModel`, or None (the embedded default reward)."""
        from .loading import load_policy, load_reward

        model, tokenizer = load_policy(policy, dtype=dtype, device=device)
        if isinstance(reward, RewardModel):
            rm = reward
        else:  # the embedded reward shares the embedded policy's transformer instead of loading a copy
            shared = model if policy is None else None
            rm = load_reward(reward, backbone_of=shared, dtype=dtype, device=device)
        return cls(model, tokenizer, rm, config)

    # ------------------------------------------------------------------ prompts
    def encode_prompt(self, prompt: PromptInput, *, chat_template: bool | None = None) -> list[int]:
        """Token ids of a prompt: a string (wrapped as one user message when the tokenizer has a chat
        template) or a list of chat messages."""
        use_template = bool(getattr(self.tokenizer, "chat_template", None)) if chat_template is None else chat_template
        if isinstance(prompt, str):
            if not prompt.strip():
                raise ValueError("prompt: must be a non-empty string")
            _check_unicode(prompt, "prompt")
            if not use_template:
                ids = list(self.tokenizer(prompt, add_special_tokens=True)["input_ids"])
                return self._check_length(ids)
            messages: list[dict[str, Any]] = [{"role": "user", "content": prompt}]
        else:
            for i, m in enumerate(prompt):
                if not isinstance(m, Mapping):
                    raise TypeError(
                        f"prompt: message {i} must be a dict with 'role' and 'content', got {type(m).__name__}"
                    )
            messages = [dict(m) for m in prompt]
            if not messages:
                raise ValueError("prompt: the message list is empty")
            for i, m in enumerate(messages):
                if not isinstance(m.get("content"), str) or not isinstance(m.get("role"), str):
                    raise TypeError(f"prompt: message {i} needs string 'role' and 'content' fields, got {m!r}")
                _check_unicode(m["role"], f"prompt: message {i} role")
                _check_unicode(m["content"], f"prompt: message {i} content")
            if not any(m["content"].strip() for m in messages):
                raise ValueError("prompt: every message is empty")
            if not getattr(self.tokenizer, "chat_template", None):
                raise ValueError("prompt: chat messages need a tokenizer with a chat template")
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids = list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        return self._check_length(ids)

    def entropy_profile(
        self, prompt_token_ids: Sequence[int], token_ids: Sequence[int], probability_floor: float | None = None
    ) -> list[float]:
        """The policy's next-token entropy (nats) along a response (``GGROResult.prompt_token_ids`` and
        ``.token_ids``), from one forward pass: value ``i`` is the entropy of the distribution response token
        ``i`` was chosen from, and one more value follows the last token (where the end-of-turn token, which
        ``token_ids`` leaves out, was chosen). Where a segment ended, the value is the one that ended it; at a
        nudge's insertion position, the entropy the nudge was proposed at."""
        floor = self.config.entropy_probability_floor if probability_floor is None else probability_floor
        ids = torch.tensor([[*prompt_token_ids, *token_ids]], device=self.policy.device)
        with torch.no_grad():
            logits = self.policy(input_ids=ids).logits[0]
        start = len(prompt_token_ids) - 1  # logits at position i predict token i + 1
        return [token_entropy(logits[start + i], floor) for i in range(len(token_ids) + 1)]

    def _check_length(self, ids: list[int]) -> list[int]:
        if not ids:
            raise ValueError("prompt: tokenises to no tokens")
        if self.context_window is not None and len(ids) >= self.context_window:
            raise ValueError(
                f"prompt: {len(ids)} tokens do not fit the model's context window of {self.context_window} "
                "tokens (at least one token must remain for the response)"
            )
        return ids

    # ------------------------------------------------------------------ public decoding API
    def generate(
        self,
        prompts: PromptInput | Sequence[PromptInput],
        *,
        config: GGROConfig | None = None,
        listener: Listener | None = None,
        chat_template: bool | None = None,
        **overrides: Any,
    ) -> list[GGROResult]:
        """Decode one prompt or a batch (decoded together). Returns one result per prompt."""
        return _drain(self.stream(prompts, config=config, listener=listener, chat_template=chat_template, **overrides))

    def stream(
        self,
        prompts: PromptInput | Sequence[PromptInput],
        *,
        config: GGROConfig | None = None,
        listener: Listener | None = None,
        chat_template: bool | None = None,
        **overrides: Any,
    ) -> Generator[GGROEvent, None, list[GGROResult]]:
        """Yield segment and nudge events as segments are accepted; returns the results at the end."""
        cfg = self._resolve_config(config, overrides)
        batch = self._as_batch(prompts)
        ids = [self.encode_prompt(p, chat_template=chat_template) for p in batch]
        return self.stream_ids(ids, config=cfg, listener=listener, prompt_texts=[_prompt_text(p) for p in batch])

    def astream(
        self,
        prompts: PromptInput | Sequence[PromptInput],
        *,
        config: GGROConfig | None = None,
        listener: Listener | None = None,
        chat_template: bool | None = None,
        **overrides: Any,
    ) -> AsyncDecoding:
        """Async :meth:`stream`: ``async for event in decoder.astream(...)``; the decoding runs in a worker
        thread so the event loop stays free, and ``.results`` holds the results at the end. Bad input
        raises here, before any work starts."""
        return AsyncDecoding(
            self.stream(prompts, config=config, listener=listener, chat_template=chat_template, **overrides)
        )

    async def agenerate(
        self,
        prompts: PromptInput | Sequence[PromptInput],
        *,
        config: GGROConfig | None = None,
        listener: Listener | None = None,
        chat_template: bool | None = None,
        **overrides: Any,
    ) -> list[GGROResult]:
        """Async :meth:`generate` (the decoding runs in a worker thread)."""
        run = self.astream(prompts, config=config, listener=listener, chat_template=chat_template, **overrides)
        async for _ in run:
            pass
        assert run.results is not None
        return run.results

    def generate_ids(
        self, prompt_ids: Sequence[Sequence[int]], *, config: GGROConfig | None = None, listener: Listener | None = None
    ) -> list[GGROResult]:
        return _drain(self.stream_ids(prompt_ids, config=config, listener=listener))

    def stream_ids(
        self,
        prompt_ids: Sequence[Sequence[int]],
        *,
        config: GGROConfig | None = None,
        listener: Listener | None = None,
        prompt_texts: Sequence[str] | None = None,
    ) -> Generator[GGROEvent, None, list[GGROResult]]:
        """Decode token-id prompts. ``prompt_texts`` (the user's prompts as text) reach text-level rewards;
        by default they are the decoded prompts."""
        cfg = config or self.config
        if listener is not None and not callable(listener):
            raise TypeError(f"listener: must be callable (it receives each event), got {type(listener).__name__}")
        prompts = [self._check_length(list(p)) for p in prompt_ids]
        if not prompts:
            raise ValueError("prompts: the batch is empty")
        if prompt_texts is None:
            prompt_texts = [str(self.tokenizer.decode(p, skip_special_tokens=True)) for p in prompts]
        elif len(prompt_texts) != len(prompts):
            raise ValueError(f"prompt_texts: expected {len(prompts)} texts, got {len(prompt_texts)}")
        contexts = [RewardContext(tuple(p), t, self.tokenizer) for p, t in zip(prompts, prompt_texts, strict=True)]
        return self._schedule(prompts, contexts, cfg, listener)

    def _resolve_config(self, config: GGROConfig | None, overrides: dict[str, Any]) -> GGROConfig:
        if config is not None and not isinstance(config, GGROConfig):
            if not isinstance(config, Mapping):
                raise TypeError(f"config: expected a GGROConfig or a dict of options, got {type(config).__name__}")
            config = GGROConfig.model_validate(dict(config))
        base = config or self.config
        if not overrides:
            return base
        unknown = sorted(set(overrides) - set(GGROConfig.model_fields))
        if unknown:
            raise TypeError(f"unknown GGRO option(s) {unknown}; allowed: {sorted(GGROConfig.model_fields)}")
        return GGROConfig.model_validate({**base.model_dump(), **overrides})

    @staticmethod
    def _as_batch(prompts: PromptInput | Sequence[PromptInput]) -> list[PromptInput]:
        if isinstance(prompts, str):
            return [prompts]
        if isinstance(prompts, bytes | Mapping) or not isinstance(prompts, Iterable):
            raise TypeError(
                f"prompts: expected a string, a list of chat messages or a list of those, got {type(prompts).__name__}"
            )
        items: list[Any] = list(prompts)
        if items and all(isinstance(m, dict) for m in items):
            return [items]  # one chat conversation
        for i, p in enumerate(items):
            if not isinstance(p, str | list | tuple):
                raise TypeError(f"prompts[{i}]: expected a string or a list of chat messages, got {type(p).__name__}")
        return items

    # ------------------------------------------------------------------ scheduler
    def _schedule(
        self, prompts: list[list[int]], contexts: list[RewardContext], cfg: GGROConfig, listener: Listener | None
    ) -> Generator[GGROEvent, None, list[GGROResult]]:
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        batch = PolicyBatch(self.policy, len(prompts), pad_token_id=pad)
        emitted: deque[GGROEvent] = deque()

        def emit(event: GGROEvent) -> None:
            if listener is not None:
                listener(event)
            emitted.append(event)

        started = time.perf_counter()
        stats = [_Stats() for _ in prompts]
        coroutines = [self._sequence(i, p, contexts[i], cfg, emit, stats[i], started) for i, p in enumerate(prompts)]
        row_of = list(range(len(prompts)))
        pending: dict[int, FeedRequest] = {}
        results: list[GGROResult | None] = [None] * len(prompts)

        def advance(i: int, value: torch.Tensor | None) -> None:
            try:
                request = coroutines[i].send(value)
                while isinstance(request, _Rollback):
                    batch.rollback(row_of[i], request.length)
                    request = coroutines[i].send(None)
                pending[i] = request
            except StopIteration as stop:
                results[i] = stop.value

        try:
            with torch.inference_mode(False):
                for i in range(len(prompts)):
                    advance(i, None)
                while emitted:
                    yield emitted.popleft()
                while pending:
                    active = sorted(pending)
                    if len(active) < len(batch.rows):
                        live_rows = [row_of[i] for i in active]
                        batch.drop_rows(live_rows)
                        for new_row, i in enumerate(active):
                            row_of[i] = new_row
                    requests = {row_of[i]: pending[i] for i in active}
                    logits = batch.step(requests)
                    pending.clear()
                    for i in active:
                        stats[i].forward_passes += 1
                        stats[i].tokens_processed += len(requests[row_of[i]].tokens)
                        advance(i, logits[row_of[i]])
                    while emitted:
                        yield emitted.popleft()
        finally:
            for c in coroutines:
                c.close()
        return [r for r in results if r is not None]

    # ------------------------------------------------------------------ one sequence
    def _sequence(
        self,
        index: int,
        prompt_ids: list[int],
        context: RewardContext,
        cfg: GGROConfig,
        emit: Callable[[GGROEvent], None],
        stats: _Stats,
        started: float,
    ) -> _Coroutine:
        guard = RewardGuard(self.reward.name, cfg.reward_timeout, fallback=cfg.reward_failure == "fallback")
        session = self.reward.open_session(context)
        generator = torch.Generator().manual_seed(cfg.seed) if cfg.seed is not None else None
        response_start = len(prompt_ids)
        budget_end = response_start + cfg.max_new_tokens
        if self.context_window is not None:
            budget_end = min(budget_end, self.context_window)
        ids = list(prompt_ids)
        if cfg.retokenize_between_segments:
            ids = self._retokenize(ids)
        out = yield FeedRequest(ids)
        assert out is not None
        next_logits = out[-1]
        segments: list[SegmentEvent] = []
        nudges: list[NudgeEvent] = []
        first_segment_time: float | None = None
        finish: Literal["stop", "length", "stop_sequence"] = "length"
        final_reward: float | None = None
        response_text = ""
        nudges_kept = 0

        while True:
            offset = cfg.first_insertion_offset if not segments else 0
            plan = _SegmentPlan(start=len(ids), offset=offset, start_logits=next_logits)
            allow_nudges = cfg.max_nudges is None or nudges_kept < cfg.max_nudges
            steps = cfg.refinement_steps if allow_nudges else 1
            failed_before = guard.broken
            kept_index, stopped_on_repeat, fallback = yield from self._refine_segment(
                plan, ids, cfg, steps, budget_end, session, generator, guard
            )
            segment_error = str(guard.error) if guard.broken and not failed_before else None
            kept = plan.candidates[kept_index]
            finished = kept.end in ("eos", "stop_sequence")
            new_ids = ids + kept.tokens
            if cfg.retokenize_between_segments:
                new_ids = self._retokenize(new_ids)
            body = new_ids[:-1] if new_ids and new_ids[-1] in self.eos_token_ids else new_ids
            if finished:
                finish = "stop_sequence" if kept.end == "stop_sequence" else "stop"
            done = finished or len(body) - response_start >= cfg.max_new_tokens or len(body) >= budget_end
            unchanged = new_ids == ids + kept.tokens
            if not done:
                # Make the policy cache hold exactly the new context, feeding only what differs.
                fed = plan.start + len(plan.cached)
                common = min(common_prefix_length(ids + plan.cached, new_ids), fed)
                if common < len(new_ids) or kept.tail_logits is None or not unchanged:
                    common = min(common, len(new_ids) - 1)  # re-feed at least one token to get its logits
                    yield _Rollback(common)
                    out = yield FeedRequest(new_ids[common:])
                    assert out is not None
                    next_logits = out[-1]
                if unchanged and kept.tail_logits is not None:
                    next_logits = kept.tail_logits  # the logits the candidate itself ended on
            ids = new_ids

            # Events.
            seg_index = len(segments)
            if first_segment_time is None:
                first_segment_time = time.perf_counter() - started
            text_now = self._response_text(ids[response_start:], cfg)
            if not done:
                # A character split across segments decodes as U+FFFD until its last byte arrives, and a stop
                # sequence may begin in this segment and end in the next: hold both back, so the streamed
                # deltas always add up to the final text.
                text_now = text_now.rstrip("\ufffd")
                text_now = text_now[: len(text_now) - _stop_prefix_length(text_now, cfg.stop_sequences)]
            common_text = common_prefix_length(response_text, text_now)
            delta = text_now[common_text:]
            response_text = response_text[:common_text] + delta
            nudge_event = self._nudge_event(index, seg_index, plan, kept_index, response_start, cfg)
            if nudge_event is not None:
                nudges.append(nudge_event)
                nudges_kept += int(nudge_event.kept)
                emit(nudge_event)
            segment_event = SegmentEvent(
                sequence_index=index,
                segment_index=seg_index,
                start_position=plan.start - response_start,
                token_ids=list(kept.tokens),
                text=delta,
                insertion_position=(plan.start - response_start + plan.offset)
                if plan.insertion_logits is not None
                else None,
                entropy_at_end=kept.end_entropy,
                candidate_rewards=[
                    c.reward if c.reward is not None and _finite(c.reward) else None for c in plan.candidates
                ],
                candidate_reward_terms=[c.reward_terms or {} for c in plan.candidates]
                if any(c.reward_terms for c in plan.candidates)
                else [],
                kept_refinement=kept_index,
                nudged=kept_index > 0,
                stopped_on_repeat=stopped_on_repeat,
                reward_fallback=fallback,
                reward_error=segment_error,
                finished=done,
            )
            segments.append(segment_event)
            emit(segment_event)
            if done:
                final_reward = self._final_reward(session, ids, kept, unchanged, cfg, guard)
                break

        response_ids = ids[response_start:]
        if response_ids and response_ids[-1] in self.eos_token_ids:
            response_ids = response_ids[:-1]
        if finish == "stop_sequence":
            response_ids = self._cut_ids_at_stop(response_ids, response_text)
        return GGROResult(
            text=response_text,
            token_ids=response_ids,
            prompt_token_ids=list(prompt_ids),
            finish_reason=finish,
            segments=segments,
            nudges=nudges,
            final_reward=final_reward,
            usage=Usage(
                prompt_tokens=len(prompt_ids),
                completion_tokens=len(response_ids),
                policy_forward_passes=stats.forward_passes,
                policy_tokens_processed=stats.tokens_processed,
                reward_calls=session.calls,
                reward_tokens_processed=session.tokens_processed,
            ),
            timing=Timing(seconds=time.perf_counter() - started, first_segment_seconds=first_segment_time),
            reward_error=str(guard.error) if guard.error is not None else None,
        )

    def _refine_segment(
        self,
        plan: _SegmentPlan,
        ids: list[int],
        cfg: GGROConfig,
        steps: int,
        budget_end: int,
        session: RewardSession,
        generator: torch.Generator | None,
        guard: RewardGuard,
    ) -> Generator[FeedRequest | _Rollback, torch.Tensor | None, tuple[int, bool, bool]]:
        """Draft, then up to ``steps - 1`` nudged refinements. Returns (kept index, stopped on repeat,
        reward unusable: non-finite, or failed under reward_failure='fallback')."""
        best_index, best_reward = 0, float("-inf")
        fallback = False
        stopped_on_repeat = False
        forced: int | None = None
        for r in range(steps):
            if r > 0:
                yield _Rollback(plan.start + plan.offset)
            cand = yield from self._generate_candidate(plan, ids, cfg, budget_end, forced)
            # A candidate's last token is fed only when entropy ended it (its logits open the next segment).
            plan.cached = cand.tokens if cand.end == "entropy" else cand.tokens[:-1]
            if any(c.tokens == cand.tokens for c in plan.candidates):
                stopped_on_repeat = True
                break
            plan.candidates.append(cand)
            if guard.broken:
                fallback = True  # the reward failed earlier in this response: the draft stands, unscored
                break
            wants_proposal = r < steps - 1 and len(cand.tokens) > plan.offset
            grad_at = plan.offset if wants_proposal and self.reward.differentiable else None
            score = guard.attempt(session.score_segment, ids, cand.tokens, grad_at)
            if score is None:  # the reward failed under reward_failure='fallback'
                fallback = True
                break
            cand.reward = score.reward
            cand.reward_terms = score.terms
            if not _finite(score.reward):
                if cfg.nonfinite_reward == "raise":
                    raise RewardError(
                        f"reward model {self.reward.name!r} returned a non-finite reward "
                        f"({score.reward}) for a candidate"
                    )
                fallback = True
                break  # a broken score gives no usable gradient either: the best finite candidate stands
            if score.reward > best_reward:
                best_index, best_reward = len(plan.candidates) - 1, score.reward
            if not wants_proposal:
                if len(cand.tokens) <= plan.offset and r < steps - 1:
                    stopped_on_repeat = True  # the release regenerates this same draft, then stops on repeat
                break
            assert plan.insertion_logits is not None
            top_k = torch.topk(plan.insertion_logits, min(cfg.nudge_top_k, plan.insertion_logits.shape[-1])).indices
            current = cand.tokens[plan.offset]
            if self.reward.differentiable:
                if score.gradient is None:
                    raise RewardError(f"reward model {self.reward.name!r} returned no gradient for a finite reward")
                if not torch.isfinite(score.gradient).all():
                    if cfg.nonfinite_reward == "raise":
                        raise RewardError(f"reward model {self.reward.name!r} returned a non-finite gradient")
                    fallback = True
                    break
                cand.proposal = propose_nudge(
                    self.reward,
                    score.gradient,
                    top_k,
                    current,
                    baseline=cfg.nudge_score_baseline,
                    selection=cfg.nudge_selection,
                    temperature=cfg.nudge_temperature,
                    generator=generator,
                )
            else:
                # No gradient: score each top-k variant of this candidate exactly, in one batch.
                head, tail = cand.tokens[: plan.offset], cand.tokens[plan.offset + 1 :]
                variants = [[*ids, *head, v, *tail] for v in top_k.tolist()]
                scores = guard.attempt(session.score_many, variants)
                if scores is None:
                    fallback = True
                    break
                exact = torch.tensor(scores, dtype=torch.float32)
                cand.proposal = choose_nudge(
                    exact,
                    top_k,
                    current,
                    score.reward,
                    baseline=cfg.nudge_score_baseline,
                    selection=cfg.nudge_selection,
                    temperature=cfg.nudge_temperature,
                    generator=generator,
                )
            if cand.proposal is None:
                fallback = True
                break
            if cand.proposal.token_id == current:
                stopped_on_repeat = True  # forcing the current token reproduces this candidate
                break
            forced = cand.proposal.token_id
        return best_index, stopped_on_repeat, fallback

    def _generate_candidate(
        self, plan: _SegmentPlan, ids: list[int], cfg: GGROConfig, budget_end: int, forced: int | None
    ) -> Generator[FeedRequest | _Rollback, torch.Tensor | None, _Candidate]:
        """Greedy continuation from the segment start (or, for refinements, from the insertion position
        with ``forced`` there) until EOS, the budget, a stop sequence or high entropy ends it."""
        if forced is None:
            gen: list[int] = []
            logits = plan.start_logits
        else:
            assert plan.insertion_logits is not None
            gen = list(plan.candidates[0].tokens[: plan.offset])
            logits = plan.insertion_logits
        previous = plan.candidates
        tail_text_ids = ids[-8:]
        while True:
            tok, end, entropy = self._decide(plan, gen, logits, cfg, budget_end, forced)
            if end == "entropy":
                return _Candidate(gen, "entropy", logits, entropy, forced)
            gen.append(tok)
            if end is None and cfg.stop_sequences and self._hits_stop(tail_text_ids + gen, cfg.stop_sequences):
                end = "stop_sequence"
            if end is not None:
                return _Candidate(gen, end, None, None, forced)
            draft = self._speculation(gen, previous, plan, budget_end) if cfg.speculative_refinement else []
            out = yield FeedRequest([tok, *draft], all_logits=bool(draft))
            assert out is not None
            logits = out[0]
            accepted = 0
            while accepted < len(draft):
                nxt, nxt_end, _ = self._decide(plan, gen, logits, cfg, budget_end, forced)
                if nxt_end is not None or nxt != draft[accepted]:
                    break
                gen.append(nxt)
                accepted += 1
                logits = out[accepted]
                if cfg.stop_sequences and self._hits_stop(tail_text_ids + gen, cfg.stop_sequences):
                    break
            if accepted < len(draft):
                yield _Rollback(plan.start + len(gen))
            if cfg.stop_sequences and accepted and self._hits_stop(tail_text_ids + gen, cfg.stop_sequences):
                return _Candidate(gen, "stop_sequence", None, None, forced)

    def _decide(
        self,
        plan: _SegmentPlan,
        gen: list[int],
        logits: torch.Tensor,
        cfg: GGROConfig,
        budget_end: int,
        forced: int | None,
    ) -> tuple[int, EndReason | None, float | None]:
        """The next token and whether it ends the candidate (the release's order: EOS, budget, entropy)."""
        n = len(gen)
        if n == plan.offset and plan.insertion_logits is None and forced is None:
            plan.insertion_logits = logits
        tok = forced if (forced is not None and n == plan.offset) else int(torch.argmax(logits))
        if tok in self.eos_token_ids:
            return tok, "eos", None
        if plan.start + n + 1 >= budget_end:
            return tok, "length", None
        if n + 1 >= cfg.min_segment_tokens:
            entropy = token_entropy(logits, cfg.entropy_probability_floor)
            if entropy >= cfg.entropy_threshold:
                return tok, "entropy", entropy
        return tok, None, None

    @staticmethod
    def _speculation(gen: list[int], previous: list[_Candidate], plan: _SegmentPlan, budget_end: int) -> list[int]:
        """Guess the continuation from earlier candidates of this segment: the latest place where an
        earlier candidate has our last two tokens (or last one), else the same position in the last one."""
        room = budget_end - (plan.start + len(gen)) - 1
        limit = min(_MAX_SPECULATION, room)
        if limit <= 0 or not previous:
            return []
        for width in (2, 1):
            if len(gen) < width:
                continue
            key = gen[-width:]
            for cand in reversed(previous):
                toks = cand.tokens
                for j in range(len(toks) - 1, width - 2, -1):
                    if toks[j - width + 1 : j + 1] == key and j + 1 < len(toks):
                        return toks[j + 1 : j + 1 + limit]
        aligned = previous[-1].tokens[len(gen) : len(gen) + min(limit, _MAX_ALIGNED_SPECULATION)]
        return aligned

    # ------------------------------------------------------------------ helpers
    def _decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        text = self.tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)
        return text if isinstance(text, str) else "".join(text)

    def _retokenize(self, ids: list[int]) -> list[int]:
        text = self._decode(ids, skip_special_tokens=False)
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _response_text(self, response_ids: list[int], cfg: GGROConfig) -> str:
        text: str = self._decode(response_ids, skip_special_tokens=True)
        if cfg.stop_sequences:
            cut = min((i for i in (text.find(s) for s in cfg.stop_sequences) if i >= 0), default=-1)
            if cut >= 0:
                text = text[:cut]
        return text

    def _hits_stop(self, ids: list[int], stops: list[str]) -> bool:
        text = self._decode(ids, skip_special_tokens=True)
        return any(s in text for s in stops)

    def _cut_ids_at_stop(self, ids: list[int], text: str) -> list[int]:
        """The longest prefix of ``ids`` whose text lies within ``text`` (the response cut at its stop)."""
        k = len(ids)
        while k > 0 and not text.startswith(self._decode(ids[:k], skip_special_tokens=True)):
            k -= 1
        return ids[:k]

    def _nudge_event(
        self, index: int, seg_index: int, plan: _SegmentPlan, kept_index: int, response_start: int, cfg: GGROConfig
    ) -> NudgeEvent | None:
        if len(plan.candidates) < 2 or plan.insertion_logits is None:
            return None
        draft = plan.candidates[0]
        shown = plan.candidates[kept_index] if kept_index > 0 else plan.candidates[1]
        draft_tok = draft.tokens[plan.offset]
        nudge_tok = shown.tokens[plan.offset]
        kept_reward = plan.candidates[kept_index].reward
        return NudgeEvent(
            sequence_index=index,
            segment_index=seg_index,
            insertion_position=plan.start - response_start + plan.offset,
            entropy=token_entropy(plan.insertion_logits, cfg.entropy_probability_floor),
            draft_token_id=draft_tok,
            draft_token=self._decode([draft_tok]),
            nudge_token_id=nudge_tok,
            nudge_token=self._decode([nudge_tok]),
            draft_reward=_or_nan(draft.reward),
            kept_reward=_or_nan(kept_reward),
            refinements_used=len(plan.candidates),
            kept_refinement=kept_index,
            kept=kept_index > 0,
        )

    def _final_reward(
        self,
        session: RewardSession,
        ids: list[int],
        kept: _Candidate,
        same_as_candidate: bool,
        cfg: GGROConfig,
        guard: RewardGuard,
    ) -> float | None:
        """Reward of the finished response. Without quirks it is the kept candidate's own reward; None once the
        reward has failed (under reward_failure='fallback')."""
        if guard.broken:
            return None
        scored = ids
        if cfg.final_reward_before_eos:
            while len(scored) > 1 and scored[-1] in self.eos_token_ids:
                scored = scored[:-1]
        if same_as_candidate and scored is ids and kept.reward is not None:
            return kept.reward if _finite(kept.reward) else None
        value = guard.attempt(session.score_sequence, scored)
        return value if value is not None and _finite(value) else None


def _check_unicode(text: str, what: str) -> None:
    """Refuse text that is not valid Unicode (a lone surrogate, e.g. from a bad decode) before a tokenizer does,
    with an error that says where."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise ValueError(f"{what}: not valid Unicode text (a lone surrogate at index {error.start})") from None


def _prompt_text(prompt: PromptInput) -> str:
    """The user's words: the prompt string, or the last user message of a chat."""
    if isinstance(prompt, str):
        return prompt
    messages = list(prompt)
    users = [m for m in messages if m.get("role") == "user"] or messages
    return str(users[-1].get("content", "")) if users else ""


def _drain(stream: Generator[GGROEvent, None, list[GGROResult]]) -> list[GGROResult]:
    """Run a decoding stream to its end (events still reach the listener) and return its results."""
    run = Decoding(stream)
    for _ in run:
        pass
    assert run.results is not None
    return run.results


def _stop_prefix_length(text: str, stops: Sequence[str]) -> int:
    """Length of the longest end of ``text`` that a stop sequence starts with (0: none)."""
    longest = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:n]):
                longest = n
                break
    return longest


def _finite(x: float) -> bool:
    return x == x and x not in (float("inf"), float("-inf"))


def _or_nan(x: float | None) -> float:
    return float("nan") if x is None else x
