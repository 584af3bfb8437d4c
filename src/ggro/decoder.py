"""`GGRODecoder`: the segment loop (draft -> score -> propose -> refine -> select) over any HF causal LM.

The decoder is the public face: it checks and encodes prompts (:mod:`ggro.prompting`), resolves the
configuration, and runs one coroutine per prompt (:mod:`ggro.sequence`, segments refined by
:mod:`ggro.refinement`) under a scheduler that batches their policy forward passes (:mod:`ggro.scheduler`).
"""

from __future__ import annotations

import time
from collections.abc import Generator, Mapping, Sequence
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ._aio import AsyncDecoding, Decoding
from .config import GGROConfig, merge_config
from .constraints import Constraint, GrammarVocabulary, grammar_vocabulary
from .detokenize import Detokenizer
from .events import GGROEvent, GGROResult, Listener
from .loading import load_policy, load_reward, reward_shares_policy
from .prompting import PromptInput, as_batch, check_prompt_length, encode_prompt, prompt_text
from .refinement import DecoderParts
from .rewards.base import RewardContext, RewardModel
from .scheduler import Outbox, PassCount, run_batched
from .segments import token_entropy
from .sequence import run_sequence

__all__ = ["GGRODecoder", "PromptInput"]


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
        model_kwargs: Mapping[str, Any] | None = None,
        tokenizer_kwargs: Mapping[str, Any] | None = None,
        device_map: str | Mapping[str, Any] | None = None,
    ) -> GGRODecoder:
        """Build from a policy (None: the embedded SmolLM2-135M-Instruct; an embedded name such as
        ``"qwen2.5-coder-0.5b-instruct"``, see :data:`ggro.assets.EMBEDDED_POLICIES`; or a hub id / local path)
        and a reward id/path, a :class:`RewardModel`, or None (the embedded default reward).

        A reward loaded by name whose tokenizer has another vocabulary than the policy's is read through
        :class:`~ggro.rewards.bridge.TokenizerBridgeReward`. ``model_kwargs``, ``tokenizer_kwargs`` and
        ``device_map`` go to the policy's loading (:func:`ggro.loading.load_policy`); ``device`` places the
        reward (and the policy when there is no ``device_map``)."""
        model, tokenizer = load_policy(
            policy,
            dtype=dtype,
            device=device,
            model_kwargs=model_kwargs,
            tokenizer_kwargs=tokenizer_kwargs,
            device_map=device_map,
        )
        if isinstance(reward, RewardModel):
            rm = reward
        else:  # an embedded reward shares its embedded policy's transformer instead of loading a copy
            shared = model if reward_shares_policy(policy, reward) else None
            rm = load_reward(reward, backbone_of=shared, policy_tokenizer=tokenizer, dtype=dtype, device=device)
        return cls(model, tokenizer, rm, config)

    # ------------------------------------------------------------------ prompts
    def encode_prompt(
        self,
        prompt: PromptInput,
        *,
        chat_template: bool | None = None,
        tools: Sequence[Mapping[str, Any]] | None = None,
        truncate: bool = False,
    ) -> list[int]:
        """Token ids of a prompt: a string (wrapped as one user message when the tokenizer has a chat
        template) or a list of chat messages, with ``tools`` rendered by the chat template; ``truncate`` drops
        the oldest messages (system messages and the last user message kept) when it does not fit the
        context window (see :func:`ggro.prompting.encode_prompt`)."""
        return encode_prompt(
            self.tokenizer,
            prompt,
            chat_template=chat_template,
            context_window=self.context_window,
            tools=tools,
            truncate=truncate,
        )

    def grammar_vocabulary(self) -> GrammarVocabulary:
        """The grammar engine's view of the policy's tokenizer (built on first use, about a second for 150k
        tokens; shared by every constrained call)."""
        embeddings = self.policy.get_output_embeddings()
        size = int(embeddings.weight.shape[0]) if embeddings is not None else len(self.tokenizer)
        return grammar_vocabulary(self.tokenizer, size, sorted(self.eos_token_ids))

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

    # ------------------------------------------------------------------ public decoding API
    def generate(
        self,
        prompts: PromptInput | Sequence[PromptInput],
        *,
        config: GGROConfig | None = None,
        listener: Listener | None = None,
        chat_template: bool | None = None,
        tools: Sequence[Mapping[str, Any]] | None = None,
        constraint: Constraint | None = None,
        **overrides: Any,
    ) -> list[GGROResult]:
        """Decode one prompt or a batch (decoded together). Returns one result per prompt."""
        return _drain(
            self.stream(
                prompts,
                config=config,
                listener=listener,
                chat_template=chat_template,
                tools=tools,
                constraint=constraint,
                **overrides,
            )
        )

    def stream(
        self,
        prompts: PromptInput | Sequence[PromptInput],
        *,
        config: GGROConfig | None = None,
        listener: Listener | None = None,
        chat_template: bool | None = None,
        tools: Sequence[Mapping[str, Any]] | None = None,
        constraint: Constraint | None = None,
        **overrides: Any,
    ) -> Generator[GGROEvent, None, list[GGROResult]]:
        """Yield segment and nudge events as segments are accepted; returns the results at the end.

        ``tools`` (OpenAI-style tool dicts) are rendered into the prompt by the chat template (see
        :func:`ggro.prompting.encode_prompt`); ``constraint`` is the grammar every response must follow (see
        :class:`ggro.Constraint`), e.g. ``Constraint.for_tools(tools, "required")``."""
        cfg = self._resolve_config(config, overrides)
        batch = as_batch(prompts)
        ids = [self.encode_prompt(p, chat_template=chat_template, tools=tools) for p in batch]
        return self.stream_ids(
            ids, config=cfg, listener=listener, prompt_texts=[prompt_text(p) for p in batch], constraint=constraint
        )

    def astream(
        self,
        prompts: PromptInput | Sequence[PromptInput],
        *,
        config: GGROConfig | None = None,
        listener: Listener | None = None,
        chat_template: bool | None = None,
        tools: Sequence[Mapping[str, Any]] | None = None,
        constraint: Constraint | None = None,
        **overrides: Any,
    ) -> AsyncDecoding:
        """Async :meth:`stream`: ``async for event in decoder.astream(...)``; the decoding runs in a worker
        thread so the event loop stays free, and ``.results`` holds the results at the end. Bad input
        raises here, before any work starts."""
        return AsyncDecoding(
            self.stream(
                prompts,
                config=config,
                listener=listener,
                chat_template=chat_template,
                tools=tools,
                constraint=constraint,
                **overrides,
            )
        )

    async def agenerate(
        self,
        prompts: PromptInput | Sequence[PromptInput],
        *,
        config: GGROConfig | None = None,
        listener: Listener | None = None,
        chat_template: bool | None = None,
        tools: Sequence[Mapping[str, Any]] | None = None,
        constraint: Constraint | None = None,
        **overrides: Any,
    ) -> list[GGROResult]:
        """Async :meth:`generate` (the decoding runs in a worker thread)."""
        run = self.astream(
            prompts,
            config=config,
            listener=listener,
            chat_template=chat_template,
            tools=tools,
            constraint=constraint,
            **overrides,
        )
        async for _ in run:
            pass
        assert run.results is not None
        return run.results

    def generate_ids(
        self,
        prompt_ids: Sequence[Sequence[int]],
        *,
        config: GGROConfig | None = None,
        listener: Listener | None = None,
        constraint: Constraint | None = None,
    ) -> list[GGROResult]:
        return _drain(self.stream_ids(prompt_ids, config=config, listener=listener, constraint=constraint))

    def stream_ids(
        self,
        prompt_ids: Sequence[Sequence[int]],
        *,
        config: GGROConfig | None = None,
        listener: Listener | None = None,
        prompt_texts: Sequence[str] | None = None,
        constraint: Constraint | None = None,
    ) -> Generator[GGROEvent, None, list[GGROResult]]:
        """Decode token-id prompts. ``prompt_texts`` (the user's prompts as text) reach text-level rewards;
        by default they are the decoded prompts."""
        cfg = config or self.config
        if listener is not None and not callable(listener):
            raise TypeError(f"listener: must be callable (it receives each event), got {type(listener).__name__}")
        prompts = [check_prompt_length(list(p), self.context_window) for p in prompt_ids]
        if not prompts:
            raise ValueError("prompts: the batch is empty")
        if prompt_texts is None:
            prompt_texts = [str(self.tokenizer.decode(p, skip_special_tokens=True)) for p in prompts]
        elif len(prompt_texts) != len(prompts):
            raise ValueError(f"prompt_texts: expected {len(prompts)} texts, got {len(prompt_texts)}")
        contexts = [RewardContext(tuple(p), t, self.tokenizer) for p, t in zip(prompts, prompt_texts, strict=True)]
        grammar = self._check_constraint(constraint, cfg, prompts) if constraint is not None else None
        return self._schedule(prompts, contexts, cfg, listener, constraint, grammar)

    def _check_constraint(self, constraint: Constraint, cfg: GGROConfig, prompts: list[list[int]]) -> GrammarVocabulary:
        """Refuse a constraint that cannot work for this call, before any model work."""
        if not isinstance(constraint, Constraint):
            raise TypeError(f"constraint: expected a ggro.Constraint, got {type(constraint).__name__}")
        if cfg.retokenize_between_segments:
            raise ValueError(
                "retokenize_between_segments: cannot be combined with a constraint (re-tokenised text may "
                "split differently from what the grammar accepted)"
            )
        grammar = self.grammar_vocabulary()
        budget = cfg.max_new_tokens
        if self.context_window is not None:
            budget = min(budget, self.context_window - max(len(p) for p in prompts))
        needed = constraint.start(grammar).closing_length(4 * budget + 256)
        if needed is None or needed > budget:
            shortest = f"{needed} tokens" if needed is not None else f"more than {4 * budget + 256} tokens"
            raise ValueError(
                f"max_new_tokens: {budget} tokens cannot hold the shortest output of the constraint "
                f"({constraint.description}: {shortest}); raise max_new_tokens"
            )
        return grammar

    def _resolve_config(self, config: GGROConfig | None, overrides: dict[str, Any]) -> GGROConfig:
        if config is not None and not isinstance(config, GGROConfig):
            if not isinstance(config, Mapping):
                raise TypeError(f"config: expected a GGROConfig or a dict of options, got {type(config).__name__}")
            config = GGROConfig.model_validate(dict(config))
        base = config or self.config
        if not overrides:
            return base
        return merge_config(base, overrides, owner=type(self).__name__)

    # ------------------------------------------------------------------ running a call
    def _schedule(
        self,
        prompts: list[list[int]],
        contexts: list[RewardContext],
        cfg: GGROConfig,
        listener: Listener | None,
        constraint: Constraint | None = None,
        grammar: GrammarVocabulary | None = None,
    ) -> Generator[GGROEvent, None, list[GGROResult]]:
        """One sequence coroutine per prompt, run together; a generator, so nothing starts before iteration."""
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        parts = DecoderParts(
            self.reward,
            self.eos_token_ids,
            Detokenizer(self.tokenizer),
            self.context_window,
            grammar,
            reward_reads_states=self.reward.reads_policy_states(self.policy),
        )
        outbox: Outbox[GGROEvent] = Outbox(listener)
        started = time.perf_counter()
        counts = [PassCount() for _ in prompts]
        sequences = [
            run_sequence(parts, i, p, contexts[i], cfg, outbox.put, counts[i], started, constraint)
            for i, p in enumerate(prompts)
        ]
        return (
            yield from run_batched(
                self.policy, sequences, counts, outbox, pad_token_id=pad, new_tokens=cfg.max_new_tokens
            )
        )


def _drain(stream: Generator[GGROEvent, None, list[GGROResult]]) -> list[GGROResult]:
    """Run a decoding stream to its end (events still reach the listener) and return its results."""
    run = Decoding(stream)
    for _ in run:
        pass
    assert run.results is not None
    return run.results
