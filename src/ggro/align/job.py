"""`run_align`: an alignment job from an input file to an output file, on the local engine (one process) or
on Ray Data (:mod:`ggro.distributed`), resumable by id (see :mod:`ggro.align.data`)."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ..config import GGROConfig
from ..rewards.base import RewardModel
from .data import AlignInputError, InputRow, OutputFile, RecordSink, read_input
from .decode import Aligner

__all__ = ["AlignSummary", "run_align"]


@dataclass(frozen=True)
class AlignSummary:
    """What a run did: ``total`` input rows, ``skipped`` already in the output, ``decoded`` now (``errors`` of
    them with an error), in ``seconds`` (model loading included; validation and the final write not)."""

    input: Path
    output: Path
    engine: str
    total: int
    skipped: int
    decoded: int
    errors: int
    seconds: float

    @property
    def rows_per_second(self) -> float:
        return self.decoded / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        rate = f" in {self.seconds:.1f} s ({self.rows_per_second:.3f} rows/s)" if self.decoded else ""
        errors = f" ({self.errors} with an error)" if self.errors else ""
        return (
            f"{self.total} rows in {self.input}: {self.skipped} already done, {self.decoded} decoded{errors}{rate} "
            f"on the {self.engine} engine -> {self.output}"
        )


def run_align(
    input: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    policy: str | None = None,
    reward: str | RewardModel | None = None,
    config: GGROConfig | None = None,
    engine: Literal["local", "ray"] = "local",
    batch_size: int = 8,
    device: str | None = None,
    dtype: str = "float32",
    num_actors: int = 1,
    gpus_per_actor: float = 0.0,
    cpus_per_actor: float = 1.0,
    address: str | None = None,
    max_restarts: int = 3,
    max_task_retries: int = 3,
    retry_errors: bool = False,
    progress: bool = True,
) -> AlignSummary:
    """Decode every row of ``input`` that ``output`` does not hold yet and write it there.

    The input (and an existing output) is checked first, before any model loads: problems raise
    :class:`~ggro.align.data.AlignInputError`. ``engine="local"`` decodes batches of ``batch_size`` rows in this
    process; ``engine="ray"`` runs a Ray Data pipeline with ``num_actors`` actors, each with its own decoder (see
    :func:`ggro.distributed.align_dataset`; ``address`` joins a running cluster, otherwise Ray starts locally
    unless this process already started it). Each finished batch is on disk before the next is written, so an
    interrupted run loses at most the batches in flight; rerun the same command to finish it. ``retry_errors``:
    decode again the rows whose earlier record has an ``error``."""
    if engine not in ("local", "ray"):
        raise ValueError(f"engine: expected 'local' or 'ray', got {engine!r}")
    for name, value in (("batch_size", batch_size), ("num_actors", num_actors)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}: expected a positive integer, got {value!r}")
    if gpus_per_actor < 0 or cpus_per_actor < 0:
        raise ValueError("gpus_per_actor and cpus_per_actor must be >= 0")
    if engine == "local" and (address or num_actors != 1 or gpus_per_actor):
        raise ValueError("address, num_actors and gpus_per_actor apply to the Ray engine only (engine='ray')")
    source, target = Path(input), Path(output)
    rows = read_input(source)
    out = OutputFile(target)
    if source.resolve() in (out.path.resolve(), out.journal.resolve()):
        raise AlignInputError(f"{target}: the output must not be the input file")
    ray_engine = None
    if engine == "ray":
        from ..distributed import run_ray

        ray_engine = run_ray
    out.lock()
    try:
        done = out.load(rows, retry_errors=retry_errors)
        pending = [r for r in rows if r.id not in done]
        started = time.perf_counter()
        errors = 0
        written: set[Any] = set()
        wanted = {r.id for r in pending}
        bar = _progress(len(rows), len(done), progress)

        def sink(records: Sequence[Mapping[str, Any]]) -> None:
            nonlocal errors
            strays = [r["id"] for r in records if r["id"] not in wanted]
            if strays:
                raise RuntimeError(f"the engine returned rows that were not asked for (ids {strays[:3]!r})")
            fresh = [r for r in records if r["id"] not in written]  # a batch delivered twice is written once
            out.append(fresh)
            written.update(r["id"] for r in fresh)
            errors += sum(r.get("error") is not None for r in fresh)
            if bar is not None:
                bar.update(len(fresh))

        try:
            if pending:
                if ray_engine is None:
                    _run_local(
                        pending,
                        sink,
                        batch_size=batch_size,
                        policy=policy,
                        reward=reward,
                        config=config,
                        device=device or "cpu",
                        dtype=dtype,
                    )
                else:
                    ray_engine(
                        pending,
                        sink,
                        batch_size=batch_size,
                        policy=policy,
                        reward=reward,
                        config=config,
                        dtype=dtype,
                        device=device,
                        num_actors=num_actors,
                        gpus_per_actor=gpus_per_actor,
                        cpus_per_actor=cpus_per_actor,
                        address=address,
                        max_restarts=max_restarts,
                        max_task_retries=max_task_retries,
                        progress=progress,
                    )
            seconds = time.perf_counter() - started
        finally:
            out.close()
            if bar is not None:
                bar.close()
        out.finish(rows)
        return AlignSummary(
            source, target, engine, len(rows), len(done), len(written), errors, seconds if pending else 0.0
        )
    finally:
        out.release()


def _run_local(
    rows: Sequence[InputRow],
    sink: RecordSink,
    *,
    batch_size: int,
    policy: str | None,
    reward: str | RewardModel | None,
    config: GGROConfig | None,
    device: str,
    dtype: str,
) -> None:
    aligner = Aligner.load(policy, reward, config, device=device, dtype=dtype)
    for start in range(0, len(rows), batch_size):
        batch = rows[start : start + batch_size]
        sink(aligner.align([(r.id, r.prompt) for r in batch]))


def _progress(total: int, done: int, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=done, unit="row", desc="align", file=sys.stderr, dynamic_ncols=True)
