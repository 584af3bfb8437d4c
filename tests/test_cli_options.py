"""Every subcommand that takes GGRO options gets one flag per GGROConfig field, generated from the config, and
the same --dtype choices (float16 included); ``ggro bench`` builds typed settings, not a namespace."""

from __future__ import annotations

import argparse

import pytest

from ggro import GGROConfig
from ggro.cli import build_parser
from ggro.lab.eval.runner import PER_METHOD_OPTIONS

CONFIG_COMMANDS = {"generate": (), "align": (), "demo": (), "compare": (), "eval": PER_METHOD_OPTIONS, "bench": ()}


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def _destinations(parser: argparse.ArgumentParser) -> set[str]:
    return {a.dest for a in parser._actions}


@pytest.mark.parametrize("command", sorted(CONFIG_COMMANDS))
def test_config_flags_are_generated_for_every_field(command: str) -> None:
    parser = _subparsers()[command]
    expected = set(GGROConfig.model_fields) - set(CONFIG_COMMANDS[command])
    assert expected <= _destinations(parser), sorted(expected - _destinations(parser))
    assert "preset" in _destinations(parser)


@pytest.mark.parametrize("command", sorted(CONFIG_COMMANDS))
def test_dtype_choices_include_float16(command: str) -> None:
    (dtype,) = [a for a in _subparsers()[command]._actions if a.dest == "dtype"]
    assert list(dtype.choices or []) == ["float32", "bfloat16", "float16"]


def test_eval_leaves_per_method_options_to_the_method_names() -> None:
    ev = _subparsers()["eval"]
    args = ev.parse_args(["--nudge-top-k", "7", "--max-new-tokens", "12", "--seed", "3"])
    assert (args.nudge_top_k, args.max_new_tokens, args.seed, args.preset) == (7, 12, 3, "default")
    assert {a.dest for a in ev._actions if a.option_strings == ["--refinement-steps"]} == set()


def test_bench_settings_come_from_the_default_preset_and_flags() -> None:
    from ggro.cli import _config_from_args

    bench = _subparsers()["bench"]
    args = bench.parse_args(["--refinement-steps", "3", "--dtype", "float16"])
    config = _config_from_args(args)
    assert config == GGROConfig(refinement_steps=3, max_new_tokens=48)
    assert (args.dtype, args.preset, args.policy, args.reward, args.methods, args.no_memory) == (
        "float16",
        "default",
        None,
        None,
        None,
        False,
    )
    args = bench.parse_args(
        ["--methods", "greedy", "ggro-batch", "--no-memory", "--policy", "qwen2.5-coder-0.5b-instruct"]
    )
    assert (args.methods, args.no_memory, args.policy) == (
        ["greedy", "ggro-batch"],
        True,
        "qwen2.5-coder-0.5b-instruct",
    )
    with pytest.raises(SystemExit):
        bench.parse_args(["--methods", "beam"])


def test_bench_settings_are_validated() -> None:
    from ggro.lab.bench import BenchSettings

    with pytest.raises(ValueError, match="runs: must be at least 1, got 0"):
        BenchSettings(runs=0)
    with pytest.raises(ValueError, match="dtype: expected a torch dtype name"):
        BenchSettings(dtype="float33")
    assert BenchSettings().config == GGROConfig(max_new_tokens=48)
