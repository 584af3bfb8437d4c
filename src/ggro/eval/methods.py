"""Greedy, Best-of-N and ARGS decoding on a :class:`~ggro.GGRODecoder`'s policy and guidance reward.

Each returns a :class:`MethodOutput` with the response, its guidance reward and the cost counters GGRO
reports (policy forward passes, reward-model calls, seconds), so methods compare on equal terms:

- **greedy**: the policy's greedy ``generate`` (the same tokens as GGRO with one candidate per segment,
  without its reward-model work), then one reward of the response.
- **Best-of-N**: N responses sampled from the policy (temperature 1, no truncation, one batched
  ``generate``), each scored by the guidance reward; the best-rewarded one is returned.
- **ARGS** (Khanov et al., 2024, greedy variant): at every token, each of the policy's top-k tokens ``v``
  scores ``logit(v) + w * r(context + v)``; the best-scoring one is appended.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .._compat import cache_kwargs, output_cache
from ..decoder import GGRODecoder, PromptInput
from ..rewards.base import RewardContext, RewardSession

__all__ = ["MethodOutput", "args_decode", "best_of_n", "greedy"]


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
    started = time.perf_counter()
    prompt_ids = decoder.encode_prompt(prompt)
    out = _generate(decoder, prompt_ids, max_new_tokens, do_sample=False, num_return_sequences=1)
    response = _response(out[0, len(prompt_ids) :].tolist(), decoder)
    session = _session(decoder, prompt, prompt_ids)
    reward = session.score_many([prompt_ids + response])[0]
    return MethodOutput(
        text=_text(decoder, response),
        token_ids=response,
        prompt_token_ids=list(prompt_ids),
        guidance_reward=reward if _finite(reward) else None,
        policy_forward_passes=out.shape[1] - len(prompt_ids),
        reward_calls=session.calls or 1,
        seconds=time.perf_counter() - started,
    )


def best_of_n(decoder: GGRODecoder, prompt: PromptInput, n: int, max_new_tokens: int, seed: int = 0) -> MethodOutput:
    """Sample ``n`` responses (temperature 1, seeded), score each with the guidance reward, keep the best
    (the first of equal maxima; a non-finite reward never wins)."""
    if n < 1:
        raise ValueError(f"n: must be at least 1, got {n}")
    started = time.perf_counter()
    prompt_ids = decoder.encode_prompt(prompt)
    torch.manual_seed(seed)
    out = _generate(decoder, prompt_ids, max_new_tokens, do_sample=True, num_return_sequences=n)
    steps = out.shape[1] - len(prompt_ids)
    samples = [_response(row[len(prompt_ids) :].tolist(), decoder) for row in out]
    session = _session(decoder, prompt, prompt_ids)
    rewards = session.score_many([prompt_ids + s for s in samples])
    best = max(range(n), key=lambda i: (_finite(rewards[i]), rewards[i] if _finite(rewards[i]) else 0.0, -i))
    return MethodOutput(
        text=_text(decoder, samples[best]),
        token_ids=samples[best],
        prompt_token_ids=list(prompt_ids),
        guidance_reward=rewards[best] if _finite(rewards[best]) else None,
        policy_forward_passes=steps,  # one batched forward per generated position
        reward_calls=session.calls or 1,  # the batch of n is scored in one call
        seconds=time.perf_counter() - started,
        candidate_texts=tuple(_text(decoder, s) for s in samples),
        candidate_rewards=tuple(r if _finite(r) else math.nan for r in rewards),
    )


def args_decode(
    decoder: GGRODecoder, prompt: PromptInput, max_new_tokens: int, k: int = 10, w: float = 1.0
) -> MethodOutput:
    """ARGS greedy decoding: each step appends argmax over the policy's top-``k`` of ``logit + w * reward``
    (the reward of the context with that token appended; a non-finite reward makes a token lose)."""
    if k < 1:
        raise ValueError(f"k: must be at least 1, got {k}")
    started = time.perf_counter()
    prompt_ids = decoder.encode_prompt(prompt)
    policy = decoder.policy
    session = _session(decoder, prompt, prompt_ids)
    ids = list(prompt_ids)
    response: list[int] = []
    forwards = 0
    budget = max_new_tokens
    if decoder.context_window is not None:
        budget = min(budget, decoder.context_window - len(prompt_ids))
    with torch.no_grad():
        out = policy(input_ids=torch.tensor([ids], device=policy.device), use_cache=True)
        forwards += 1
        while len(response) < budget:
            logits = out.logits[0, -1].float()
            top = torch.topk(logits, min(k, logits.shape[-1]))
            candidates = [int(t) for t in top.indices]
            rewards = [session.score_sequence([*ids, v]) for v in candidates] if w != 0 else [0.0] * len(candidates)
            scores = [
                float(logit) + w * r if _finite(r) else -math.inf for logit, r in zip(top.values, rewards, strict=True)
            ]
            choice = candidates[max(range(len(candidates)), key=lambda i: (scores[i], -i))]
            ids.append(choice)
            response.append(choice)
            if choice in decoder.eos_token_ids or len(response) >= budget:
                break
            cache = {**cache_kwargs(policy, output_cache(out)), "use_cache": True}
            out = policy(input_ids=torch.tensor([[choice]], device=policy.device), **cache)
            forwards += 1
        final = session.score_sequence(ids)
    body = response[:-1] if response and response[-1] in decoder.eos_token_ids else response
    return MethodOutput(
        text=_text(decoder, body),
        token_ids=body,
        prompt_token_ids=list(prompt_ids),
        guidance_reward=final if _finite(final) else None,
        policy_forward_passes=forwards,
        reward_calls=session.calls,
        seconds=time.perf_counter() - started,
    )


def _generate(
    decoder: GGRODecoder, prompt_ids: Sequence[int], max_new_tokens: int, *, do_sample: bool, num_return_sequences: int
) -> torch.Tensor:
    """The policy's own ``generate`` (greedy, or sampling at temperature 1 with no truncation)."""
    policy = decoder.policy
    input_ids = torch.tensor([list(prompt_ids)], device=policy.device)
    pad = decoder.tokenizer.pad_token_id if decoder.tokenizer.pad_token_id is not None else 0
    sampling = {"temperature": 1.0, "top_k": 0, "top_p": 1.0} if do_sample else {}
    with torch.no_grad():
        out: torch.Tensor = policy.generate(
            input_ids,
            attention_mask=torch.ones_like(input_ids),
            do_sample=do_sample,
            num_return_sequences=num_return_sequences,
            max_new_tokens=max_new_tokens,
            eos_token_id=sorted(decoder.eos_token_ids) or None,
            pad_token_id=pad,
            **sampling,
        )
    return out


def _session(decoder: GGRODecoder, prompt: PromptInput, prompt_ids: Sequence[int]) -> RewardSession:
    from ..decoder import _prompt_text

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
