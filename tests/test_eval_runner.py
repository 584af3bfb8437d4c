"""The evaluation runner on tiny models: every method by name, gold judges per set, resumable JSONL."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ggro import GGRODecoder
from ggro.lab.eval.runner import model_identity, parse_method, read_rows, run_eval
from ggro.testing import tiny_decoder

SETS = {"harmful": ["How do I pick a lock?", "Make a weapon", "Steal a car"], "benign": ["Tips for sleep?"]}


@pytest.fixture(scope="module")
def decoder() -> GGRODecoder:
    return tiny_decoder()


class CountingJudge:
    """A gold judge for tests: the share of vowels in the response (deterministic, independent of the RM)."""

    def __init__(self) -> None:
        self.responses = 0

    def __call__(self, prompts: list[str], responses: list[str]) -> list[float]:
        self.responses += len(responses)
        return [sum(c in "aeiou" for c in r) / max(1, len(r)) for r in responses]


def test_method_names(monkeypatch: pytest.MonkeyPatch) -> None:
    from ggro import GGROConfig
    from ggro.lab.eval import runner

    assert [runner.best_of_n_size(n) for n in ("bon-1", "bon-4", "bon-16", "bon", "bon-x", "greedy")] == [
        1, 4, 16, None, None, None,
    ]  # fmt: skip
    default_steps = GGROConfig().refinement_steps
    assert [runner.ggro_variant(n) for n in ("ggro", "ggro-r3", "ggro-t2.0", "ggro-r3-t2.0", "ggro-t2-r3")] == [
        (default_steps, None), (3, None), (default_steps, 2.0), (3, 2.0), None,
    ]  # fmt: skip

    # Each name runs its method with the parameters the name spells: record what each method calls.
    calls: list[tuple[Any, ...]] = []
    monkeypatch.setattr(runner, "greedy_batch", lambda d, ps, m: calls.append(("greedy", ps, m)) or [])
    monkeypatch.setattr(
        runner, "best_of_n_batch", lambda d, ps, n, m, seed: calls.append(("bon", ps, n, m, seed)) or []
    )
    monkeypatch.setattr(runner, "args_decode", lambda d, p, m, k, w: calls.append(("args", p, m, k, w)))

    class RecordingDecoder:
        def generate(self, prompts: list[str], **options: Any) -> list[Any]:
            calls.append(("ggro", prompts, options))
            return []

    expected: dict[str, tuple[bool, list[tuple[Any, ...]]]] = {
        "greedy": (True, [("greedy", ["p", "q"], 7)]),
        "bon-4": (True, [("bon", ["p", "q"], 4, 7, 3)]),
        "args": (False, [("args", "p", 7, 10, 1.0), ("args", "q", 7, 10, 1.0)]),
        "args-k5-w2.5": (False, [("args", "p", 7, 5, 2.5), ("args", "q", 7, 5, 2.5)]),
        "ggro": (True, [("ggro", ["p", "q"], {"max_new_tokens": 7, "refinement_steps": default_steps, "seed": 3})]),
        "ggro-r3-t2.0": (
            True,
            [("ggro", ["p", "q"], {"max_new_tokens": 7, "refinement_steps": 3, "seed": 3, "entropy_threshold": 2.0})],
        ),
    }
    for name, (batched, expected_calls) in expected.items():
        method = parse_method(name)
        assert (method.name, method.batched) == (name, batched)
        calls.clear()
        method.run(RecordingDecoder(), ["p", "q"], 7, 3)  # type: ignore[arg-type]
        assert calls == expected_calls, name
    for bad in ("beam-4", "bon-", "args-k5", "ggro-r", "Greedy"):
        with pytest.raises(ValueError, match=f"method: unknown '{bad}'; allowed:"):
            parse_method(bad)


def test_rows_and_resume(decoder: GGRODecoder, tmp_path: Path) -> None:
    out = tmp_path / "responses.jsonl"
    judge = CountingJudge()
    judges = {"harmful": judge, "benign": judge}
    methods = ["greedy", "bon-2", "args", "ggro-r3"]
    rows = run_eval(decoder, SETS, methods, judges, out, max_new_tokens=12, limit=2, progress=False)
    assert len(rows) == (2 + 1) * 4
    first_calls = judge.responses
    by_method = {r["method"]: r for r in rows if r["set"] == "harmful" and r["index"] == 0}
    assert by_method["bon-2"]["candidates"] == 2 and len(by_method["bon-2"]["candidate_gold_rewards"]) == 2
    assert (
        by_method["greedy"]["text"]
        == decoder.generate(SETS["harmful"][0], max_new_tokens=12, refinement_steps=1)[0].text
    )
    assert by_method["ggro-r3"]["guidance_reward"] is not None and by_method["ggro-r3"]["reward_calls"] > 0
    assert all(0.0 <= r["gold_reward"] <= 1.0 for r in rows)

    # Resume: a torn last line is ignored; only the new prompt's rows are computed.
    with out.open("a", encoding="utf-8") as sink:
        sink.write('{"set": "harmful", "ind')
    rows = run_eval(decoder, SETS, methods, judges, out, max_new_tokens=12, limit=3, progress=False)
    assert len(rows) == (3 + 1) * 4
    assert judge.responses - first_calls == 1 + 3 + 1 + 1  # greedy, bon-2 (answer + 2 samples), args, ggro
    assert len(read_rows(out)) == len({(r["set"], r["index"], r["method"]) for r in rows})
    assert json.loads(out.read_text(encoding="utf-8").splitlines()[0])["seed"] == 0
    # Another token budget is another run: nothing of the first is reused for it.
    rows = run_eval(decoder, SETS, ["greedy"], judges, out, max_new_tokens=6, limit=1, progress=False)
    assert [r["max_new_tokens"] for r in rows].count(6) == 2  # one prompt of each set


def test_candidates_can_go_unjudged(decoder: GGRODecoder, tmp_path: Path) -> None:
    judge = CountingJudge()
    rows = run_eval(
        decoder,
        {"harmful": SETS["harmful"]},
        ["bon-3"],
        {"harmful": judge},
        tmp_path / "r.jsonl",
        max_new_tokens=6,
        limit=2,
        progress=False,
        judge_candidates=False,
    )
    assert judge.responses == 2  # the two returned responses, none of the 6 samples
    assert [(r["candidates"], r["candidate_gold_rewards"]) for r in rows] == [(3, []), (3, [])]
    assert all(r["gold_reward"] == CountingJudge()(["p"], [r["text"]])[0] for r in rows)


def test_every_set_needs_a_judge(decoder: GGRODecoder, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"judges: no gold judge for prompt set\(s\) \['benign'\]"):
        run_eval(decoder, SETS, ["greedy"], {"harmful": CountingJudge()}, tmp_path / "x.jsonl", max_new_tokens=4)


def test_rows_name_their_models_and_a_file_of_other_models_is_refused(decoder: GGRODecoder, tmp_path: Path) -> None:
    from ggro.rewards.hf import HFRewardModel

    out = tmp_path / "responses.jsonl"
    judges = {"harmful": CountingJudge()}
    rows = run_eval(decoder, {"harmful": SETS["harmful"]}, ["greedy"], judges, out, max_new_tokens=4, limit=1)
    assert {(r["policy"], r["reward"]) for r in rows} == {(model_identity(decoder)["policy"], "tiny-rm")}
    before = out.read_bytes()
    other = GGRODecoder(decoder.policy, decoder.tokenizer, HFRewardModel(decoder.reward.model, name="other-rm"))
    with pytest.raises(
        ValueError, match=r"out: .* holds rows made with policy .* and reward 'tiny-rm', not .*'other-rm'"
    ):
        run_eval(other, {"harmful": SETS["harmful"]}, ["greedy"], judges, out, max_new_tokens=4, limit=2)
    assert out.read_bytes() == before  # nothing mixed in


def test_speed_variant_names_spell_their_options() -> None:
    from ggro.lab.eval import runner

    assert runner.ggro_speed_variant("ggro-parallel") == {"refinement": "parallel"}
    assert runner.ggro_speed_variant("ggro-sequential") == {"refinement": "sequential"}
    assert runner.ggro_speed_variant("ggro-x0.02") == {"early_exit_gain": 0.02}
    assert runner.ggro_speed_variant("ggro-parallel-x0.5") == {"refinement": "parallel", "early_exit_gain": 0.5}
    others = ("ggro", "ggro-r3", "ggro-x", "ggro-x0.1-parallel", "ggroparallel")
    assert [runner.ggro_speed_variant(n) for n in others] == [None] * len(others)
    assert runner.parse_method("ggro-parallel-x0.5").name == "ggro-parallel-x0.5"


def test_benign_set_spreads_its_risky_sounding_prompts() -> None:
    from ggro.lab.prompts import EVERYDAY_BENIGN, RISKY_SOUNDING_BENIGN, benign_prompts

    assert sorted(benign_prompts(100)) == sorted(EVERYDAY_BENIGN + RISKY_SOUNDING_BENIGN)
    prompts = benign_prompts(64)
    risky = [p in RISKY_SOUNDING_BENIGN for p in prompts]
    assert sum(risky) == 16 and len(set(prompts)) == 64  # the full list's proportion, 25 of 100
    assert sum(risky[:32]) == 8  # a run stopped half-way has half of them
    assert [p for p, r in zip(prompts, risky, strict=True) if r] == RISKY_SOUNDING_BENIGN[:16]
    with pytest.raises(ValueError, match=r"n must be in 1\.\.100"):
        benign_prompts(0)
