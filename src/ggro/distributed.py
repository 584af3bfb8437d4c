"""GGRO over Ray Data: an actor pool in which each actor holds one decoder and decodes each batch of rows as
one GGRO batch.

``align_dataset(ds, ...)`` adds the result columns to a Dataset that has an ``id`` column and a ``prompt``
(text) or ``messages`` (a chat: a list of ``{role, content}``, or that list as JSON text) column::

    import ray
    from ggro.distributed import align_dataset

    ds = ray.data.read_parquet("prompts.parquet")
    align_dataset(ds, num_actors=4, gpus_per_actor=1, batch_size=16).write_parquet("aligned/")

``ggro align --engine ray`` runs the same pipeline from a file and journals the rows as they arrive, so that a
rerun resumes (:func:`run_ray`). Ray is an optional dependency (``pip install 'ggro[ray]'``), imported only when
a function here runs: ``import ggro`` never imports it.

Faults: an actor that dies (a killed process, a lost node) is restarted by Ray up to ``max_restarts`` times
and the batches it held are retried up to ``max_task_retries`` times. A row that fails inside the decoder does
not kill the actor: it comes back with an ``error`` (see :mod:`ggro.align.decode`).
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Sequence
from typing import Any

from .align.data import (
    OUTPUT_COLUMNS,
    RESULT_COLUMNS,
    InputRow,
    RecordSink,
    flatten_record,
    prompt_from_fields,
    records_to_arrow,
    unflatten_record,
)
from .align.decode import Aligner
from .config import GGROConfig
from .rewards.base import RewardModel

__all__ = ["GGROAligner", "align_dataset", "run_ray"]

_MAX_BLOCKS = 10_000


def _ray() -> Any:
    try:
        import ray
        import ray.data
    except ImportError:
        raise ImportError("the Ray engine needs Ray Data: pip install 'ggro[ray]' (ray[data]==2.60.0)") from None
    return ray


class GGROAligner:
    """A Ray Data callable class (``map_batches(GGROAligner, compute=ActorPoolStrategy(...))``): loads one decoder
    when the actor starts and turns each ``pyarrow.Table`` batch into the same table with the result columns
    (:data:`ggro.align.RESULT_COLUMNS`; ``nudges``, ``segments`` and ``usage`` as JSON text) added. Input columns
    named like a result column are replaced."""

    def __init__(
        self,
        policy: str | None = None,
        reward: str | RewardModel | None = None,
        config: GGROConfig | None = None,
        device: str = "cpu",
        dtype: str = "float32",
    ) -> None:
        self.aligner = Aligner.load(policy, reward, config, device=device, dtype=dtype)

    def __call__(self, batch: Any) -> Any:
        if "id" not in batch.column_names:
            raise ValueError(f"align_dataset: the dataset needs an 'id' column (columns: {batch.column_names})")
        rows: list[tuple[Any, Any]] = []
        for fields in batch.to_pylist():
            try:
                prompt: Any = prompt_from_fields(fields, require=True)
            except ValueError as error:
                prompt = ValueError(f"input: {error}")
            rows.append((fields["id"], prompt))
        flat = [flatten_record(r) for r in self.aligner.align(rows)]
        results = records_to_arrow(flat, id_type=batch.schema.field("id").type)
        table = batch.drop_columns([n for n in RESULT_COLUMNS if n in batch.column_names])
        for name in RESULT_COLUMNS:
            table = table.append_column(results.schema.field(name), results.column(name))
        return table


def align_dataset(
    ds: Any,
    *,
    policy: str | None = None,
    reward: str | RewardModel | None = None,
    config: GGROConfig | None = None,
    batch_size: int = 8,
    num_actors: int = 1,
    gpus_per_actor: float = 0.0,
    cpus_per_actor: float = 1.0,
    device: str | None = None,
    dtype: str = "float32",
    max_restarts: int = 3,
    max_task_retries: int = 3,
    **ray_remote_args: Any,
) -> Any:
    """``ds`` with the GGRO result columns added, decoded by a fixed pool of ``num_actors`` actors (lazy, like
    every Dataset transform: nothing runs until the Dataset is consumed).

    Each actor loads ``policy`` and ``reward`` (ids or paths, None for the embedded defaults; a
    :class:`~ggro.RewardModel` object is pickled to every actor) with ``config`` on ``device`` (default: ``cuda``
    when ``gpus_per_actor`` > 0, else ``cpu``), and decodes each batch of up to ``batch_size`` rows as one GGRO
    batch. ``gpus_per_actor`` and ``cpus_per_actor`` are the actors' Ray resources (0.5 GPU: two actors share a
    GPU). A dead actor is restarted up to ``max_restarts`` times and its batches retried up to
    ``max_task_retries`` times; ``ray_remote_args`` go to ``map_batches`` as they are (e.g. ``memory=...``,
    ``accelerator_type=...``)."""
    ray = _ray()
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: expected a positive integer, got {batch_size!r}")
    if isinstance(num_actors, bool) or not isinstance(num_actors, int) or num_actors < 1:
        raise ValueError(f"num_actors: expected a positive integer, got {num_actors!r}")
    schema = ds.schema(fetch_if_missing=False)
    if schema is not None:
        names = list(schema.names)
        if "id" not in names or ("prompt" not in names and "messages" not in names):
            raise ValueError(f"align_dataset: the dataset needs 'id' and 'prompt' or 'messages' columns, has {names}")
    if gpus_per_actor > 0:
        ray_remote_args.setdefault("num_gpus", gpus_per_actor)
    ray_remote_args.setdefault("max_restarts", max_restarts)
    ray_remote_args.setdefault("max_task_retries", max_task_retries)
    with warnings.catch_warnings():
        # Ray 2.60 takes max_restarts / max_task_retries only through **ray_remote_args, which it marks as
        # deprecated (removal planned for 2.64, past the pinned version): the warning is about Ray, not the caller.
        warnings.filterwarnings("ignore", message=".*ray_remote_args.* is deprecated", category=DeprecationWarning)
        return ds.map_batches(
            GGROAligner,
            fn_constructor_kwargs={
                "policy": policy,
                "reward": reward,
                "config": config,
                "device": device or ("cuda" if gpus_per_actor > 0 else "cpu"),
                "dtype": dtype,
            },
            batch_size=batch_size,
            batch_format="pyarrow",
            # A GGRO batch runs for seconds to minutes: one batch queued per actor keeps the pool balanced.
            compute=ray.data.ActorPoolStrategy(size=num_actors, max_tasks_in_flight_per_actor=1),
            num_cpus=cpus_per_actor,
            **ray_remote_args,
        )


def _blocks(items: list[dict[str, Any]], batch_size: int) -> list[Any]:
    """The rows as Arrow tables of whole batches, in order: one batch per block (a batch is then one actor task,
    retried alone when its actor dies), or a few per block when there would be more than 10,000 (a block is an
    object in the store). ``map_batches`` then cuts the same batches as the local engine, rows
    ``[k * batch_size, (k + 1) * batch_size)``, so that both decode each row beside the same rows."""
    import pyarrow as pa

    per_block = batch_size * math.ceil(math.ceil(len(items) / batch_size) / _MAX_BLOCKS)
    return [pa.Table.from_pylist(items[i : i + per_block]) for i in range(0, len(items), per_block)]


def run_ray(
    rows: Sequence[InputRow],
    sink: RecordSink,
    *,
    batch_size: int,
    policy: str | None,
    reward: str | RewardModel | None,
    config: GGROConfig | None,
    device: str | None,
    dtype: str,
    num_actors: int,
    gpus_per_actor: float,
    cpus_per_actor: float,
    address: str | None,
    max_restarts: int,
    max_task_retries: int,
    progress: bool,
) -> None:
    """The Ray engine of :func:`ggro.align.run_align`: the checked rows as a Dataset (whole batches per block),
    :func:`align_dataset`, and each finished block handed to ``sink`` as it arrives. Uses the Ray this process
    is connected to, else connects to ``address`` or starts a local one (shut down at the end)."""
    ray = _ray()
    started_here = not ray.is_initialized()
    if started_here:
        if address:
            ray.init(address=address)
        else:
            ray.init(include_dashboard=False)
    context = ray.data.DataContext.get_current()
    bars = context.enable_progress_bars
    if progress:
        context.enable_progress_bars = False  # the job's own bar counts rows
    try:
        # Only strings in the table (a chat as JSON text; "" is "absent"): every block has the same schema.
        items = [
            {
                "id": r.id,
                "prompt": r.prompt if isinstance(r.prompt, str) else "",
                "messages": "" if isinstance(r.prompt, str) else json.dumps(r.prompt, ensure_ascii=False),
            }
            for r in rows
        ]
        ds = ray.data.from_arrow(_blocks(items, batch_size))
        aligned = align_dataset(
            ds,
            policy=policy,
            reward=reward,
            config=config,
            batch_size=batch_size,
            num_actors=num_actors,
            gpus_per_actor=gpus_per_actor,
            cpus_per_actor=cpus_per_actor,
            device=device,
            dtype=dtype,
            max_restarts=max_restarts,
            max_task_retries=max_task_retries,
        )
        for block in aligned.iter_batches(batch_size=None, batch_format="pyarrow"):
            sink([unflatten_record(fields) for fields in block.select(list(OUTPUT_COLUMNS)).to_pylist()])
    finally:
        context.enable_progress_bars = bars
        if started_here:
            ray.shutdown()
