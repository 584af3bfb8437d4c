"""`ggro align --engine ray`: the same rows as the local engine with one actor and with two (other batch sizes),
an actor killed mid-batch (restarted by Ray, its batch retried, every id written once), resuming, and
``align_dataset`` on a Dataset. One small local Ray (2 CPUs, no dashboard) serves the whole module."""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ray = pytest.importorskip("ray", reason="the Ray engine needs the 'ray' extra: pip install -e '.[ray]'")
pytest.importorskip("ray.data", reason="the Ray engine needs the 'ray' extra: pip install -e '.[ray]'")

import torch  # noqa: E402
from transformers import AutoModelForSequenceClassification  # noqa: E402

from align_support import (  # noqa: E402 - after the importorskip
    MAX_NEW_TOKENS,
    assert_same_rows,
    ids_once,
    input_rows,
    read_output,
    write_input,
)
from ggro import GGROConfig, HFRewardModel  # noqa: E402
from ggro.align import RESULT_COLUMNS, run_align  # noqa: E402
from ggro.distributed import align_dataset  # noqa: E402
from ggro.testing import save_tiny_models  # noqa: E402

CONFIG = GGROConfig(max_new_tokens=MAX_NEW_TOKENS)
ROWS = 12
LOCAL_BATCH_SIZE = 3

# The crashing reward below is defined here, in a module Ray's workers cannot import: pickle it by value.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


@pytest.fixture(scope="module", autouse=True)
def local_ray() -> Iterator[None]:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    policy, reward = save_tiny_models(tmp_path_factory.mktemp("tiny"), seed=0)
    return str(policy), str(reward)


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_input(tmp_path_factory.mktemp("input") / "in.jsonl", input_rows(ROWS))


@pytest.fixture(scope="module")
def local(models: tuple[str, str], source: Path, tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    output = tmp_path_factory.mktemp("local") / "out.jsonl"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the actors (one CPU each): float32 sums then split the same way on any machine
    try:
        run_align(
            source,
            output,
            policy=models[0],
            reward=models[1],
            config=CONFIG,
            batch_size=LOCAL_BATCH_SIZE,
            progress=False,
        )
    finally:
        torch.set_num_threads(threads)
    return read_output(output)


def on_ray(models: tuple[str, str], source: Path, output: Path, **options: Any) -> Any:
    options = {"policy": models[0], "reward": models[1], **options}
    return run_align(source, output, config=CONFIG, engine="ray", progress=False, **options)


@pytest.mark.parametrize(("num_actors", "batch_size"), [(1, 2), (2, 5), (2, 3)])
def test_ray_gives_the_rows_of_the_local_engine(
    models: tuple[str, str], source: Path, local: list[dict[str, Any]], tmp_path: Path, num_actors: int, batch_size: int
) -> None:
    output = tmp_path / "out.jsonl"
    summary = on_ray(models, source, output, num_actors=num_actors, batch_size=batch_size)
    assert (summary.engine, summary.decoded, summary.errors) == ("ray", ROWS, 2)
    # At the local run's batch size Ray batches the rows alike, so even the entropies are bit-identical.
    assert_same_rows(read_output(output), local, exact=batch_size == LOCAL_BATCH_SIZE)


class CrashOnceReward(HFRewardModel):
    """The tiny reward, except that the process using it kills itself (SIGKILL) at the start of its second batch,
    once in the whole run (a marker file says it happened)."""

    def __init__(self, model: Any, marker: Path, batch_size: int) -> None:
        super().__init__(model, name="tiny-rm")
        self.marker, self.batch_size, self.rows = str(marker), batch_size, 0

    def open_session(self, context: Any = None) -> Any:  # called once per row as its decoding starts
        self.rows += 1
        if self.rows > self.batch_size and not os.path.exists(self.marker):
            Path(self.marker).write_text(str(os.getpid()), encoding="utf-8")
            os.kill(os.getpid(), signal.SIGKILL)
        return super().open_session(context)


def test_an_actor_killed_mid_batch_is_restarted_and_its_batch_retried(
    models: tuple[str, str], source: Path, local: list[dict[str, Any]], tmp_path: Path
) -> None:
    marker = tmp_path / "crashed"
    reward = CrashOnceReward(AutoModelForSequenceClassification.from_pretrained(models[1]), marker, batch_size=2)
    output = tmp_path / "out.jsonl"
    summary = on_ray(models, source, output, reward=reward, num_actors=2, batch_size=2)
    assert marker.exists(), "no actor was killed"
    assert int(marker.read_text()) != os.getpid()
    records = read_output(output)
    assert len(records) == ROWS and set(ids_once(records).values()) == {1}
    assert summary.decoded == ROWS
    assert_same_rows(records, local, names=False)


@pytest.mark.parametrize("output_ext", ["jsonl", "parquet"])
def test_ray_resumes_a_partial_output(
    models: tuple[str, str], source: Path, local: list[dict[str, Any]], tmp_path: Path, output_ext: str
) -> None:
    output = tmp_path / f"out.{output_ext}"
    journal = output if output_ext == "jsonl" else tmp_path / f"out.{output_ext}.partial.jsonl"
    lines = [json.dumps(r) + "\n" for r in local]
    journal.write_text("".join(lines[2:7]) + lines[7][:30], encoding="utf-8")
    summary = on_ray(models, source, output, num_actors=2, batch_size=3)
    assert (summary.skipped, summary.decoded) == (5, ROWS - 5)
    records = read_output(output)
    assert set(ids_once(records).values()) == {1}
    assert_same_rows(records, local)


def test_align_dataset_adds_the_result_columns(models: tuple[str, str], local: list[dict[str, Any]]) -> None:
    rows = [
        {"id": r["id"], "prompt": r.get("prompt", ""), "messages": json.dumps(r.get("messages", "")), "topic": "t"}
        for r in input_rows(ROWS)[:4]
    ]
    for row in rows:
        if row["messages"] == '""':
            row["messages"] = ""
    ds = align_dataset(ray.data.from_items(rows), policy=models[0], reward=models[1], config=CONFIG, batch_size=4)
    out = sorted(ds.take_all(), key=lambda r: r["id"])
    assert list(out[0]) == ["id", "prompt", "messages", "topic", *RESULT_COLUMNS]
    assert [r["topic"] for r in out] == ["t"] * 4
    for got, expected in zip(out, local[:4], strict=True):
        assert (got["text"], got["final_reward"], got["error"]) == (
            expected["text"],
            expected["final_reward"],
            expected["error"],
        )
        if got["error"] is None:
            assert json.loads(got["segments"])[0]["token_ids"] == expected["segments"][0]["token_ids"]


def test_align_dataset_refuses_a_dataset_without_the_columns() -> None:
    with pytest.raises(ValueError, match="needs 'id' and 'prompt' or 'messages' columns"):
        align_dataset(ray.data.from_items([{"id": 1, "text": "x"}]))
