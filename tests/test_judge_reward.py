"""The LM-as-judge reward: template layout, the prefix-cached session against full passes, the gradient,
the policy judging itself, and the decoder end to end."""

from __future__ import annotations

import copy
import math
from typing import Any

import pytest
import torch
from transformers import LlamaForCausalLM

from conftest import (
    EOS,
    FLOAT32_GRADIENT_RTOL,
    TEST_DEVICE,
    TinyTokenizer,
    central_difference,
    float64_copy,
    fp32_only,
    place,
    tiny_llama,
    tiny_llama_config,
)
from ggro import GGROConfig, GGRODecoder, RewardError
from ggro.rewards.base import RewardContext
from ggro.rewards.judge import LMJudgeReward

# The judge reads "t10 t11 <prompt> t12 <response> t13 t14" and answers t7 (yes) or t8 (no).
TEMPLATE = "t10 t11 {prompt} t12 {response} t13 t14"
PROMPT = [5, 17, 33, 9]
TOK = TinyTokenizer()
CONTEXT = RewardContext(tuple(PROMPT), TOK.decode(PROMPT, skip_special_tokens=True), TOK)


def _judge(model: torch.nn.Module | None = None, **kwargs: Any) -> LMJudgeReward:
    settings: dict[str, Any] = {"template": TEMPLATE, "answers": ("t7", "t8"), "name": "tiny-judge", **kwargs}
    return LMJudgeReward(model if model is not None else tiny_llama(seed=4), TOK, **settings)


def _reference(judge: LMJudgeReward, judge_ids: list[int]) -> float:
    """The definition, the slow way: one plain forward over the judge's input, log-softmax at the end."""
    with torch.no_grad():
        logits = judge.model(input_ids=torch.tensor([judge_ids], device=TEST_DEVICE)).logits[0, -1].float()
    logp = torch.log_softmax(logits, -1)
    return float(logp[7] - logp[8])


def test_template_layout_and_answers() -> None:
    judge = _judge()
    assert (judge.head_ids, judge.middle_ids, judge.tail_ids) == ([10, 11], [12], [13, 14])
    assert (judge.yes_id, judge.no_id) == (7, 8)
    # The prompt is the context's text; the response is what follows the prompt ids, without end-of-turn.
    assert judge.judge_ids([*PROMPT, 40, 41, EOS], CONTEXT) == [10, 11, *PROMPT, 12, 40, 41, 13, 14]
    # Without a context (or when the ids do not start with the prompt) everything is response.
    assert judge.judge_ids([*PROMPT, 40]) == [10, 11, 12, *PROMPT, 40, 13, 14]
    assert judge.judge_ids([6, 40], CONTEXT) == [10, 11, *PROMPT, 12, 6, 40, 13, 14]
    same = _judge(judge.model, template=None, template_ids=([10, 11], [12], [13, 14]), answers=(7, 8))
    ids = [*PROMPT, 40, 41]
    assert same.score([ids], context=CONTEXT) == judge.score([ids], context=CONTEXT)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"template": "t10 {prompt} t12 t13"}, r"\{response\} exactly once"),
        ({"template": "t10 {response} t12 {prompt} t13"}, r"\{prompt\} must come before"),
        ({"template": "t10 {prompt} t12 {response}"}, "nothing follows"),
        ({"answers": ("t7 t9", "t8")}, "yes answer 't7 t9' is not a single token"),
        ({"answers": ("t7", 7)}, "same token"),
        ({"answers": (7, 500)}, "outside the judge's vocabulary"),
        ({"template_ids": ([1], [2], [3])}, "not both"),
    ],
)
def test_bad_templates_and_answers_are_rejected(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _judge(**kwargs)


def test_cached_session_matches_full_passes() -> None:
    # On a float64 copy: the cached and full passes are shaped differently, and their float32 rounding depends
    # on the CPU's kernels; in float64 they agree far below the tolerances.
    judge = _judge(float64_copy(tiny_llama(seed=4)))
    session = judge.open_session(CONTEXT)
    prefix = [*PROMPT, 20, 21, 22]
    for segment, grad_at in (([30, 31, 32], 0), ([33, 34], 1), ([35, EOS], 0), ([36, 37, 38, 39], 2)):
        ids = prefix + segment
        got = session.score_segment(prefix, segment, grad_at)
        assert got.reward == pytest.approx(_reference(judge, judge.judge_ids(ids, CONTEXT)), abs=1e-5)
        reward, grads = judge.embedding_gradients(ids, [len(prefix) + grad_at], context=CONTEXT)
        assert reward == pytest.approx(got.reward, abs=1e-5)
        assert got.gradient is not None and got.gradient.shape == (32,)
        torch.testing.assert_close(got.gradient, grads[0], atol=1e-5, rtol=1e-4)
        assert got.gradient.abs().sum() > 0
    # Only segment + tail is fed per candidate: the judge's prefix stays cached.
    before = session.tokens_processed
    session.score_segment(prefix, [40, 41], None)
    assert session.tokens_processed - before == 2 + len(judge.tail_ids)
    # A different accepted prefix rolls the cache back; whole sequences and batches agree too.
    other = [*PROMPT, 20, 50]
    assert session.score_segment(other, [51], None).reward == pytest.approx(
        _reference(judge, judge.judge_ids([*other, 51], CONTEXT)), abs=1e-5
    )
    assert session.score_sequence([*other, 51, EOS]) == pytest.approx(
        _reference(judge, judge.judge_ids([*other, 51], CONTEXT)), abs=1e-5
    )
    variants = [[*other, v, 60, 61] for v in (52, 53, 54)] + [[*other, 55], [*PROMPT, 70]]
    expected = [_reference(judge, judge.judge_ids(v, CONTEXT)) for v in variants]
    assert session.score_many(variants) == pytest.approx(expected, abs=1e-5)
    assert judge.score(variants, context=CONTEXT) == pytest.approx(expected, abs=1e-5)
    # ... and the cache is still right after the batched pass.
    assert session.score_segment(other, [51], None).reward == pytest.approx(
        _reference(judge, judge.judge_ids([*other, 51], CONTEXT)), abs=1e-5
    )


@fp32_only("the prediction's error bound (FLOAT32_GRADIENT_RTOL) is for float32 models")
def test_gradient_is_the_first_order_change_of_the_reward() -> None:
    judge = _judge()
    ids = [*PROMPT, 20, 21, 22, 23]
    position = len(PROMPT) + 2  # the response token 22
    reward, grads = judge.embedding_gradients(ids, [position], context=CONTEXT)
    gradient = grads[0]
    judge_ids = judge.judge_ids(ids, CONTEXT)
    at = len(judge.prefix_ids(CONTEXT.prompt_text)) + 2
    assert judge_ids[at] == 22
    base = judge.embed(judge_ids).detach()
    # The margin's slope is measured on a float64 copy of the judge: a float32 central difference at eps=1e-3
    # carries ~1e-4 of rounding noise that depends on the CPU's kernels.
    model64 = float64_copy(judge.model)

    def margin(embeds: torch.Tensor, model: torch.nn.Module = judge.model) -> float:
        with torch.no_grad():
            logits = model(inputs_embeds=embeds).logits[0, -1].double()
        return float(logits[7] - logits[8])

    assert margin(base) == pytest.approx(reward, abs=1e-5)
    torch.manual_seed(0)
    for direction in (gradient / gradient.norm(), torch.randn(32, device=gradient.device)):

        def moved(t: float, direction: torch.Tensor = direction) -> float:
            embeds = base.double().clone()
            embeds[0, at] += t * direction.double()
            return margin(embeds, model64)

        slope, fd_error = central_difference(moved)
        scale = float(direction.norm() * gradient.norm())
        assert abs(slope - float(direction @ gradient)) <= fd_error + FLOAT32_GRADIENT_RTOL * scale
    # candidate_scores is E[v] . gradient for each token.
    tokens = torch.tensor([22, 40, 41])
    expected = judge.model.get_input_embeddings().weight[tokens.to(TEST_DEVICE)].float() @ gradient
    torch.testing.assert_close(judge.candidate_scores(gradient, tokens), expected)


def test_tokens_the_judge_does_not_see_have_zero_gradient() -> None:
    judge = _judge()
    ids = [*PROMPT, 20, 21, EOS]
    _, grads = judge.embedding_gradients(ids, [1, len(PROMPT), len(ids) - 1], context=CONTEXT)
    assert grads[0].abs().sum() == 0 and grads[2].abs().sum() == 0  # a prompt token, the end-of-turn
    assert grads[1].abs().sum() > 0
    got = judge.open_session(CONTEXT).score_segment([*PROMPT, 20, 21], [EOS], 0)
    assert got.gradient is not None and got.gradient.abs().sum() == 0
    assert got.reward == pytest.approx(judge.score([[*PROMPT, 20, 21]], context=CONTEXT)[0], abs=1e-4)


def test_the_prompt_text_is_judged() -> None:
    judge = _judge()
    ids = [*PROMPT, 20, 21]
    other = RewardContext(tuple(PROMPT), " t60 t61", TOK)
    assert judge.score([ids], context=CONTEXT) != judge.score([ids], context=other)


def test_decoder_steers_with_the_judge() -> None:
    judge = _judge()
    decoder = GGRODecoder(tiny_llama(), TOK, judge, GGROConfig(entropy_threshold=0.5, max_new_tokens=16))
    (result,) = decoder.generate_ids([PROMPT])
    assert result.segments and len(result.token_ids) <= 16
    assert any(len(s.candidate_rewards) > 1 for s in result.segments)
    assert result.final_reward is not None and math.isfinite(result.final_reward)
    full = PROMPT + result.token_ids
    assert result.final_reward == pytest.approx(judge.score([full], context=CONTEXT)[0], abs=1e-3)
    # The judge's per-candidate passes cover segment + tail, never the prompt again.
    assert result.usage.reward_tokens_processed < result.usage.reward_calls * len(judge.judge_ids(full, CONTEXT))


def test_policy_judges_itself_without_disturbing_decoding() -> None:
    policy = tiny_llama()
    judge = _judge(policy)
    cfg = GGROConfig(entropy_threshold=0.5, max_new_tokens=16)
    shared = GGRODecoder(policy, TOK, judge, cfg)
    assert judge.model is shared.policy and shared.reward is judge
    (result,) = shared.generate_ids([PROMPT])
    assert result.final_reward is not None and math.isfinite(result.final_reward)
    assert any(len(s.candidate_rewards) > 1 for s in result.segments)
    # The same run with a separate copy of the weights: sharing the model object changes nothing.
    twin = copy.deepcopy(policy)
    (separate,) = GGRODecoder(policy, TOK, _judge(twin), cfg).generate_ids([PROMPT])
    assert separate.token_ids == result.token_ids
    assert separate.final_reward == pytest.approx(result.final_reward, abs=1e-5)


def test_judge_with_a_smaller_vocabulary_is_refused() -> None:
    torch.manual_seed(0)
    cfg = tiny_llama_config()
    cfg.vocab_size = 64
    small = place(LlamaForCausalLM(cfg).eval())
    with pytest.raises(ValueError, match="the judge's embedding has 64 rows"):
        GGRODecoder(tiny_llama(), TOK, _judge(small), GGROConfig())


def test_a_failing_judge_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    judge = _judge()

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("out of memory")

    monkeypatch.setattr(judge.model, "forward", broken)
    with pytest.raises(RewardError, match="reward model 'tiny-judge' failed: out of memory"):
        judge.score([[*PROMPT, 20]])
    with pytest.raises(RewardError, match="'tiny-judge' failed: out of memory"):
        judge.open_session(CONTEXT).score_segment([*PROMPT, 20], [21], 0)
    with pytest.raises(RewardError, match="cannot tokenise"):
        _judge().open_session(RewardContext(tuple(PROMPT), "not tiny tokens", TOK))


@pytest.mark.slow
def test_smollm2_judges_itself() -> None:
    """The real policy as its own judge, with its chat template. SmolLM2-135M is a weak judge: it prefers
    refusal-styled text whatever the question (asked "is it harmful?", it still favours the refusal), so
    only the mechanics are checked here, not its verdicts."""
    from ggro.assets import load_default_policy

    policy, tokenizer = load_default_policy()
    judge = LMJudgeReward(policy, tokenizer)
    assert (judge.yes_id, judge.no_id) == (
        tokenizer("Yes", add_special_tokens=False)["input_ids"][0],
        tokenizer("No", add_special_tokens=False)["input_ids"][0],
    )
    assert judge.head_ids[0] == tokenizer.convert_tokens_to_ids("<|im_start|>")  # the chat template is used
    question = "How do I pick a lock?"
    harmful = "Wait until your neighbour is away, rake the pins of their front door lock and take their jewellery."
    harmless = "If you are locked out of your own home, call a licensed locksmith or your landlord."
    scores = judge.score_texts([question] * 2, [harmful, harmless])
    assert all(math.isfinite(s) for s in scores)

    prompt_ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], add_generation_prompt=True, tokenize=True
    )
    prompt_ids = list(prompt_ids["input_ids"] if isinstance(prompt_ids, dict) else prompt_ids)
    context = RewardContext(tuple(prompt_ids), question, tokenizer)
    response = tokenizer(harmless, add_special_tokens=False)["input_ids"]
    session = judge.open_session(context)
    got = session.score_segment(prompt_ids + response[:8], response[8:], 1)
    hidden = policy.config.hidden_size
    assert got.gradient is not None and got.gradient.shape == (hidden,) and torch.isfinite(got.gradient).all()
    assert got.reward == pytest.approx(scores[1], abs=1e-3)
    reward, grads = judge.embedding_gradients(prompt_ids + response, [len(prompt_ids) + 9], context=context)
    assert reward == pytest.approx(got.reward, abs=1e-3)
    torch.testing.assert_close(got.gradient, grads[0], atol=1e-4, rtol=1e-3)
    top = judge.candidate_scores(got.gradient, torch.arange(10))
    assert top.shape == (10,) and torch.isfinite(top).all()
