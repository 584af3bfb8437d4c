"""The HF reward adapter: batched scoring, gradients, the prefix cache, loading from a local path."""

from __future__ import annotations

import pytest
import torch

from conftest import FLOAT32_GRADIENT_RTOL, central_difference, float64_copy, fp32_only, tiny_reward
from ggro import HFRewardModel


def test_batched_score_equals_one_at_a_time() -> None:
    rm = tiny_reward()
    seqs = [[5, 6, 7], [8, 9, 10, 11, 12], [13]]
    batched = rm.score(seqs)
    singles = [rm.score([s])[0] for s in seqs]
    assert batched == pytest.approx(singles, abs=1e-5)
    assert len(set(round(x, 4) for x in batched)) == 3


def test_session_with_prefix_cache_matches_full_pass() -> None:
    # On a float64 copy: cached and full passes are shaped differently, and their float32 rounding (~3e-6 here)
    # depends on the CPU's kernels; in float64 they agree far below the tolerances.
    rm = HFRewardModel(float64_copy(tiny_reward().model), name="tiny-rm")
    assert rm.use_prefix_cache
    session = rm.open_session()
    prefix, segment = [5, 6, 7, 8, 9], [10, 11, 12, 13]
    cached = session.score_segment(prefix, segment, grad_position=1)
    reward, grads = rm.embedding_gradients(prefix + segment, [len(prefix) + 1])
    assert cached.reward == pytest.approx(reward, abs=1e-5)
    assert cached.gradient is not None
    torch.testing.assert_close(cached.gradient, grads[0], atol=1e-5, rtol=1e-4)
    # The prefix stays cached; a second candidate only pays for its own tokens.
    before = session.tokens_processed
    again = session.score_segment(prefix, [10, 14], grad_position=None)
    assert session.tokens_processed - before == 2
    assert again.reward == pytest.approx(rm.score([[*prefix, 10, 14]])[0], abs=1e-5)
    # A changed prefix rolls the cache back to the common part.
    other = session.score_segment([5, 6, 90], [10], grad_position=0)
    assert other.reward == pytest.approx(rm.score([[5, 6, 90, 10]])[0], abs=1e-5)


@fp32_only("the prediction's error bound (FLOAT32_GRADIENT_RTOL) is for float32 models")
def test_gradient_is_first_order_reward_change() -> None:
    rm = tiny_reward()
    ids = [5, 6, 7, 8]
    _, grads = rm.embedding_gradients(ids, [2])
    candidates = torch.tensor([20, 21, 22])
    predicted = rm.candidate_scores(grads[0], candidates) - rm.candidate_scores(grads[0], torch.tensor([7]))
    # Compare with a small step along each swap direction: a central difference on the embedding, computed by a
    # float64 copy of the RM (in float32 its rounding noise, ~1e-4 at eps=1e-3, depends on the CPU's kernels).
    model = float64_copy(rm.model)
    emb = model.get_input_embeddings().weight.detach()
    mask = torch.ones(1, len(ids), dtype=torch.long, device=emb.device)
    for v, pred in zip(candidates.tolist(), predicted.tolist(), strict=True):
        step = emb[v] - emb[7]

        def moved(t: float, step: torch.Tensor = step) -> float:
            e = emb[ids].clone()
            e[2] += t * step
            with torch.no_grad():
                return float(model(inputs_embeds=e[None], attention_mask=mask).logits[0, 0])

        actual, fd_error = central_difference(moved)
        scale = float(grads[0].norm()) * float(emb[v].norm() + emb[7].norm())
        assert abs(actual - pred) <= fd_error + FLOAT32_GRADIENT_RTOL * scale, (v, pred, actual)
        assert abs(pred) > 100 * FLOAT32_GRADIENT_RTOL * scale  # a prediction the check can tell from zero


def test_from_pretrained_local_path_dtype(tmp_path) -> None:
    rm = tiny_reward()
    rm.model.save_pretrained(tmp_path / "rm")
    loaded = HFRewardModel.from_pretrained(tmp_path / "rm", dtype=torch.bfloat16)
    assert loaded.model.dtype == torch.bfloat16
    assert loaded.score([[5, 6, 7]])[0] == pytest.approx(rm.score([[5, 6, 7]])[0], abs=0.1)


def test_multi_label_model_is_rejected() -> None:
    from transformers import LlamaConfig, LlamaForSequenceClassification

    model = LlamaForSequenceClassification(
        LlamaConfig(
            vocab_size=32,
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
            num_labels=3,
            pad_token_id=0,
        )
    )
    with pytest.raises(ValueError, match="num_labels must be 1"):
        HFRewardModel(model)


def test_encoder_reward_batches_with_right_padding() -> None:
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=96, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, num_labels=1
    )
    rm = HFRewardModel(BertForSequenceClassification(config).eval(), name="tiny-bert")
    assert not rm.causal and not rm.use_prefix_cache
    seqs = [[1, 5, 6, 7, 2], [1, 8, 2], [1, 9, 10, 11, 12, 13, 2]]
    assert rm.score(seqs) == pytest.approx([rm.score([s])[0] for s in seqs], abs=1e-5)
