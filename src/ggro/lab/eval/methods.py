"""Greedy, Best-of-N and ARGS decoding on a :class:`~ggro.GGRODecoder`'s policy and guidance reward.

Each returns a :class:`MethodOutput` with the response, its guidance reward and the cost counters GGRO
reports (policy forward passes, reward-model calls, seconds), so methods compare on equal terms:

- **greedy**: the policy's greedy ``generate`` (the same tokens as GGRO with one candidate per segment,
  without its reward-model work), then one reward of the response.
- **Best-of-N**: N responses sampled from the policy (:data:`BON_SAMPLING`: temperature 0.7, top-p 0.95, the
  usual chat setting, so a sample is as fluent as the policy's greedy answer; batched ``generate``),
  scored by the guidance reward in one batched pass over the responses on the prompt's cached prefix (as
  GGRO's scoring is); the best-rewarded one is returned.
- **ARGS** (Khanov et al., 2024, greedy variant): at every token, each of the policy's top-k tokens ``v``
  scores ``logit(v) + w * r(context + v)`` (the k rewards in one batched pass on the context's cached
  prefix); the best-scoring one is appended.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import DynamicCache

from ..._compat import cache_kwargs, cache_rows, output_cache, repeated_cache
from ...decoder import GGRODecoder, PromptInput
from ...rewards.base import RewardContext, RewardModel, RewardSession

__all__ = ["BON_SAMPLING", "MethodOutput", "args_decode", "best_of_n", "best_of_n_batch", "greedy", "greedy_batch"]

BON_SAMPLING: dict[str, float] = {"temperature": 0.7, "top_p": 0.95, "top_k": 0}
"""Best-of-N's sampling settings (recorded in every evaluation row, so files sampled otherwise are not mixed)."""


@dataclass(frozen=True)
class MethodOutput:
    """One response of one method, with its cost."""

    text: str
    token_ids: list[int]
    prompt_token_ids: list[int]
    guidance_reward: float | None
    policy_forward_passes: int
    reward_calls: int
    seconds: float
    candidate_texts: tuple[str, ...] = ()
    """Best-of-N: every sampled response (for coverage@k under another judge); empty for the others."""
    candidate_rewards: tuple[float, ...] = ()
    """Best-of-N: the guidance reward of each sample (NaN where it was not finite)."""

    @property
    def candidates(self) -> int:
        """Responses generated to choose this one (N for Best-of-N)."""
        return max(1, len(self.candidate_texts))


def greedy(decoder: GGRODecoder, prompt: PromptInput, max_new_tokens: int) -> MethodOutput:
    """Plain greedy decoding (``generate`` with the policy's KV cache), then one reward of the response: no
    reward-model work during decoding, as a user's greedy baseline would have."""
    return greedy_batch(decoder, [prompt], max_new_tokens)[0]


def greedy_batch(decoder: GGRODecoder, prompts: Sequence[PromptInput], max_new_tokens: int) -> list[MethodOutput]:
    """:func:`greedy` for several prompts in one left-padded ``generate``; each output's ``seconds`` is its
    share of the batch's time."""
    return _sampled_batch(decoder, prompts, max_new_tokens, n=1, seed=None)


def best_of_n(decoder: GGRODecoder, prompt: PromptInput, n: int, max_new_tokens: int, seed: int = 0) -> MethodOutput:
    """Sample ``n`` responses (:data:`BON_SAMPLING`, seeded), score each with the guidance reward, keep the best
    (the first of equal maxima; a non-finite reward never wins)."""
    return best_of_n_batch(decoder, [prompt], n, max_new_tokens, seed)[0]


def best_of_n_batch(
    decoder: GGRODecoder,
    prompts: Sequence[PromptInput],
    n: int,
    max_new_tokens: int,
    seed: int = 0,
    max_sequences: int = 32,
) -> list[MethodOutput]:
    """:func:`best_of_n` for several prompts: their samples come from batched ``generate`` calls of at most
    ``max_sequences`` rows (whole prompts, at least one; beyond that a CPU gets slower per row), each call
    seeded with ``seed``, so a prompt's samples depend on the prompts it was batched with."""
    if n < 1:
        raise ValueError(f"n: must be at least 1, got {n}")
    per_call = max(1, max_sequences // n)
    outputs: list[MethodOutput] = []
    for start in range(0, len(prompts), per_call):
        outputs += _sampled_batch(decoder, prompts[start : start + per_call], max_new_tokens, n=n, seed=seed)
    return outputs


def _sampled_batch(
    decoder: GGRODecoder, prompts: Sequence[PromptInput], max_new_tokens: int, *, n: int, seed: int | None
) -> list[MethodOutput]:
    """Greedy (``seed`` None, n=1) or sampled (n per prompt) responses, each prompt's best by guidance reward."""
    if not prompts:
        return []
    started = time.perf_counter()
    prompt_ids = [decoder.encode_prompt(p) for p in prompts]
    if seed is not None:
        torch.manual_seed(seed)
    out, width = _generate(decoder, prompt_ids, max_new_tokens, do_sample=seed is not None, num_return_sequences=n)
    steps = out.shape[1] - width
    outputs = []
    for b, (prompt, ids) in enumerate(zip(prompts, prompt_ids, strict=True)):
        samples = [_response(row[width:].tolist(), decoder) for row in out[b * n : (b + 1) * n]]
        session = _session(decoder, prompt, ids)
        rewards = session.score_continuations(ids, samples)  # the prompt's reward-model cache is shared
        best = max(range(n), key=lambda i: (_finite(rewards[i]), rewards[i] if _finite(rewards[i]) else 0.0, -i))
        outputs.append(
            (
                samples[best],
                ids,
                rewards[best] if _finite(rewards[best]) else None,
                session.calls or 1,  # the prompt once, then the n samples in one batched call
                tuple(_text(decoder, s) for s in samples) if seed is not None else (),
                tuple(r if _finite(r) else math.nan for r in rewards) if seed is not None else (),
            )
        )
    share = (time.perf_counter() - started) / len(prompts)
    return [
        MethodOutput(
            text=_text(decoder, body),
            token_ids=body,
            prompt_token_ids=list(ids),
            guidance_reward=reward,
            policy_forward_passes=steps,  # one batched forward per generated position
            reward_calls=calls,
            seconds=share,
            candidate_texts=texts,
            candidate_rewards=rewards,
        )
        for body, ids, reward, calls, texts, rewards in outputs
    ]


def args_decode(
    decoder: GGRODecoder, prompt: PromptInput, max_new_tokens: int, k: int = 10, w: float = 1.0
) -> MethodOutput:
    """ARGS greedy decoding: each step appends argmax over the policy's top-``k`` of ``logit + w * reward``
    (the reward of the context with that token appended; a non-finite reward makes a token lose).

    When the reward is a head on the policy's own transformer (:meth:`RewardModel.reads_policy_states`, and
    the decoder's ``fused_reward`` is on), a step is one policy pass over its ``k`` candidates on the
    context's cache: the candidates' rewards come from that pass's final states, and the chosen one's logits
    and cache row carry on, so no reward-model pass runs at all. Otherwise the reward session scores the ``k``
    candidates in one batched pass on its own cached prefix.
    """
    if k < 1:
        raise ValueError(f"k: must be at least 1, got {k}")
    started = time.perf_counter()
    prompt_ids = decoder.encode_prompt(prompt)
    budget = max_new_tokens
    if decoder.context_window is not None:
        budget = min(budget, decoder.context_window - len(prompt_ids))
    fused = w != 0 and decoder.config.fused_reward and decoder.reward.reads_policy_states(decoder.policy)
    step = _args_fused if fused else _args_session
    response, final, forwards, calls = step(decoder, prompt, prompt_ids, budget, k, w)
    body = response[:-1] if response and response[-1] in decoder.eos_token_ids else response
    return MethodOutput(
        text=_text(decoder, body),
        token_ids=body,
        prompt_token_ids=list(prompt_ids),
        guidance_reward=final if _finite(final) else None,
        policy_forward_passes=forwards,
        reward_calls=calls,
        seconds=time.perf_counter() - started,
    )


def _args_choice(logits: torch.Tensor, rewards: Sequence[float], w: float) -> int:
    """Index of the best ``logit + w * reward`` (the first of equal maxima; a non-finite reward loses)."""
    scores = [float(v) + w * r if _finite(r) else -math.inf for v, r in zip(logits, rewards, strict=True)]
    return max(range(len(scores)), key=lambda i: (scores[i], -i))


def _args_session(
    decoder: GGRODecoder, prompt: PromptInput, prompt_ids: list[int], budget: int, k: int, w: float
) -> tuple[list[int], float, int, int]:
    """ARGS with the reward session scoring each step's candidates; returns (response, final reward, policy
    passes, reward-model passes)."""
    policy = decoder.policy
    session = _session(decoder, prompt, prompt_ids)
    ids = list(prompt_ids)
    response: list[int] = []
    forwards = 0
    with torch.no_grad():
        out = policy(input_ids=torch.tensor([ids], device=policy.device), use_cache=True)
        forwards += 1
        while len(response) < budget:
            logits = out.logits[0, -1].float()
            top = torch.topk(logits, min(k, logits.shape[-1]))
            candidates = [int(t) for t in top.indices]
            rewards = session.score_continuations(ids, [[v] for v in candidates]) if w != 0 else [0.0] * len(candidates)
            choice = candidates[_args_choice(top.values, rewards, w)]
            ids.append(choice)
            response.append(choice)
            if choice in decoder.eos_token_ids or len(response) >= budget:
                break
            cache = {**cache_kwargs(policy, output_cache(out)), "use_cache": True}
            out = policy(input_ids=torch.tensor([[choice]], device=policy.device), **cache)
            forwards += 1
        final = session.score_sequence(ids)
    return response, final, forwards, session.calls


def _args_fused(
    decoder: GGRODecoder, prompt: PromptInput, prompt_ids: list[int], budget: int, k: int, w: float
) -> tuple[list[int], float, int, int]:
    """ARGS reading the rewards from the policy's own final states (see :func:`args_decode`); returns
    (response, final reward, policy passes, reward-model passes: none)."""
    policy, reward = decoder.policy, decoder.reward
    ids = list(prompt_ids)
    response: list[int] = []
    with torch.no_grad():
        out = policy(input_ids=torch.tensor([ids], device=policy.device), use_cache=True, output_hidden_states=True)
        forwards = 1
        states = out.hidden_states[-1][0].float()  # [len(ids), hidden]: the context's states, kept for pooling
        logits, cache = out.logits[0, -1].float(), _returned_cache(out)
        final = math.nan
        while len(response) < budget:
            top = torch.topk(logits, min(k, logits.shape[-1]))
            candidates = [int(t) for t in top.indices]
            # The k candidates as k rows of one token each on copies of the context's cache.
            rows = repeated_cache(cache, len(candidates))
            out = policy(
                input_ids=torch.tensor([[v] for v in candidates], device=policy.device),
                **cache_kwargs(policy, rows),
                use_cache=True,
                output_hidden_states=True,
            )
            forwards += 1
            fed = out.hidden_states[-1][:, -1].float()  # [k, hidden]
            rewards = [
                _states_reward(reward, [*ids, v], torch.cat([states, fed[i : i + 1]])) for i, v in enumerate(candidates)
            ]
            best = _args_choice(top.values, rewards, w)
            choice = candidates[best]
            ids.append(choice)
            response.append(choice)
            states = torch.cat([states, fed[best : best + 1]])
            final = rewards[best]
            logits = out.logits[best, -1].float()
            cache = cache_rows(policy, _returned_cache(out), torch.tensor([best], device=policy.device))
            if choice in decoder.eos_token_ids:
                break
    if not response:
        final = _states_reward(reward, ids, states)
    return response, final, forwards, 0


def _returned_cache(output: Any) -> DynamicCache:
    cache = output_cache(output)
    if cache is None:
        raise RuntimeError("ARGS: the policy returned no KV cache with use_cache=True")
    return cache


def _states_reward(reward: RewardModel, ids: Sequence[int], states: torch.Tensor) -> float:
    """The reward of ``ids`` from the policy's states of every position (NaN when the reward gives none)."""
    value = reward.reward_from_states(ids, states)
    return math.nan if value is None else float(value)


def _generate(
    decoder: GGRODecoder,
    prompt_ids: Sequence[Sequence[int]],
    max_new_tokens: int,
    *,
    do_sample: bool,
    num_return_sequences: int,
) -> tuple[torch.Tensor, int]:
    """The policy's own ``generate`` on left-padded prompts (greedy, or sampling with :data:`BON_SAMPLING`);
    returns the output rows (``num_return_sequences`` per prompt, in order) and the padded
    prompt width."""
    policy = decoder.policy
    pad = decoder.tokenizer.pad_token_id if decoder.tokenizer.pad_token_id is not None else 0
    width = max(len(ids) for ids in prompt_ids)
    rows = [[pad] * (width - len(ids)) + list(ids) for ids in prompt_ids]
    mask = [[0] * (width - len(ids)) + [1] * len(ids) for ids in prompt_ids]
    input_ids = torch.tensor(rows, device=policy.device)
    sampling = BON_SAMPLING if do_sample else {}
    with torch.no_grad():
        out: torch.Tensor = policy.generate(
            input_ids,
            attention_mask=torch.tensor(mask, device=policy.device),
            do_sample=do_sample,
            num_return_sequences=num_return_sequences,
            max_new_tokens=max_new_tokens,
            eos_token_id=sorted(decoder.eos_token_ids) or None,
            pad_token_id=pad,
            **sampling,
        )
    return out, width


def _session(decoder: GGRODecoder, prompt: PromptInput, prompt_ids: Sequence[int]) -> RewardSession:
    from ...prompting import prompt_text as _prompt_text

    return decoder.reward.open_session(RewardContext(tuple(prompt_ids), _prompt_text(prompt), decoder.tokenizer))


def _response(generated: list[int], decoder: GGRODecoder) -> list[int]:
    """A sampled row up to (not including) its end-of-turn token; the padding after it dropped."""
    for i, token in enumerate(generated):
        if token in decoder.eos_token_ids:
            return generated[:i]
    return generated


def _text(decoder: GGRODecoder, ids: Sequence[int]) -> str:
    return str(decoder.tokenizer.decode(list(ids), skip_special_tokens=True))


def _finite(x: float) -> bool:
    return math.isfinite(x)
