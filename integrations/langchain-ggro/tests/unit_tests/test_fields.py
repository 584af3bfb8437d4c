"""Fields: every GGROConfig option, LangChain's standard names, and nothing loaded at construction."""

from __future__ import annotations

import pytest
from ggro import GGROConfig
from ggro.adapters import _SHARED_DECODERS

from langchain_ggro import GGROLLM, ChatGGRO


@pytest.mark.parametrize("cls", [GGROLLM, ChatGGRO])
def test_every_ggro_option_is_a_described_field(cls: type[GGROLLM] | type[ChatGGRO]) -> None:
    for name, info in GGROConfig.model_fields.items():
        field = cls.model_fields[name]
        assert field.description == info.description and field.description
        assert field.default == info.default or field.default_factory is not None
    for name in ("model_id", "reward_model", "device", "dtype", "temperature", "streaming"):
        assert cls.model_fields[name].description


@pytest.mark.parametrize("cls", [GGROLLM, ChatGGRO])
def test_construction_loads_nothing_and_maps_standard_names(cls: type[GGROLLM] | type[ChatGGRO]) -> None:
    before = dict(_SHARED_DECODERS)
    model = cls(model="some/causal-lm", max_tokens=12, stop=["\n\n"], temperature=0, entropy_threshold=2.0)
    assert dict(_SHARED_DECODERS) == before and model._decoder is None
    config = model.ggro_config(stop=["END"], max_tokens=5, refinement_steps=2)
    assert (config.max_new_tokens, config.stop_sequences, config.refinement_steps) == (5, ["\n\n", "END"], 2)
    assert config.entropy_threshold == 2.0
    assert model.model_name == "some/causal-lm"
    default = cls()
    assert default.model_name == "SmolLM2-135M-Instruct" and default.reward_model is None
    params = default._get_ls_params()
    assert params["ls_provider"] == "ggro" and params["ls_temperature"] == 0.0
    assert params["ls_max_tokens"] == GGROConfig().max_new_tokens


def test_identifying_params_hold_the_full_configuration() -> None:
    params = ChatGGRO(refinement_steps=3)._identifying_params
    assert params["refinement_steps"] == 3 and params["model_id"] == "SmolLM2-135M-Instruct"
    assert set(GGROConfig.model_fields) <= set(params)


def test_from_decoder_takes_the_decoders_config_and_overrides() -> None:
    from ggro.testing import tiny_decoder

    decoder = tiny_decoder(config=GGROConfig(refinement_steps=4, max_new_tokens=20))
    chat = ChatGGRO.from_decoder(decoder, model="tiny-chat", max_tokens=10, stop=["x"])
    assert (chat.model_name, chat.refinement_steps, chat.max_new_tokens, chat.stop_sequences) == (
        "tiny-chat",
        4,
        10,
        ["x"],
    )
    assert chat.decoder is decoder
    assert GGROLLM.from_decoder(decoder).model_name == "custom"  # a model built in memory has no name or path
