"""Loading options passed through (``model_kwargs``, ``tokenizer_kwargs``, ``device_map``) and the reward
bridged automatically when the policy's vocabulary differs from the reward's: tiny models saved to disk,
no downloads."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

from ggro import GGROConfig, GGRODecoder, HFRewardModel
from ggro.adapters import _SHARED_DECODERS, GGROAdapter, shared_decoder
from ggro.loading import load_policy, load_reward
from ggro.rewards.bridge import TokenizerBridgeReward
from ggro.testing import save_tiny_models

SHORT = GGROConfig(max_new_tokens=6, refinement_steps=1, entropy_threshold=0.0)


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return save_tiny_models(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def wide_policy_dir(tiny_dirs: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny policy with 40 more tokens than the tiny reward reads (a larger-vocabulary policy)."""
    policy_dir, _ = tiny_dirs
    out = tmp_path_factory.mktemp("wide") / "wide-policy"
    tokenizer = AutoTokenizer.from_pretrained(str(policy_dir))
    tokenizer.add_tokens([f"word{i}" for i in range(40)])
    model = AutoModelForCausalLM.from_pretrained(str(policy_dir))
    model.resize_token_embeddings(len(tokenizer))
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


# ---------------------------------------------------------------------------------------------- load_policy
def test_model_and_tokenizer_kwargs_reach_from_pretrained(tiny_dirs: tuple[Path, Path]) -> None:
    policy_dir, _ = tiny_dirs
    model, tokenizer = load_policy(
        policy_dir,
        model_kwargs={"attn_implementation": "eager", "output_hidden_states": True},
        tokenizer_kwargs={"model_max_length": 77, "padding_side": "left"},
    )
    assert model.config._attn_implementation == "eager"
    assert model.config.output_hidden_states is True
    assert tokenizer.model_max_length == 77 and tokenizer.padding_side == "left"
    assert not model.training and not any(p.requires_grad for p in model.parameters())

    plain, plain_tokenizer = load_policy(policy_dir)
    assert plain.config.output_hidden_states is False and plain_tokenizer.padding_side != "left"


class _Spy:
    """Stands for AutoModelForCausalLM in ggro.assets: records the keyword arguments of each load."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def from_pretrained(self, *args: Any, **kwargs: Any) -> Any:
        self.calls.append(kwargs)
        return AutoModelForCausalLM.from_pretrained(*args, **kwargs)


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> _Spy:
    from ggro import assets

    recorder = _Spy()
    monkeypatch.setattr(assets, "AutoModelForCausalLM", recorder)
    return recorder


def test_device_map_places_the_policy(tiny_dirs: tuple[Path, Path], spy: _Spy) -> None:
    policy_dir, _ = tiny_dirs
    # With a device map the policy is placed by it: `device` (here one it would fail on) is not applied.
    model, _ = load_policy(policy_dir, device="meta", device_map={"": "cpu"})
    assert spy.calls[-1]["device_map"] == {"": "cpu"}
    assert all(p.device.type == "cpu" for p in model.parameters())
    model, _ = load_policy(policy_dir, device="meta", device_map="cpu")
    assert spy.calls[-1]["device_map"] == "cpu"
    assert all(p.device.type == "cpu" for p in model.parameters())
    model, _ = load_policy(policy_dir, device="meta")  # without one, `device` places it
    assert "device_map" not in spy.calls[-1]
    assert all(p.device.type == "meta" for p in model.parameters())


@pytest.mark.parametrize("key", ["dtype", "torch_dtype", "device_map"])
def test_model_kwargs_may_not_repeat_an_argument(tiny_dirs: tuple[Path, Path], key: str) -> None:
    with pytest.raises(ValueError, match=f"model_kwargs: '{key}' has an argument of its own"):
        load_policy(tiny_dirs[0], model_kwargs={key: "cpu"})


def test_attn_implementation_given_twice_must_agree(tiny_dirs: tuple[Path, Path]) -> None:
    with pytest.raises(ValueError, match="attn_implementation: given twice"):
        load_policy(tiny_dirs[0], attn_implementation="sdpa", model_kwargs={"attn_implementation": "eager"})
    model, _ = load_policy(tiny_dirs[0], attn_implementation="eager", model_kwargs={"attn_implementation": "eager"})
    assert model.config._attn_implementation == "eager"


# ---------------------------------------------------------------------------------------------- the decoder
def test_from_pretrained_passes_the_options_to_the_policy(tiny_dirs: tuple[Path, Path], spy: _Spy) -> None:
    policy_dir, reward_dir = tiny_dirs
    decoder = GGRODecoder.from_pretrained(
        str(policy_dir),
        str(reward_dir),
        SHORT,
        model_kwargs={"attn_implementation": "eager"},
        tokenizer_kwargs={"model_max_length": 99},
        device_map="cpu",
    )
    assert decoder.policy.config._attn_implementation == "eager"
    assert decoder.tokenizer.model_max_length == 99
    assert [call.get("device_map") for call in spy.calls] == ["cpu"]
    assert isinstance(decoder.reward, HFRewardModel)  # same vocabulary: the exact path, no bridge
    assert decoder.generate("Hi")[0].token_ids


def test_a_larger_vocabulary_policy_gets_the_reward_through_the_bridge(
    tiny_dirs: tuple[Path, Path], wide_policy_dir: Path
) -> None:
    _, reward_dir = tiny_dirs
    exact = HFRewardModel.from_pretrained(reward_dir)
    wide_tokenizer = AutoTokenizer.from_pretrained(str(wide_policy_dir))
    with pytest.raises(ValueError, match="vocabulary"):  # what happened before: the vocabulary check refuses it
        exact.check_vocabulary(len(wide_tokenizer))

    decoder = GGRODecoder.from_pretrained(str(wide_policy_dir), str(reward_dir), SHORT)
    assert isinstance(decoder.reward, TokenizerBridgeReward)
    assert isinstance(decoder.reward.rm, HFRewardModel)
    assert decoder.reward.policy_tokenizer is decoder.tokenizer
    result = decoder.generate("Hello")[0]
    assert result.token_ids and result.final_reward is not None

    # load_reward bridges only when told the policy's tokenizer, and only for another vocabulary.
    assert isinstance(load_reward(reward_dir), HFRewardModel)
    assert isinstance(load_reward(reward_dir, policy_tokenizer=wide_tokenizer), TokenizerBridgeReward)
    same = AutoTokenizer.from_pretrained(str(reward_dir))
    assert isinstance(load_reward(reward_dir, policy_tokenizer=same), HFRewardModel)


def test_a_reward_given_as_an_object_is_used_as_is(tiny_dirs: tuple[Path, Path]) -> None:
    policy_dir, reward_dir = tiny_dirs
    reward = HFRewardModel.from_pretrained(reward_dir)
    assert GGRODecoder.from_pretrained(str(policy_dir), reward, SHORT).reward is reward


# ---------------------------------------------------------------------------------------------- shared_decoder
def test_shared_decoder_keys_on_the_loading_options(tiny_dirs: tuple[Path, Path]) -> None:
    policy_dir, reward_dir = tiny_dirs
    options = {"attn_implementation": "eager", "id2label": {0: "x"}, "architectures": ["LlamaForCausalLM"]}
    first = shared_decoder(policy_dir, reward_dir, model_kwargs=options)
    assert first.policy.config._attn_implementation == "eager" and first.policy.config.id2label == {0: "x"}
    again = shared_decoder(str(policy_dir), str(reward_dir), model_kwargs=dict(reversed(options.items())))
    assert again is first  # same options in another order, unhashable values included
    plain = shared_decoder(policy_dir, reward_dir)
    assert plain is not first
    assert shared_decoder(policy_dir, reward_dir, model_kwargs={}, tokenizer_kwargs={}) is plain  # {} == None
    tokenized = shared_decoder(policy_dir, reward_dir, tokenizer_kwargs={"model_max_length": 55})
    assert tokenized is not plain and tokenized.tokenizer.model_max_length == 55
    mapped = shared_decoder(policy_dir, reward_dir, device_map={"": "cpu"})
    assert mapped is not plain and shared_decoder(policy_dir, reward_dir, device_map={"": "cpu"}) is mapped


def test_shared_decoder_key_of_config_objects() -> None:
    from ggro.adapters import _hashable

    one = {"quantization_config": BitsAndBytesConfig(load_in_8bit=True), "device": torch.device("cpu")}
    two = {"device": torch.device("cpu"), "quantization_config": BitsAndBytesConfig(load_in_8bit=True)}
    assert hash(_hashable(one)) == hash(_hashable(two)) and _hashable(one) == _hashable(two)
    three = {"quantization_config": BitsAndBytesConfig(load_in_4bit=True), "device": torch.device("cpu")}
    assert _hashable(three) != _hashable(one)

    class Opaque:
        __hash__ = None  # type: ignore[assignment]

        def __repr__(self) -> str:
            return "Opaque()"

    assert _hashable({"x": Opaque()}) == _hashable({"x": Opaque()})


# ---------------------------------------------------------------------------------------------- wrapper fields
def test_adapter_fields_reach_the_shared_decoder(tiny_dirs: tuple[Path, Path], spy: _Spy) -> None:
    policy_dir, reward_dir = tiny_dirs
    for name in ("model_kwargs", "tokenizer_kwargs", "device_map"):
        assert GGROAdapter.model_fields[name].description
    defaults = GGROAdapter()
    assert defaults.model_kwargs == {} and defaults.tokenizer_kwargs == {} and defaults.device_map is None

    before = dict(_SHARED_DECODERS)
    fields: dict[str, Any] = {
        "model_id": str(policy_dir),
        "reward_model": str(reward_dir),
        "model_kwargs": {"attn_implementation": "eager"},
        "tokenizer_kwargs": {"model_max_length": 66},
        "device_map": {"": "cpu"},
    }
    adapter = GGROAdapter(**fields)
    assert dict(_SHARED_DECODERS) == before and adapter._decoder is None  # nothing loads at construction
    decoder = adapter.decoder
    assert decoder.policy.config._attn_implementation == "eager"
    assert decoder.tokenizer.model_max_length == 66
    assert [call.get("device_map") for call in spy.calls] == [{"": "cpu"}]
    assert GGROAdapter(**fields).decoder is decoder  # one load per process for the same options
    with pytest.raises(ValueError):
        GGROAdapter(model_kwargs="eager")  # type: ignore[arg-type]
