"""Helpers shared by the alignment-job tests (tests/test_align.py, tests/test_align_ray.py)."""

from __future__ import annotations

import csv
import json
import math
from collections import Counter
from pathlib import Path
from typing import Any

from ggro.align.data import OUTPUT_COLUMNS, unflatten_record

MAX_NEW_TOKENS = 6

# Entropies are read from the policy's logits of a batched forward pass: a row decoded beside other rows gets
# them to within a few float32 ulps of its one-at-a-time values (measured: <= 3e-7 relative), while every
# token, text and reward is identical. These two event fields are compared with a float32 tolerance.
FLOAT32_FIELDS = {"entropy", "entropy_at_end"}
FLOAT32_RTOL = 1e-5


def input_rows(n: int = 8) -> list[dict[str, Any]]:
    """``n`` rows: prompts of different lengths, one chat (``messages``), one empty prompt and one too long for
    the tiny models' 4096-token context (both become error rows)."""
    rows: list[dict[str, Any]] = [
        {"id": i, "prompt": f"Question {i}: " + "tell me more " * (i % 3 + 1)} for i in range(n)
    ]
    rows[1] = {"id": 1, "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"}]}
    rows[2] = {"id": 2, "prompt": ""}
    rows[3] = {"id": 3, "prompt": "x" * 5000}
    return rows


ERROR_IDS = {2, 3}


def write_input(path: Path, rows: list[dict[str, Any]]) -> Path:
    """``rows`` as JSONL, CSV (the chat as JSON text) or Parquet, by ``path``'s extension."""
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    elif path.suffix == ".csv":
        with path.open("w", encoding="utf-8", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=["id", "prompt", "messages"])
            writer.writeheader()
            for r in rows:
                chat = json.dumps(r["messages"]) if "messages" in r else ""
                writer.writerow({"id": r["id"], "prompt": r.get("prompt", ""), "messages": chat})
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.Table.from_pylist(
            [{"id": r["id"], "prompt": r.get("prompt"), "messages": r.get("messages")} for r in rows]
        )
        pq.write_table(table, path)
    return path


def read_output(path: Path) -> list[dict[str, Any]]:
    """An output file's records (nested columns as JSON values, ids as the input's integers)."""
    if path.suffix == ".jsonl":
        records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    elif path.suffix == ".csv":
        csv.field_size_limit(2**31 - 1)  # the events of a response can be long
        with path.open(encoding="utf-8", newline="") as handle:
            reader = csv.DictReader(handle)
            assert reader.fieldnames == list(OUTPUT_COLUMNS)
            records = [unflatten_record(row, from_text=True) for row in reader]
        for r in records:
            r["id"] = int(r["id"])
    else:
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        assert table.column_names == list(OUTPUT_COLUMNS)
        records = [unflatten_record(row) for row in table.to_pylist()]
    for r in records:
        assert list(r) == list(OUTPUT_COLUMNS), list(r)
    return records


def ids_once(records: list[dict[str, Any]]) -> Counter[Any]:
    """How often each id occurs (every count should be 1)."""
    return Counter(r["id"] for r in records)


def _same(a: Any, b: Any, key: str, where: str, problems: list[str], exact: bool = False) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        if set(a) != set(b):
            problems.append(f"{where}: keys {sorted(a)} != {sorted(b)}")
            return
        for k in a:
            _same(a[k], b[k], k, f"{where}.{k}", problems, exact)
    elif isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            problems.append(f"{where}: {len(a)} items != {len(b)}")
            return
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _same(x, y, key, f"{where}[{i}]", problems, exact)
    elif not exact and key in FLOAT32_FIELDS and isinstance(a, float) and isinstance(b, float):
        if not math.isclose(a, b, rel_tol=FLOAT32_RTOL, abs_tol=FLOAT32_RTOL):
            problems.append(f"{where}: {a} != {b}")
    elif a != b or type(a) is not type(b):
        problems.append(f"{where}: {a!r} != {b!r}")


def assert_same_rows(
    got: list[dict[str, Any]], expected: list[dict[str, Any]], *, names: bool = True, exact: bool = False
) -> None:
    """The same ids in the same order with the same records, except the batch's ``seconds`` and float32 ulps in
    the events' entropies (see FLOAT32_FIELDS; ``exact``: those too must be equal, as they are when the rows were
    batched alike); ``names=False``: policy and reward names not compared."""
    assert [r["id"] for r in got] == [r["id"] for r in expected]
    skip = {"seconds"} if names else {"seconds", "policy", "reward"}
    problems: list[str] = []
    for g, e in zip(got, expected, strict=True):
        _same(
            {k: v for k, v in g.items() if k not in skip},
            {k: v for k, v in e.items() if k not in skip},
            "",
            f"id {g['id']}",
            problems,
        )
    assert not problems, problems[:10]
