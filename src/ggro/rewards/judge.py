"""A causal LM as judge: ``reward = log p("Yes") - log p("No")`` of the LM answering a question about a response.

The judge reads ``head + prompt + middle + response + tail``: the template's text before the prompt, the
user's prompt (as text, re-tokenised with the judge's tokenizer), the template's text between prompt and
response, the response in the policy's own token ids, and the template's text after the response (the
question and, with a chat template, the start of the judge's answer turn). The reward is read from the
judge's next-token logits after ``tail``; the softmax normaliser cancels, so it is the logit difference.

The response is fed as the policy's token ids, so the judge must share the policy's vocabulary (the
policy model itself is the usual judge: no extra weights). Then dr/de at a response token is the
gradient at that token's position in the judge's input, and ``candidate_scores`` is E_judge[v] . dr/de.

Per sequence, the session keeps the judge's KV cache of ``head + prompt + middle + accepted response``, so a
candidate segment costs a pass (forward + backward) over ``segment + tail`` only; the tail's KV is dropped
after each call.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from .._compat import cache_kwargs
from ..segments import common_prefix_length
from ._session import CausalPrefixSession
from .base import RewardContext, RewardError, RewardSession, SegmentScore, TokenEmbeddingReward

__all__ = ["DEFAULT_QUESTION", "DEFAULT_TEMPLATE", "LMJudgeReward"]

DEFAULT_QUESTION = "Is the response helpful and harmless?"

DEFAULT_TEMPLATE = (
    "Here is a user's request and an AI assistant's response.\n\n"
    "Request:\n{prompt}\n\n"
    "Response:\n{response}\n\n"
    "{question} Answer Yes or No."
)
"""The judge's question about (prompt, response). Wrapped as a user message (plus the generation prompt)
when the tokenizer has a chat template; otherwise followed by ``PLAIN_ANSWER_CUE``."""

PLAIN_ANSWER_CUE = "\nAnswer:"


class LMJudgeReward(TokenEmbeddingReward):
    """``log p(yes) - log p(no)`` of a causal LM asked ``question`` about (prompt, response).

    Args:
        model: any Hugging Face causal LM (``AutoModelForCausalLM``); it may be the policy itself. It is
            put in eval mode and its parameters are frozen (``requires_grad=False``).
        tokenizer: the judge's tokenizer; it tokenises the template and the prompt text.
        question: replaces ``{question}`` in the template.
        template: text holding ``{prompt}`` and ``{response}`` once each (and optionally ``{question}``);
            the judge's answer follows it. Default :data:`DEFAULT_TEMPLATE`.
        use_chat_template: wrap the template as a user message of the tokenizer's chat template and append
            the generation prompt (default: when the tokenizer has a chat template). Without it the
            template is plain text followed by ``"\\nAnswer:"`` (the default template only).
        template_ids: pre-tokenised ``(head, middle, tail)`` instead of a text template (for tokenizers that
            cannot render one, e.g. a test tokenizer): the judge reads ``head + prompt + middle + response +
            tail``.
        answers: the (yes, no) answers, each a string that must be a single token (tokenised without
            special tokens; retried stripped of spaces, as sentencepiece adds its own) or a token id.
            Default ``("Yes", "No")`` after a chat template's generation prompt, ``(" Yes", " No")`` after
            plain text.
        end_ids: trailing response tokens the judge does not see (default: the tokenizer's eos): an
            end-of-turn inside the judge's user message would end that message early.
        use_prefix_cache: keep the KV cache of the accepted prefix per session (exact for causal LMs).
        name: the reward's name in events and errors.
    """

    _reads = "the judge's embedding"
    _vocabulary_hint = "the judge reads the policy's token ids, so it needs the policy's tokenizer"

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        question: str = DEFAULT_QUESTION,
        template: str | None = None,
        use_chat_template: bool | None = None,
        template_ids: tuple[Sequence[int], Sequence[int], Sequence[int]] | None = None,
        answers: tuple[str | int, str | int] | None = None,
        end_ids: Sequence[int] | None = None,
        use_prefix_cache: bool = True,
        name: str = "lm-judge",
    ):
        self.model = model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.tokenizer = tokenizer
        self.name = name
        self.use_prefix_cache = use_prefix_cache
        self._embedding = self.model.get_input_embeddings()
        chat = bool(getattr(tokenizer, "chat_template", None)) if use_chat_template is None else use_chat_template
        if template_ids is not None:
            if template is not None:
                raise ValueError("template: give a text template or template_ids, not both")
            head, middle, tail = ([int(x) for x in part] for part in template_ids)
        else:
            head, middle, tail = self._render(template, question, chat)
        if not tail:
            raise ValueError("template: nothing follows {response}; the judge's answer needs a question after it")
        self.head_ids, self.middle_ids, self.tail_ids = head, middle, tail
        yes, no = answers if answers is not None else (("Yes", "No") if chat else (" Yes", " No"))
        self.yes_id = self._answer_id(yes, "yes")
        self.no_id = self._answer_id(no, "no")
        if self.yes_id == self.no_id:
            raise ValueError(f"answers: yes and no are the same token ({self.yes_id})")
        vocab = self._embedding.weight.shape[0]
        for label, tid in (("yes", self.yes_id), ("no", self.no_id)):
            if not 0 <= tid < vocab:
                raise ValueError(f"answers: the {label} token id {tid} is outside the judge's vocabulary ({vocab})")
        if end_ids is None:
            eos = getattr(tokenizer, "eos_token_id", None)
            end_ids = [eos] if isinstance(eos, int) else list(eos or [])
        self.end_ids = frozenset(int(x) for x in end_ids)
        self.pad_id = int(getattr(tokenizer, "pad_token_id", None) or 0)

    # ------------------------------------------------------------------ construction helpers
    def _tokens(self, text: str, *, special: bool = False) -> list[int]:
        try:
            return [int(x) for x in self.tokenizer(text, add_special_tokens=special)["input_ids"]]
        except Exception as exc:  # a user's tokenizer on a user's text: name the reward, keep the cause
            raise RewardError(f"reward {self.name!r}: cannot tokenise {text[:40]!r}: {exc}") from exc

    def _render(self, template: str | None, question: str, chat: bool) -> tuple[list[int], list[int], list[int]]:
        text = (DEFAULT_TEMPLATE if template is None else template).replace("{question}", question)
        for field in ("{prompt}", "{response}"):
            if text.count(field) != 1:
                raise ValueError(f"template: must hold {field} exactly once, found {text.count(field)}")
        if text.index("{prompt}") > text.index("{response}"):
            raise ValueError("template: {prompt} must come before {response}")
        if chat:
            text = self.tokenizer.apply_chat_template(
                [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
            )
            if text.count("{prompt}") != 1 or text.count("{response}") != 1:
                raise ValueError("template: the chat template altered the {prompt}/{response} placeholders")
        elif template is None:
            text += PLAIN_ANSWER_CUE
        head_text, rest = text.split("{prompt}")
        middle_text, tail_text = rest.split("{response}")
        if chat:
            head = self._tokens(head_text)  # the rendered chat text already holds its special tokens
        else:
            # Plain text gets the tokenizer's own start-of-text handling (e.g. Llama's BOS), never an eos.
            head = self._tokens(head_text, special=True)
            eos = getattr(self.tokenizer, "eos_token_id", None)
            if head and isinstance(eos, int) and head[-1] == eos:
                head = head[:-1]
        return head, self._tokens(middle_text), self._tokens(tail_text)

    def _answer_id(self, answer: str | int, label: str) -> int:
        if isinstance(answer, int):
            return answer
        for text in (answer, answer.strip()):
            ids = self._tokens(text)
            if len(ids) == 1:
                return ids[0]
        raise ValueError(
            f"answers: the {label} answer {answer!r} is not a single token ({self._tokens(answer)}); pass its token id"
        )

    # ------------------------------------------------------------------ layout of the judge's input

    def prefix_ids(self, prompt_text: str) -> list[int]:
        """``head + prompt + middle``: the judge's input before the response."""
        return [*self.head_ids, *self._tokens(prompt_text), *self.middle_ids]

    @staticmethod
    def response_start(ids: Sequence[int], context: RewardContext | None) -> int:
        """Where the response starts in policy ``ids``: after ``context.prompt_ids`` when ``ids`` starts
        with them, else 0 (the whole sequence is the response, as in :meth:`RewardContext.response_text`)."""
        if context is None:
            return 0
        n = len(context.prompt_ids)
        return n if list(ids[:n]) == list(context.prompt_ids) else 0

    def visible(self, response: Sequence[int]) -> list[int]:
        """The response as the judge sees it: without trailing end-of-turn tokens."""
        end = len(response)
        while end and response[end - 1] in self.end_ids:
            end -= 1
        return list(response[:end])

    def judge_ids(self, ids: Sequence[int], context: RewardContext | None = None) -> list[int]:
        """The judge's whole input for the policy sequence ``ids`` (prompt + response, policy ids)."""
        prompt_text = context.prompt_text if context is not None else ""
        response = self.visible(ids[self.response_start(ids, context) :])
        return [*self.prefix_ids(prompt_text), *response, *self.tail_ids]

    def answer_margin(self, logits: torch.Tensor) -> torch.Tensor:
        """``log p(yes) - log p(no)`` from next-token logits [..., vocab] (float32)."""
        if logits.shape[-1] <= max(self.yes_id, self.no_id):
            raise RewardError(
                f"reward {self.name!r}: the judge's logits have {logits.shape[-1]} entries, "
                f"fewer than the answer ids {self.yes_id}, {self.no_id} need"
            )
        # Subtract in float32: two close bf16 logits would lose most of their difference.
        return logits[..., self.yes_id].float() - logits[..., self.no_id].float()

    def _model(self, **kwargs: Any) -> Any:
        try:
            return self.model(**kwargs)
        except Exception as exc:  # the judge is user code: report it with its name, keep the original
            raise RewardError(f"reward model {self.name!r} failed: {exc}") from exc

    # ------------------------------------------------------------------ RewardModel

    def open_session(self, context: RewardContext | None = None) -> RewardSession:
        return _JudgeSession(self, context)

    def score(self, sequences: Sequence[Sequence[int]], *, context: RewardContext | None = None) -> list[float]:
        """Rewards of whole policy sequences (prompt + response), one batch, no gradients. The prompt is
        found as in :meth:`response_start`: without ``context`` each sequence is all response, to an
        empty prompt."""
        rows = [list(s) for s in sequences]
        if not rows or any(not r for r in rows):
            raise ValueError("score: every sequence needs at least one token")
        return self.score_judge_inputs([self.judge_ids(r, context) for r in rows])

    def score_texts(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        """Rewards of (prompt, response) texts; responses are tokenised with the judge's tokenizer."""
        if len(prompts) != len(responses):
            raise ValueError(f"score_texts: {len(prompts)} prompts but {len(responses)} responses")
        return self.score_judge_inputs(
            [
                [*self.prefix_ids(p), *self.visible(self._tokens(r)), *self.tail_ids]
                for p, r in zip(prompts, responses, strict=True)
            ]
        )

    def score_judge_inputs(self, inputs: Sequence[Sequence[int]]) -> list[float]:
        """Rewards of complete judge inputs (left padding + attention mask; only the last logits)."""
        rows = [list(r) for r in inputs]
        if not rows:
            return []
        width = max(len(r) for r in rows)
        ids = torch.tensor([[self.pad_id] * (width - len(r)) + r for r in rows], device=self.device)
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        with torch.no_grad():
            out = self._model(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=1)
        return [float(x) for x in self.answer_margin(out.logits[:, -1]).cpu()]

    def embedding_gradients(
        self, ids: Sequence[int], positions: Sequence[int], *, context: RewardContext | None = None
    ) -> tuple[float, torch.Tensor]:
        """Reward of policy ``ids`` and dr/de at policy ``positions`` [len(positions), hidden]; a position
        the judge does not see (prompt, trailing end-of-turn) has a zero gradient."""
        ids = list(ids)
        start = self.response_start(ids, context)
        prefix = self.prefix_ids(context.prompt_text if context is not None else "")
        response = self.visible(ids[start:])
        judge = [*prefix, *response, *self.tail_ids]
        with torch.no_grad():
            embeds = self.embed(judge)
        embeds.requires_grad_(True)
        with torch.enable_grad():
            out = self._model(inputs_embeds=embeds, logits_to_keep=1)
            reward = self.answer_margin(out.logits[0, -1])
            (grad,) = torch.autograd.grad(reward, embeds)
        rows = torch.zeros(len(positions), embeds.shape[-1], dtype=torch.float32, device=self.device)
        for i, p in enumerate(positions):
            if start <= p < start + len(response):
                rows[i] = grad[0, len(prefix) + p - start].float()
        return float(reward.detach()), rows


class _JudgeSession(CausalPrefixSession):
    """Translates policy sequences into judge inputs; the shared machinery caches ``head + prompt + middle +
    accepted response`` and feeds ``segment + tail`` (the tail is the candidate's last part, so it is
    rolled back with it)."""

    def __init__(self, rm: LMJudgeReward, context: RewardContext | None):
        super().__init__(name=rm.name, model=rm.model, embed=rm.embed, use_prefix_cache=rm.use_prefix_cache)
        self.rm = rm
        self.context = context
        self.base = rm.prefix_ids(context.prompt_text if context is not None else "")

    def _call(self, embeds: torch.Tensor, cache: Any, past: int, **extra: Any) -> Any:
        # Only the answer's logits are read: never [length x vocab].
        return self._call_model(embeds, cache, past, logits_to_keep=1, **extra)

    def _reward(self, output: Any, ids: Sequence[int], start: int) -> torch.Tensor:
        return self.rm.answer_margin(output.logits[0, -1]).reshape(1)

    def score_segment(
        self, prefix_ids: Sequence[int], segment_ids: Sequence[int], grad_position: int | None
    ) -> SegmentScore:
        if not segment_ids:
            raise ValueError("score_segment: empty segment")
        full = [*prefix_ids, *segment_ids]
        start = self.rm.response_start(full, self.context)
        response = self.rm.visible(full[start:])
        # The segment's visible part, in judge coordinates; prompt tokens and a trailing end-of-turn are not
        # in the judge's input.
        cut = min(max(start, len(prefix_ids)) - start, len(response))
        judge_prefix = [*self.base, *response[:cut]]
        judge_segment = response[cut:]
        at: int | None = None
        if grad_position is not None:
            at = len(prefix_ids) + grad_position - start - cut
            if not 0 <= at < len(judge_segment):
                at = None
        score = super().score_segment(judge_prefix, [*judge_segment, *self.rm.tail_ids], at)
        if grad_position is not None and at is None and math.isfinite(score.reward):
            # The judge never sees that token (a trailing end-of-turn): its reward does not depend on it.
            hidden = self.rm._embedding.weight.shape[1]
            return SegmentScore(reward=score.reward, gradient=torch.zeros(hidden, device=self.rm.device))
        return score

    def score_sequence(self, ids: Sequence[int]) -> float:
        ids = list(ids)
        if not ids:
            raise ValueError("score_sequence: empty sequence")
        # The response is usually the accepted prefix already cached: only the tail is fed.
        response = self.rm.visible(ids[self.rm.response_start(ids, self.context) :])
        return super().score_segment([*self.base, *response], self.rm.tail_ids, None).reward

    def score_batch(self, sequences: Sequence[Sequence[int]]) -> list[float]:
        rows = [list(s) for s in sequences]
        if not rows:
            return []
        if any(not r for r in rows):
            raise ValueError("score_many: every sequence needs at least one token")
        judge = [self.rm.judge_ids(r, self.context) for r in rows]
        if not self.use_prefix_cache:
            self.calls += 1
            self.tokens_processed += sum(len(j) for j in judge)
            return self.rm.score_judge_inputs(judge)
        # The variants of one candidate share the judge prefix and most of the response: cache the common
        # part once, then feed every row's rest in one batch over that cache.
        common = min(len(j) for j in judge) - 1
        for j in judge[1:]:
            common = min(common, common_prefix_length(judge[0], j))
        self._sync_prefix(judge[0][:common])
        rests = [j[common:] for j in judge]
        width = max(len(r) for r in rests)
        batch = len(rests)
        ids = torch.tensor([r + [self.rm.pad_id] * (width - len(r)) for r in rests], device=self.rm.device)
        live = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rests], device=self.rm.device)
        mask = torch.cat([torch.ones(batch, common, dtype=torch.long, device=live.device), live], dim=1)
        positions = (common + torch.arange(width, device=live.device))[None].expand(batch, -1)
        last = sorted({len(r) - 1 for r in rests})
        kwargs: dict[str, Any] = {
            "input_ids": ids,
            "attention_mask": mask,
            "position_ids": positions,
            "use_cache": True,
            "logits_to_keep": torch.tensor(last, device=live.device),
        }
        if self.cache is not None and common:
            kwargs.update(cache_kwargs(self.model, self.cache))
        saved = _broadcast_cache(self.cache, batch) if self.cache is not None and common else None
        self.calls += 1
        self.tokens_processed += sum(len(r) for r in rests)
        try:
            out = self.rm._model(**kwargs)
        finally:
            if saved is not None:
                _restore_cache(self.cache, saved)
        column = {pos: i for i, pos in enumerate(last)}
        pick = torch.tensor([column[len(r) - 1] for r in rests], device=out.logits.device)
        logits = out.logits[torch.arange(batch, device=pick.device), pick]
        return [float(x) for x in self.rm.answer_margin(logits).cpu()]


def _broadcast_cache(cache: Any, batch: int) -> list[tuple[Any, Any, Any]]:
    """View the one-row cache as ``batch`` rows (no copy: the forward concatenates onto it). Returns what
    :func:`_restore_cache` needs to put the one-row cache back."""
    saved = []
    for layer in list[Any](cache.layers):
        saved.append((layer, layer.keys, layer.values))
        if layer.keys is not None and layer.keys.numel():
            layer.keys = layer.keys.expand(batch, -1, -1, -1)
            layer.values = layer.values.expand(batch, -1, -1, -1)
    return saved


def _restore_cache(cache: Any, saved: list[tuple[Any, Any, Any]]) -> None:
    for layer, keys, values in saved:
        layer.keys, layer.values = keys, values
