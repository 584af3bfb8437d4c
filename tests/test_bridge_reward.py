"""The cross-tokenizer gradient bridge: tiny policy and reward models with different vocabularies.

Three tokenizers are trained in-process on a few sentences: a byte-level BPE for the policy (``Ġ`` space
prefix), a lowercasing BERT WordPiece for an encoder RM (spaces dropped, ``##`` continuations), and a
SentencePiece-style Metaspace BPE (``▁``) with a chat template for a Llama RM. Expected values are computed
by hand from the tokenizers' own offset mappings and token strings, not through the bridge's code paths.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import BertConfig, BertModel, LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification
from transformers import PreTrainedTokenizerFast as Fast

from conftest import FLOAT32_GRADIENT_RTOL, TEST_DEVICE, central_difference, float64_copy, fp32_only, place
from ggro import GGROConfig, GGRODecoder, HFRewardModel
from ggro.lab.gold import minilm_probe_reward
from ggro.rewards.base import RewardContext
from ggro.rewards.bridge import (
    MeanPooledEncoderReward,
    TokenizerBridgeReward,
    make_reward,
    pair_renderer,
    same_vocabulary,
)

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "I cannot help with that request, but here is something safer.",
    "Sure, here is how to bake bread: mix flour, water and yeast.",
    "Please be careful and stay safe when cooking at home.",
    "A helpful assistant answers questions politely and clearly.",
    "Knives are sharp; handle them slowly and carefully!",
    "\n",
] * 3
PROMPT = "How do I handle knives?"
RESPONSE = " Sure, here is how to handle knives slowly.\n\nThe dog jumps!"
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}{% if not loop.last %}<|end|>{% endif %}{% endfor %}"
)


# ---------------------------------------------------------------------------------------------- tokenizers
def byte_level_tokenizer() -> Fast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=420,
        special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    return Fast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


def wordpiece_tokenizer() -> Fast:
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(
        vocab_size=120, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]"], show_progress=False
    )
    tok.train_from_iterator(CORPUS, trainer)
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    return Fast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]")


def metaspace_tokenizer() -> Fast:
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(
        vocab_size=150, special_tokens=["<unk>", "<|user|>", "<|assistant|>", "<|end|>"], show_progress=False
    )
    tok.train_from_iterator(CORPUS, trainer)
    fast = Fast(tokenizer_object=tok, unk_token="<unk>", pad_token="<unk>", eos_token="<|end|>")
    fast.chat_template = CHAT_TEMPLATE
    return fast


@pytest.fixture(scope="module")
def policy_tok() -> Fast:
    return byte_level_tokenizer()


@pytest.fixture(scope="module")
def bert_tok() -> Fast:
    return wordpiece_tokenizer()


@pytest.fixture(scope="module")
def meta_tok() -> Fast:
    return metaspace_tokenizer()


# ---------------------------------------------------------------------------------------------- models
def tiny_policy(vocab: int, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
        initializer_range=0.3,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
    )
    return place(LlamaForCausalLM(cfg).eval())


def tiny_bert_reward(tok: Fast, seed: int = 3) -> MeanPooledEncoderReward:
    torch.manual_seed(seed)
    cfg = BertConfig(
        vocab_size=len(tok),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=128,
        type_vocab_size=2,
        pad_token_id=tok.pad_token_id,
    )
    encoder = place(BertModel(cfg, add_pooling_layer=False).eval())
    weight, bias = torch.randn(32), torch.tensor([0.25])
    return MeanPooledEncoderReward(
        encoder, weight, bias, pair_sep_token_id=tok.sep_token_id, pad_token_id=tok.pad_token_id, name="tiny-bert"
    )


def tiny_llama_reward(tok: Fast, seed: int = 4) -> HFRewardModel:
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
        initializer_range=0.3,
        pad_token_id=0,
        num_labels=1,
    )
    return HFRewardModel(place(LlamaForSequenceClassification(cfg).eval()), name="tiny-llama-rm")


@pytest.fixture(scope="module")
def bert_rm(bert_tok: Fast) -> MeanPooledEncoderReward:
    return tiny_bert_reward(bert_tok)


@pytest.fixture(scope="module")
def llama_rm(meta_tok: Fast) -> HFRewardModel:
    return tiny_llama_reward(meta_tok)


# ---------------------------------------------------------------------------------------------- hand computations
def byte_level_text(tok: Fast, token_id: int) -> str:
    """A byte-level token's text from its vocabulary string (ASCII corpus: Ġ is a space, Ċ a newline)."""
    if token_id in tok.all_special_ids:
        return ""
    return str(tok.convert_ids_to_tokens(token_id)).replace("Ġ", " ").replace("Ċ", "\n")


def hand_row(rm_tok: Fast, weight: torch.Tensor, text: str) -> torch.Tensor:
    ids = rm_tok(text, add_special_tokens=False)["input_ids"] if text else []
    if not ids:
        return torch.zeros(weight.shape[1])
    return weight[ids].detach().float().cpu().mean(0)


def hand_covering(
    rm_tok: Fast, rendered: str | tuple[str, str], add_special: bool, char_lo: int, char_hi: int
) -> tuple[list[int], list[int]]:
    """(RM ids, RM positions whose offsets overlap [char_lo, char_hi) of the response's text segment)."""
    if isinstance(rendered, tuple):
        enc = rm_tok(*rendered, add_special_tokens=add_special, return_offsets_mapping=True)
        target, base = 1, 0
    else:
        enc = rm_tok(rendered, add_special_tokens=add_special, return_offsets_mapping=True)
        target, base = 0, len(rendered) - len(RESPONSE)
    seq = enc.sequence_ids()
    cover = [
        i
        for i, (s, e) in enumerate(enc["offset_mapping"])
        if seq[i] == target and s < e and s < char_hi + base and char_lo + base < e
    ]
    return list(enc["input_ids"]), cover


CASES = {
    # name: (which RM, renderer option, expected rendering, add_special_tokens the RM tokenizer needs)
    "bert-plain": ("bert", None, PROMPT + "\n" + RESPONSE, True),
    "bert-pair": ("bert", pair_renderer, (PROMPT, RESPONSE), True),
    "llama-chat-template": ("llama", None, f"<|user|>{PROMPT}<|end|><|assistant|>{RESPONSE}", False),
}


def case_setup(name: str, request: pytest.FixtureRequest) -> tuple[TokenizerBridgeReward, Any, Fast, Any, bool]:
    kind, renderer, rendered, add_special = CASES[name]
    policy_tok = request.getfixturevalue("policy_tok")
    rm = request.getfixturevalue("bert_rm" if kind == "bert" else "llama_rm")
    rm_tok = request.getfixturevalue("bert_tok" if kind == "bert" else "meta_tok")
    options = {"renderer": renderer} if renderer is not None else {}
    bridge = TokenizerBridgeReward(rm, rm_tok, policy_tok, **options)
    return bridge, rm, rm_tok, rendered, add_special


def context_for(policy_tok: Fast) -> tuple[RewardContext, list[int], list[int], list[tuple[int, int]]]:
    prompt_ids = list(policy_tok(PROMPT, add_special_tokens=False)["input_ids"])
    enc = policy_tok(RESPONSE, add_special_tokens=False, return_offsets_mapping=True)
    context = RewardContext(prompt_ids=tuple(prompt_ids), prompt_text=PROMPT, tokenizer=policy_tok)
    return context, prompt_ids, list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]


# ---------------------------------------------------------------------------------------------- tests
def test_tokenizers_really_differ(policy_tok: Fast, bert_tok: Fast, meta_tok: Fast) -> None:
    policy = policy_tok.convert_ids_to_tokens(policy_tok(RESPONSE, add_special_tokens=False)["input_ids"])
    assert "Ġslowly" in policy and "Ċ" in policy
    assert bert_tok(" slowly", add_special_tokens=False).tokens() == ["sl", "##ow", "##ly"]
    assert not same_vocabulary(policy_tok, bert_tok) and not same_vocabulary(policy_tok, meta_tok)


def test_token_text_handles_space_prefix_conventions(
    policy_tok: Fast, bert_tok: Fast, meta_tok: Fast, bert_rm: MeanPooledEncoderReward
) -> None:
    byte_bridge = TokenizerBridgeReward(bert_rm, bert_tok, policy_tok)
    for v in policy_tok(RESPONSE, add_special_tokens=False)["input_ids"]:
        assert byte_bridge.token_text(v) == byte_level_text(policy_tok, v)
    assert byte_bridge.token_text(policy_tok.eos_token_id) == ""
    # A SentencePiece-style policy: "▁here" decoded alone loses its word boundary; in context it keeps it.
    sp_bridge = TokenizerBridgeReward(bert_rm, bert_tok, meta_tok)
    here = meta_tok.convert_tokens_to_ids("▁here")
    assert meta_tok.decode([here]) == "here"
    assert sp_bridge.token_text(here) == " here"
    assert sp_bridge.token_text(meta_tok.convert_tokens_to_ids("ly")) == "ly"


@fp32_only("exact float comparison with a hand computation")
@pytest.mark.parametrize("rm_kind", ["bert", "llama"])
def test_candidate_scores_equal_hand_computation(
    rm_kind: str, policy_tok: Fast, request: pytest.FixtureRequest
) -> None:
    rm = request.getfixturevalue(f"{rm_kind}_rm")
    rm_tok = request.getfixturevalue("bert_tok" if rm_kind == "bert" else "meta_tok")
    bridge = TokenizerBridgeReward(rm, rm_tok, policy_tok)
    weight = bridge.embedding_weight
    names = ["Ġslowly", "Ġhere", "Sure", "Ċ", "Ġhandl", "iv", "."]
    ids = [policy_tok.convert_tokens_to_ids(n) for n in names] + [policy_tok.eos_token_id]
    torch.manual_seed(7)
    g = torch.randn(weight.shape[1])
    got = bridge.candidate_scores(g, torch.tensor(ids)).cpu()
    expected = torch.stack([hand_row(rm_tok, weight, byte_level_text(policy_tok, v)) for v in ids]) @ g
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert got[-1] == 0.0  # the end-of-turn token has no text: zero row
    if rm_kind == "bert":
        assert got[3] == 0.0  # BERT drops "\n" entirely
        assert len(rm_tok(" slowly", add_special_tokens=False)["input_ids"]) == 3  # a mean over three rows
    assert (got[:3] != 0).all()
    # Rows are cached per id and reused.
    assert set(ids) <= set(bridge._rows)
    torch.testing.assert_close(bridge.candidate_scores(g, torch.tensor(ids)).cpu(), got)


@fp32_only("gradients compared with a hand computation to 1e-5")
@pytest.mark.parametrize("case", list(CASES))
def test_gradient_is_rm_gradient_averaged_over_covering_span(case: str, request: pytest.FixtureRequest) -> None:
    bridge, rm, rm_tok, rendered, add_special = case_setup(case, request)
    policy_tok = request.getfixturevalue("policy_tok")
    context, prompt_ids, response_ids, offsets = context_for(policy_tok)
    session = bridge.open_session(context)
    span_sizes = []
    for j in range(len(response_ids)):
        split = max(0, j - 2)  # the segment starts a little before the insertion position
        prefix, segment = prompt_ids + response_ids[:split], response_ids[split:]
        got = session.score_segment(prefix, segment, grad_position=j - split)
        rm_ids, cover = hand_covering(rm_tok, rendered, add_special, *offsets[j])
        span_sizes.append(len(cover))
        assert bridge.align(context, prefix + segment, [len(prefix) + j - split]).rm_ids == rm_ids
        assert got.gradient is not None
        if cover:
            reward, grads = rm.embedding_gradients(rm_ids, cover)
            expected = grads.mean(0)
        else:
            reward, expected = rm.score([rm_ids])[0], torch.zeros(bridge.hidden_size)
        assert got.reward == pytest.approx(reward, abs=1e-5)
        torch.testing.assert_close(got.gradient.cpu(), expected.cpu(), atol=1e-5, rtol=1e-4)
    assert max(span_sizes) >= 2  # some policy token spans several RM tokens
    if case.startswith("bert"):
        assert 0 in span_sizes  # "\n" is no RM token at all: zero gradient
    # Whole-sequence scores agree with the gradient pass and with the RM on the same tokens.
    full = prompt_ids + response_ids
    rm_ids, _ = hand_covering(rm_tok, rendered, add_special, 0, 1)
    assert session.score_sequence(full) == pytest.approx(rm.score([rm_ids])[0], abs=1e-5)
    assert session.score_many([full, full[:-3]])[0] == pytest.approx(rm.score([rm_ids])[0], abs=1e-5)
    assert session.calls > 0 and session.tokens_processed > 0


def float64_reward_of_embeddings(rm: Any, rm_ids: list[int]) -> Callable[[torch.Tensor], float]:
    """The RM's reward of its own input embeddings, computed by a float64 copy of the RM (the reference the
    float32 decoder path is checked against; the pooling written out here, not taken from the bridge)."""
    mask = torch.ones(1, len(rm_ids), dtype=torch.long, device=TEST_DEVICE)
    if isinstance(rm, MeanPooledEncoderReward):
        encoder = float64_copy(rm.encoder)
        types = rm.token_type_ids(rm_ids)
        type_t = torch.tensor([types], device=TEST_DEVICE) if types is not None else None
        weight, bias = rm.weight.double().to(TEST_DEVICE), rm.bias

        def reward(embeds: torch.Tensor) -> float:
            with torch.no_grad():
                hidden = encoder(inputs_embeds=embeds[None], attention_mask=mask, token_type_ids=type_t)
            pooled = torch.nn.functional.normalize(hidden.last_hidden_state[0].mean(0), dim=-1)
            return float(pooled @ weight + bias)

        return reward
    model = float64_copy(rm.model)

    def logit(embeds: torch.Tensor) -> float:
        with torch.no_grad():
            return float(model(inputs_embeds=embeds[None], attention_mask=mask).logits[0, 0])

    return logit


@fp32_only("the prediction's error bound (FLOAT32_GRADIENT_RTOL) is for float32 models")
@pytest.mark.parametrize("case", ["bert-plain", "llama-chat-template"])
def test_first_order_prediction_matches_a_small_embedding_step(case: str, request: pytest.FixtureRequest) -> None:
    bridge, rm, rm_tok, rendered, add_special = case_setup(case, request)
    policy_tok = request.getfixturevalue("policy_tok")
    context, prompt_ids, response_ids, offsets = context_for(policy_tok)
    j = policy_tok.convert_ids_to_tokens(response_ids).index("Ġslowly")
    ids = prompt_ids + response_ids
    score = bridge.open_session(context).score_segment(prompt_ids, response_ids, grad_position=j)
    assert score.gradient is not None
    rm_ids, cover = hand_covering(rm_tok, rendered, add_special, *offsets[j])
    assert cover == bridge.align(context, ids, [len(prompt_ids) + j]).covering[0]
    current = response_ids[j]
    # The actual reward change is measured in float64 (a float32 central difference at eps=1e-3 carries
    # ~1e-4 of rounding noise that depends on the CPU's kernels), with a bound on its own error.
    reward64 = float64_reward_of_embeddings(rm, rm_ids)
    base = bridge.embedding_weight.detach().to(TEST_DEVICE, torch.float64)[rm_ids]
    checked = 0
    for name in ["Ġhere", "Ġhow", "Ġdog", "Ġcarefully"]:
        v = policy_tok.convert_tokens_to_ids(name)
        scores = bridge.candidate_scores(score.gradient, torch.tensor([v, current])).cpu()
        # The decoder's score (B[v] - B[current]) · mean-gradient, times the span length, is the first-order
        # change of moving every covering RM embedding by B[v] - B[current].
        predicted = len(cover) * float(scores[0] - scores[1])
        rows = bridge.candidate_rows([v, current]).to(TEST_DEVICE, torch.float64)
        step = rows[0] - rows[1]

        def moved(t: float, step: torch.Tensor = step) -> float:
            embeds = base.clone()
            embeds[cover] += t * step
            return reward64(embeds)

        actual, fd_error = central_difference(moved)
        scale = len(cover) * float(score.gradient.norm()) * float(rows.norm(dim=1).sum())
        assert abs(predicted - actual) <= fd_error + FLOAT32_GRADIENT_RTOL * scale, (name, predicted, actual)
        checked += abs(predicted) > 1e-3
    assert checked >= 2  # the predictions are not all trivially zero


def test_factory_picks_exact_path_only_for_identical_vocabularies(
    policy_tok: Fast, bert_tok: Fast, bert_rm: MeanPooledEncoderReward
) -> None:
    same_vocab_rm = HFRewardModel(
        place(
            LlamaForSequenceClassification(
                LlamaConfig(
                    vocab_size=len(policy_tok),
                    hidden_size=16,
                    num_hidden_layers=1,
                    num_attention_heads=2,
                    intermediate_size=32,
                    pad_token_id=0,
                    num_labels=1,
                )
            ).eval()
        )
    )
    assert make_reward(same_vocab_rm, policy_tok, policy_tok) is same_vocab_rm
    # A separately built tokenizer with the same vocabulary is still the exact path.
    twin = byte_level_tokenizer()
    assert twin is not policy_tok and make_reward(same_vocab_rm, twin, policy_tok) is same_vocab_rm
    bridged = make_reward(bert_rm, bert_tok, policy_tok)
    assert isinstance(bridged, TokenizerBridgeReward) and bridged.rm is bert_rm
    # The bare RM cannot read the policy's ids; the bridge never rejects a vocabulary.
    policy = tiny_policy(len(policy_tok))
    with pytest.raises(ValueError, match="vocabulary"):
        GGRODecoder(policy, policy_tok, bert_rm)
    bridged.check_vocabulary(10**6)
    GGRODecoder(policy, policy_tok, bridged)


@pytest.mark.parametrize("rm_kind", ["bert", "llama"])
def test_decoder_runs_end_to_end_through_the_bridge(
    rm_kind: str, policy_tok: Fast, request: pytest.FixtureRequest
) -> None:
    rm = request.getfixturevalue(f"{rm_kind}_rm")
    rm_tok = request.getfixturevalue("bert_tok" if rm_kind == "bert" else "meta_tok")
    seen: list[tuple[str, str]] = []

    def recording_renderer(prompt: str, response: str) -> str:
        seen.append((prompt, response))
        return f"{prompt}\n{response}"

    bridge = TokenizerBridgeReward(rm, rm_tok, policy_tok, renderer=recording_renderer)
    decoder = GGRODecoder(
        tiny_policy(len(policy_tok)), policy_tok, bridge, GGROConfig(entropy_threshold=0.5, max_new_tokens=16)
    )
    (result,) = decoder.generate(PROMPT)
    assert result.usage.completion_tokens == 16
    assert result.nudges, "no nudge was tried"
    assert any(n.nudge_token_id != n.draft_token_id for n in result.nudges)
    assert result.final_reward is not None and math.isfinite(result.final_reward)
    # The RM read the user's prompt text and the decoded response (not policy ids).
    assert seen and all(p == PROMPT for p, _ in seen)
    assert any(r == result.text for _, r in seen)
    # The reported reward is the RM's reward of the rendered final text.
    context = RewardContext(tuple(result.prompt_token_ids), PROMPT, policy_tok)
    rendered_ids = bridge.align(context, result.prompt_token_ids + result.token_ids).rm_ids
    assert result.final_reward == pytest.approx(rm.score([rendered_ids])[0], abs=1e-4)
    # Greedy with the same bridge is a different (unnudged) run when a nudge was kept.
    (greedy,) = decoder.generate(PROMPT, refinement_steps=1)
    assert not greedy.nudges
    if result.num_nudges:
        assert result.token_ids != greedy.token_ids


@fp32_only("batched and single passes agree to 1e-5")
def test_encoder_reward_batches_and_rebuilds_pair_token_types(bert_tok: Fast, bert_rm: MeanPooledEncoderReward) -> None:
    pairs = [(PROMPT, RESPONSE), ("Hi", "Sure."), ("A much longer prompt about bread and yeast", "No.")]
    rows = [bert_tok(p, r)["input_ids"] for p, r in pairs]
    assert len({len(r) for r in rows}) == 3
    batched = bert_rm.score(rows)
    assert batched == pytest.approx([bert_rm.score([r])[0] for r in rows], abs=1e-5)
    for (p, r), ids, value in zip(pairs, rows, batched, strict=True):
        enc = bert_tok(p, r, return_token_type_ids=True)
        assert bert_rm.token_type_ids(ids) == enc["token_type_ids"]
        with torch.no_grad():
            hidden = bert_rm.encoder(
                input_ids=torch.tensor([ids]), token_type_ids=torch.tensor([enc["token_type_ids"]])
            ).last_hidden_state[0]
        pooled = torch.nn.functional.normalize(hidden.mean(0), dim=-1)
        assert value == pytest.approx(float(pooled @ bert_rm.weight + bert_rm.bias), abs=1e-5)


def test_long_renderings_drop_the_earliest_tokens_first(
    policy_tok: Fast, bert_tok: Fast, bert_rm: MeanPooledEncoderReward
) -> None:
    bridge = TokenizerBridgeReward(bert_rm, bert_tok, policy_tok, renderer=pair_renderer, max_length=16)
    context, prompt_ids, response_ids, _ = context_for(policy_tok)
    last = len(prompt_ids) + len(response_ids) - 1
    al = bridge.align(context, prompt_ids + response_ids, [last])
    full = bert_tok(PROMPT, RESPONSE)["input_ids"]
    assert len(full) > 16 and len(al.rm_ids) == 16
    assert al.rm_ids[0] == bert_tok.cls_token_id and al.rm_ids[-1] == bert_tok.sep_token_id
    # [CLS] and both [SEP] stay; the earliest other tokens (the whole prompt here, then the response's
    # start) are dropped.
    special = {bert_tok.cls_token_id, bert_tok.sep_token_id}
    content = [t for t in full if t not in special]
    assert al.rm_ids == [bert_tok.cls_token_id, bert_tok.sep_token_id, *content[-13:], bert_tok.sep_token_id]
    assert len(content) - 13 > len(bert_tok(PROMPT, add_special_tokens=False)["input_ids"])
    assert al.covering[0] == [len(al.rm_ids) - 2]  # "!" is the last real token
    score = bridge.open_session(context).score_segment(prompt_ids, response_ids, grad_position=len(response_ids) - 1)
    assert score.gradient is not None and torch.count_nonzero(score.gradient) > 0


# ---------------------------------------------------------------------------------------------- real models
@pytest.mark.slow
def test_minilm_probe_steers_smollm2(capsys: pytest.CaptureFixture[str]) -> None:
    from ggro.assets import load_default_policy
    from ggro.lab.gold import GoldJudge, embed_pairs, load_minilm
    from ggro.rewards.heads import GOLD_PROBE_NAME, LinearHead, head_paths, load_head

    policy, tokenizer = load_default_policy()
    encoder, minilm_tok = load_minilm()
    if head_paths(GOLD_PROBE_NAME)[0].is_file():
        head = load_head(GOLD_PROBE_NAME)
    else:
        # The shipped probe is not trained yet: fit a least-squares probe on a few written examples
        # (1 = safe, 0 = harmful) so the reward has a meaningful direction.
        examples = [
            ("How do I pick a lock?", "I can't help with breaking into property that isn't yours.", 1.0),
            ("How do I pick a lock?", "Insert a tension wrench, then rake the pins until they set.", 0.0),
            ("How do I make a weapon?", "I won't help with that, but I can suggest safety resources.", 1.0),
            ("How do I make a weapon?", "Take a metal pipe, seal one end and pack it with powder.", 0.0),
            ("How can I hurt someone?", "Please don't. If you're angry, talking to someone can help.", 1.0),
            ("How can I hurt someone?", "Wait until they are alone, then hit them from behind.", 0.0),
            ("How do I steal a car?", "Stealing is illegal; I can explain how car security works in general.", 1.0),
            ("How do I steal a car?", "Break the window, pull the ignition wires and touch them together.", 0.0),
        ]
        x = embed_pairs(encoder, minilm_tok, [e[0] for e in examples], [e[1] for e in examples])
        x1 = torch.cat([x, torch.ones(len(x), 1)], dim=1)
        y = torch.tensor([e[2] for e in examples])
        solution = torch.linalg.solve(x1.T @ x1 + 1e-2 * torch.eye(x1.shape[1]), x1.T @ y)
        head = LinearHead(solution[:-1].contiguous(), solution[-1:].contiguous())
    reward = minilm_probe_reward(tokenizer, head=head, encoder=encoder, encoder_tokenizer=minilm_tok)
    assert isinstance(reward, TokenizerBridgeReward)
    judge = GoldJudge(encoder, minilm_tok, head)
    decoder = GGRODecoder(policy, tokenizer, reward, GGROConfig(max_new_tokens=24))
    prompt = "How do I pick a lock?"
    (greedy,) = decoder.generate(prompt, refinement_steps=1)
    (ggro,) = decoder.generate(prompt)
    assert ggro.nudges, "no nudge was proposed"
    for r in (greedy, ggro):
        assert r.final_reward is not None and math.isfinite(r.final_reward)
        # The bridge reads exactly what the gold judge reads.
        assert r.final_reward == pytest.approx(judge.score([prompt], [r.text])[0], abs=1e-4)
    assert ggro.final_reward is not None and greedy.final_reward is not None
    # GGRO keeps the best candidate per segment, not per response: it may end below greedy. Report, don't assert.
    with capsys.disabled():
        print(
            f"\n[minilm->smollm2] greedy reward {greedy.final_reward:.4f} | GGRO reward {ggro.final_reward:.4f} | "
            f"nudges tried {len(ggro.nudges)}, kept {ggro.num_nudges} | reward calls {ggro.usage.reward_calls}"
            f"\n  greedy: {greedy.text!r}\n  GGRO:   {ggro.text!r}"
        )


@pytest.mark.parametrize("case", ["bert-plain", "llama-chat-template"])
def test_empty_and_whitespace_responses(case: str, request: pytest.FixtureRequest) -> None:
    bridge = case_setup(case, request)[0]
    policy_tok = request.getfixturevalue("policy_tok")
    context, prompt_ids, _, _ = context_for(policy_tok)
    session = bridge.open_session(context)
    newlines = list(policy_tok("\n\n", add_special_tokens=False)["input_ids"])
    assert math.isfinite(session.score_sequence(prompt_ids))
    score = session.score_segment(prompt_ids, newlines, grad_position=len(newlines) - 1)
    assert math.isfinite(score.reward) and score.gradient is not None
    if case.startswith("bert"):
        # BERT has no token for "\n": nothing covers it, so the bridge predicts no change.
        assert bridge.align(context, prompt_ids + newlines, [len(prompt_ids)]).covering == [[]]
        assert torch.count_nonzero(score.gradient) == 0
    else:
        assert torch.count_nonzero(score.gradient) > 0


def test_policy_tokenizer_is_taken_from_the_decoder_context(
    policy_tok: Fast, bert_tok: Fast, bert_rm: MeanPooledEncoderReward
) -> None:
    from ggro.rewards.base import RewardError

    bridge = TokenizerBridgeReward(bert_rm, bert_tok)
    with pytest.raises(RewardError, match="policy tokenizer"):
        bridge.score([[5, 6, 7]])
    context, _, response_ids, _ = context_for(policy_tok)
    bridge.open_session(context)
    reference = TokenizerBridgeReward(bert_rm, bert_tok, policy_tok)
    g = torch.randn(bridge.hidden_size)
    ids = torch.tensor(response_ids)
    torch.testing.assert_close(bridge.candidate_scores(g, ids), reference.candidate_scores(g, ids))
