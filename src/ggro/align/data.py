"""The files of an alignment job: the input read and checked before any model loads, the output rows, and the
journal that makes a run resumable.

**Input** (``.jsonl``, ``.csv`` or ``.parquet``): one row per prompt with an ``id`` (a non-empty string or an
integer, unique, one kind per file) and either ``prompt`` (text) or ``messages`` (a chat: a list of
``{"role", "content"}`` objects; in CSV, and optionally elsewhere, that list as a JSON string). Anything wrong
with the file's shape (unreadable, empty, no ``id`` / ``prompt`` / ``messages``, a duplicated id, a bad JSON
chat) is an :class:`AlignInputError` naming the file and the row. An empty prompt is not: it becomes an output
row with an ``error``, like a prompt too long for the model.

**Output** (format from the extension): one row per input row, :data:`OUTPUT_COLUMNS`. In JSONL ``nudges``,
``segments`` and ``usage`` are JSON values; in CSV and Parquet they are JSON text.

**Resuming.** Rows are appended to a journal as each batch finishes (one JSON line per row, flushed and
fsynced per batch): for a ``.jsonl`` output the output itself, for ``.csv`` / ``.parquet`` the sidecar
``OUTPUT.partial.jsonl``, from which the final file is written (to a temporary file, then renamed) once every
row is done. A rerun reads what the journal (and a finished output) already hold and decodes only the other
ids. A kill can tear the journal's last line; it is dropped (and that row redone). When a run completes, a
JSONL output is rewritten in input order the same way (temporary file, rename). A lock file (``.OUTPUT.lock``,
advisory) refuses a second run on the same output while one runs.
"""

from __future__ import annotations

import contextlib
import csv
import io
import itertools
import json
import math
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal

__all__ = [
    "NESTED_COLUMNS",
    "OUTPUT_COLUMNS",
    "RESULT_COLUMNS",
    "AlignInputError",
    "InputRow",
    "OutputFile",
    "RecordSink",
    "file_format",
    "flatten_record",
    "prompt_from_fields",
    "read_input",
    "records_to_arrow",
    "unflatten_record",
]

Format = Literal["jsonl", "csv", "parquet"]
RowId = str | int
RecordSink = Callable[[Sequence[Mapping[str, Any]]], None]
"""Receives each decoded batch's records (batches in any order); the job journals them."""

_FORMATS: dict[str, Format] = {".jsonl": "jsonl", ".csv": "csv", ".parquet": "parquet"}

RESULT_COLUMNS = (
    "text",
    "finish_reason",
    "num_nudges",
    "nudges",
    "segments",
    "usage",
    "final_reward",
    "seconds",
    "policy",
    "reward",
    "error",
)
"""What the job adds to a row: the response, its nudge and segment events, token and pass counts, the final
reward, the batch's seconds, the policy and reward names, and ``error`` (None unless the row failed)."""
OUTPUT_COLUMNS = ("id", *RESULT_COLUMNS)
NESTED_COLUMNS = ("nudges", "segments", "usage")
"""Columns holding JSON values (lists of events, the usage counts); JSON text in CSV, Parquet and Arrow."""
_NUMBER_COLUMNS = {"num_nudges": int, "final_reward": float, "seconds": float}


class AlignInputError(ValueError):
    """The input (or an existing output) cannot be used; raised before any model loads."""


@dataclass(frozen=True)
class InputRow:
    """One checked input row: ``prompt`` is the decoder's input (text, or a list of chat messages)."""

    index: int
    where: str
    id: RowId
    prompt: str | list[dict[str, Any]]


def file_format(path: str | os.PathLike[str], what: str = "input") -> Format:
    suffix = Path(path).suffix.lower()
    if suffix not in _FORMATS:
        raise AlignInputError(f"{path}: the {what} must be a .jsonl, .csv or .parquet file (got {suffix or 'none'!r})")
    return _FORMATS[suffix]


# -------------------------------------------------------------------------------------------------- input
def read_input(path: str | os.PathLike[str]) -> list[InputRow]:
    """Every row of ``path``, checked (see the module docstring); AlignInputError on the first problem."""
    source = Path(path)
    fmt = file_format(source)
    if not source.is_file():
        raise AlignInputError(f"{source}: no such file" if not source.exists() else f"{source}: not a file")
    raw = {"jsonl": _jsonl_rows, "csv": _csv_rows, "parquet": _parquet_rows}[fmt](source)
    rows: list[InputRow] = []
    seen: dict[RowId, str] = {}
    id_kind: tuple[type, str] | None = None
    for where, fields in raw:
        row_id = _checked_id(fields, source, where)
        kind = int if isinstance(row_id, int) else str
        if id_kind is None:
            id_kind = (kind, where)
        elif kind is not id_kind[0]:
            raise AlignInputError(
                f"{source}, {where}: id {row_id!r} is {_kind_name(kind)} but {id_kind[1]} has {_kind_name(id_kind[0])} "
                "(use one kind of id in a file)"
            )
        if row_id in seen:
            raise AlignInputError(f"{source}, {where}: duplicated id {row_id!r} (first at {seen[row_id]})")
        seen[row_id] = where
        try:
            prompt = prompt_from_fields(fields, require=fmt == "jsonl")
        except ValueError as error:
            raise AlignInputError(f"{source}, {where}: {error}") from None
        rows.append(InputRow(len(rows), where, row_id, prompt))
    if not rows:
        raise AlignInputError(f"{source}: no rows (the file is empty)")
    return rows


def prompt_from_fields(fields: Mapping[str, Any], *, require: bool = True) -> str | list[dict[str, Any]]:
    """The prompt of a row: its ``messages`` (a list of dicts, or that list as JSON text) when present, else its
    ``prompt`` text. ``""`` and None count as absent, and a row with neither gives ``""`` (decoded as an error
    row); with ``require``, a row without either field at all is a ValueError, as are both present and a
    malformed value."""
    messages, prompt = fields.get("messages"), fields.get("prompt")
    has_messages = messages is not None and messages != ""
    has_prompt = prompt is not None and prompt != ""
    if has_messages and has_prompt:
        raise ValueError("the row has both 'prompt' and 'messages'; give one")
    if has_messages:
        if isinstance(messages, str):
            try:
                messages = json.loads(messages)
            except json.JSONDecodeError as error:
                raise ValueError(f"'messages' is not valid JSON ({error.msg} at character {error.pos})") from None
        if isinstance(messages, str | bytes | Mapping) or not isinstance(messages, Sequence):
            raise ValueError(f"'messages' must be a list of {{role, content}} objects, got {type(messages).__name__}")
        if not all(isinstance(m, Mapping) for m in messages):
            raise ValueError("'messages' must be a list of {role, content} objects")
        return [dict(m) for m in messages]
    if has_prompt:
        if not isinstance(prompt, str):
            raise ValueError(f"'prompt' must be text, got {type(prompt).__name__}")
        return prompt
    if require and "prompt" not in fields and "messages" not in fields:
        raise ValueError("no 'prompt' or 'messages' field")
    return ""


def _checked_id(fields: Mapping[str, Any], source: Path, where: str) -> RowId:
    if "id" not in fields:
        raise AlignInputError(f"{source}, {where}: no 'id' field")
    value = fields["id"]
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise AlignInputError(
            f"{source}, {where}: id must be a string or an integer, got {type(value).__name__} {value!r}"
        )
    if isinstance(value, str) and not value.strip():
        raise AlignInputError(f"{source}, {where}: empty id")
    return value


def _kind_name(kind: type) -> str:
    return "an integer" if kind is int else "a string"


def _open_text(source: Path) -> IO[str]:
    try:
        return source.open(encoding="utf-8", newline="")
    except OSError as error:
        raise AlignInputError(f"{source}: cannot read the file ({error.strerror})") from None


def _jsonl_rows(source: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    with _open_text(source) as handle:
        try:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    value = json.loads(line)
                except json.JSONDecodeError as error:
                    raise AlignInputError(f"{source}, line {number}: not valid JSON ({error.msg})") from None
                if not isinstance(value, dict):
                    raise AlignInputError(
                        f"{source}, line {number}: expected a JSON object, got {type(value).__name__}"
                    )
                yield f"line {number}", value
        except UnicodeDecodeError as error:
            raise AlignInputError(f"{source}: not UTF-8 text ({error.reason} at byte {error.start})") from None


@contextlib.contextmanager
def _long_csv_fields() -> Iterator[None]:
    """Let the csv module read fields over its default 128 KiB (a long chat, a long response's events)."""
    limit = csv.field_size_limit()
    csv.field_size_limit(2**31 - 1)
    try:
        yield
    finally:
        csv.field_size_limit(limit)


def _csv_rows(source: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    with _long_csv_fields():
        yield from _csv_fields(source)


def _csv_fields(source: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    with _open_text(source) as handle:
        try:
            reader = csv.DictReader(handle)
            header = reader.fieldnames
            if header is None:
                return  # an empty file: read_input reports it
            if "id" not in header:
                raise AlignInputError(f"{source}, line 1: the header has no 'id' column (columns: {', '.join(header)})")
            if "prompt" not in header and "messages" not in header:
                raise AlignInputError(
                    f"{source}, line 1: the header has no 'prompt' or 'messages' column (columns: {', '.join(header)})"
                )
            for fields in reader:
                where = f"line {reader.line_num}"
                if None in fields:
                    raise AlignInputError(f"{source}, {where}: more fields than the header has columns")
                yield where, dict(fields)
        except csv.Error as error:
            raise AlignInputError(f"{source}: not readable as CSV ({error})") from None
        except UnicodeDecodeError as error:
            raise AlignInputError(f"{source}: not UTF-8 text ({error.reason} at byte {error.start})") from None


def _parquet_rows(source: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    pq = _pyarrow_parquet(f"reading {source}")
    try:
        table = pq.read_table(source)
    except OSError as error:
        raise AlignInputError(f"{source}: cannot read the file ({error.strerror or error})") from None
    except Exception as error:  # pyarrow's ArrowInvalid and friends: not a Parquet file, a torn one
        raise AlignInputError(f"{source}: not a readable Parquet file ({error})") from None
    names = table.column_names
    if table.num_rows and "id" not in names:
        raise AlignInputError(f"{source}: no 'id' column (columns: {', '.join(names)})")
    if table.num_rows and "prompt" not in names and "messages" not in names:
        raise AlignInputError(f"{source}: no 'prompt' or 'messages' column (columns: {', '.join(names)})")
    for number, fields in enumerate(table.to_pylist(), start=1):
        yield f"row {number}", fields


def _pyarrow_parquet(why: str) -> Any:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise AlignInputError(f"{why} needs pyarrow: pip install pyarrow (or 'ggro[ray]')") from None
    return pq


# -------------------------------------------------------------------------------------------------- records
def flatten_record(record: Mapping[str, Any]) -> dict[str, Any]:
    """A record with its nested columns as JSON text (for CSV, Parquet and Arrow)."""
    flat = dict(record)
    for name in NESTED_COLUMNS:
        if flat.get(name) is not None:
            flat[name] = json.dumps(flat[name], ensure_ascii=False, separators=(",", ":"))
    return flat


def unflatten_record(flat: Mapping[str, Any], *, from_text: bool = False) -> dict[str, Any]:
    """The inverse of :func:`flatten_record`; ``from_text``: every value is a string (a CSV row), "" is None."""
    record: dict[str, Any] = {}
    for name in OUTPUT_COLUMNS:
        value = flat.get(name)
        if from_text and value == "" and name != "id":
            value = None if name != "text" or flat.get("error") else ""
        if value is not None and name in NESTED_COLUMNS and isinstance(value, str):
            value = json.loads(value)
        elif value is not None and from_text and name in _NUMBER_COLUMNS:
            value = _NUMBER_COLUMNS[name](value)
        elif isinstance(value, float) and math.isnan(value) and name in _NUMBER_COLUMNS:
            value = None
        record[name] = value
    return record


# -------------------------------------------------------------------------------------------------- output
class OutputFile:
    """An output and its journal: what is done already (:meth:`load`), appending a batch's records
    (:meth:`append`, durable when it returns), and writing the final file (:meth:`finish`).

    Only the ids and the journal's byte offsets are kept in memory (records are read back from the journal
    when the final file is written), except the records of a finished CSV/Parquet output that a rerun adds to.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.format = file_format(self.path, "output")
        self.journal = self.path if self.format == "jsonl" else self.path.with_name(self.path.name + ".partial.jsonl")
        self._handle: IO[bytes] | None = None
        self._index: dict[RowId, tuple[int, int]] = {}  # id -> (offset, length) of its line in the journal
        self._order: list[RowId] = []  # the journal's ids, line by line
        self._size = 0  # the journal's length in bytes
        self._errors: set[RowId] = set()  # ids whose record has an error
        self._final: dict[RowId, dict[str, Any]] = {}  # records of a finished CSV/Parquet output
        self._changed = False  # the final CSV/Parquet file lacks something
        self._lock: IO[bytes] | None = None

    def lock(self) -> None:
        """Hold ``.OUTPUT.lock`` (an advisory lock, where the OS has ``fcntl``) until :meth:`release`: two runs
        appending to one output would interleave their rows."""
        try:
            import fcntl
        except ImportError:  # Windows: no lock
            return
        path = self.path.with_name(f".{self.path.name}.lock")
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = path.open("ab")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            raise AlignInputError(f"{self.path}: another run is writing this output (lock: {path})") from None
        self._lock = handle

    def release(self) -> None:
        self.close()
        if self._lock is not None:
            Path(self._lock.name).unlink(missing_ok=True)
            self._lock.close()
            self._lock = None

    # ------------------------------------------------------------------ reading what is there
    def load(self, rows: Sequence[InputRow], *, retry_errors: bool = False) -> set[RowId]:
        """The ids already written (by a finished CSV/Parquet output, then the journal, whose torn last line,
        if any, is cut off). Ids the input does not have are refused. ``retry_errors``: rows with an error are
        forgotten (the journal is rewritten without them) so that they are decoded again."""
        known = {r.id: r for r in rows}
        if self.format != "jsonl" and self.path.exists():
            self._final = self._read_final(known)
            self._errors = {i for i, r in self._final.items() if r.get("error") is not None}
        self._read_journal(known)
        if self._index and self.format != "jsonl":
            self._changed = True
        if retry_errors and self._errors:
            for row_id in self._errors:
                self._final.pop(row_id, None)
            self._rewrite_journal([i for i in self._index if i not in self._errors])
            self._errors = set()
            self._changed = True
        return set(self._index) | set(self._final)

    def _read_journal(self, known: Mapping[RowId, InputRow]) -> None:
        if not self.journal.exists():
            return
        try:
            data = self.journal.read_bytes()
        except OSError as error:
            raise AlignInputError(f"{self.journal}: cannot read the file ({error.strerror})") from None
        lines = data.split(b"\n")
        lines.pop()  # what follows the last newline: empty unless the last write was cut short (torn)
        offset = 0
        for number, line in enumerate(lines, start=1):
            if line.strip():
                try:
                    value = json.loads(line)
                    if not isinstance(value, dict) or "id" not in value:
                        raise ValueError("not a record")
                except (ValueError, UnicodeDecodeError):
                    if number == len(lines):  # a cut-short last line that ended in a newline all the same
                        break
                    raise AlignInputError(
                        f"{self.journal}, line {number}: not an output record (the file is damaged; move it aside)"
                    ) from None
                row_id = self._known_id(value["id"], known, self.journal, f"line {number}")
                self._index[row_id] = (offset, len(line) + 1)
                self._order.append(row_id)
                if value.get("error") is not None:
                    self._errors.add(row_id)
                else:
                    self._errors.discard(row_id)
            offset += len(line) + 1
        self._size = offset
        if offset < len(data):  # drop the torn tail so that appends start on a fresh line
            with self.journal.open("r+b") as handle:
                handle.truncate(offset)
                handle.flush()
                os.fsync(handle.fileno())

    def _read_final(self, known: Mapping[RowId, InputRow]) -> dict[RowId, dict[str, Any]]:
        records: dict[RowId, dict[str, Any]] = {}
        if self.format == "csv":
            with _long_csv_fields(), _open_text(self.path) as handle:
                reader = csv.DictReader(handle)
                for fields in reader:
                    row_id = self._known_id(fields.get("id"), known, self.path, f"line {reader.line_num}")
                    records[row_id] = {**unflatten_record(fields, from_text=True), "id": row_id}
        else:
            pq = _pyarrow_parquet(f"reading {self.path}")
            try:
                table = pq.read_table(self.path)
            except Exception as error:
                raise AlignInputError(f"{self.path}: not a readable Parquet file ({error}); move it aside") from None
            for number, fields in enumerate(table.to_pylist(), start=1):
                row_id = self._known_id(fields.get("id"), known, self.path, f"row {number}")
                records[row_id] = unflatten_record(fields)
        return records

    @staticmethod
    def _known_id(value: Any, known: Mapping[RowId, InputRow], source: Path, where: str) -> RowId:
        """The input's id for an id read back from an output (a CSV gives text for an integer id)."""
        if value in known and not isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lstrip("-").isdigit() and int(value) in known:
            return int(value)
        raise AlignInputError(
            f"{source}, {where}: id {value!r} is not in the input (is this the output of another input?)"
        )

    # ------------------------------------------------------------------ writing
    def append(self, records: Sequence[Mapping[str, Any]]) -> None:
        """Add a batch's records to the journal; they are on disk (flushed and fsynced) when this returns."""
        if not records:
            return
        if self._handle is None:
            new = not self.journal.exists()
            self.journal.parent.mkdir(parents=True, exist_ok=True)
            self._handle = self.journal.open("ab")
            self._size = self._handle.seek(0, os.SEEK_END)
            if new:
                _fsync_directory(self.journal.parent)
        lines = [(json.dumps(dict(r), ensure_ascii=False) + "\n").encode("utf-8") for r in records]
        self._handle.write(b"".join(lines))
        self._handle.flush()
        os.fsync(self._handle.fileno())
        for r, line in zip(records, lines, strict=True):
            self._index[r["id"]] = (self._size, len(line))
            self._order.append(r["id"])
            self._size += len(line)
            if r.get("error") is not None:
                self._errors.add(r["id"])
        self._changed = True

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def finish(self, rows: Sequence[InputRow]) -> None:
        """Every row is done: write the output in input order (CSV/Parquet from the journal, which is then
        removed; a JSONL output is rewritten only when its lines are not in input order, one per id)."""
        self.close()
        ids = [r.id for r in rows]
        missing = [i for i in ids if i not in self._index and i not in self._final]
        if missing:
            raise RuntimeError(f"{len(missing)} rows have no output yet (first: {missing[0]!r})")
        if self.format == "jsonl":
            if self._order != ids:
                self._rewrite_journal(ids)
            return
        if self._changed or not self.path.exists():
            writer = self._write_csv if self.format == "csv" else self._write_parquet
            _atomic_write(self.path, lambda handle: writer(handle, self._records(ids)))
        self.journal.unlink(missing_ok=True)

    def _records(self, ids: Sequence[RowId]) -> Iterator[dict[str, Any]]:
        """The records of ``ids``, in order: from the journal (read line by line), else the finished output."""
        with contextlib.ExitStack() as stack:
            source = stack.enter_context(self.journal.open("rb")) if self._index else None
            for row_id in ids:
                if source is not None and row_id in self._index:
                    offset, length = self._index[row_id]
                    source.seek(offset)
                    yield json.loads(source.read(length))
                else:
                    yield self._final[row_id]

    def _rewrite_journal(self, ids: Sequence[RowId]) -> None:
        """Rewrite the journal (through a temporary file) with the lines of ``ids`` only, in that order."""
        self.close()
        index: dict[RowId, tuple[int, int]] = {}

        def write(out: IO[bytes]) -> None:
            position = 0
            with self.journal.open("rb") as source:
                for row_id in ids:
                    offset, length = self._index[row_id]
                    source.seek(offset)
                    out.write(source.read(length))
                    index[row_id] = (position, length)
                    position += length

        if self.journal.exists():
            _atomic_write(self.journal, write)
        self._index, self._order = index, list(ids)
        self._size = sum(length for _, length in index.values())

    @staticmethod
    def _write_csv(handle: IO[bytes], records: Iterable[Mapping[str, Any]]) -> None:
        text = io.TextIOWrapper(handle, encoding="utf-8", newline="")
        writer = csv.DictWriter(text, fieldnames=list(OUTPUT_COLUMNS), extrasaction="ignore")
        writer.writeheader()
        for r in records:
            writer.writerow({k: ("" if v is None else v) for k, v in flatten_record(r).items()})
        text.flush()
        text.detach()

    @staticmethod
    def _write_parquet(handle: IO[bytes], records: Iterable[Mapping[str, Any]], chunk: int = 1024) -> None:
        import pyarrow as pa

        pq = _pyarrow_parquet("writing Parquet")
        writer = None
        try:
            pending: list[dict[str, Any]] = []
            for r in itertools.chain(records, [None]):
                if r is not None:
                    pending.append(flatten_record(r))
                if pending and (len(pending) == chunk or r is None):
                    table = records_to_arrow(pending, id_type=writer.schema.field("id").type if writer else None)
                    if writer is None:
                        writer = pq.ParquetWriter(pa.PythonFile(handle, mode="w"), table.schema)
                    writer.write_table(table)
                    pending = []
        finally:
            if writer is not None:
                writer.close()


def records_to_arrow(flat_records: Sequence[Mapping[str, Any]], id_type: Any) -> Any:
    """Flat records (:func:`flatten_record`) as an Arrow table of :data:`OUTPUT_COLUMNS` with fixed types
    (``id_type``: the id column's Arrow type, None to infer it)."""
    import pyarrow as pa

    types = {
        "text": pa.string(),
        "finish_reason": pa.string(),
        "num_nudges": pa.int64(),
        "nudges": pa.string(),
        "segments": pa.string(),
        "usage": pa.string(),
        "final_reward": pa.float64(),
        "seconds": pa.float64(),
        "policy": pa.string(),
        "reward": pa.string(),
        "error": pa.string(),
    }
    ids = [r["id"] for r in flat_records]
    columns = {"id": pa.array(ids, type=id_type)}
    for name, kind in types.items():
        columns[name] = pa.array([r.get(name) for r in flat_records], type=kind)
    return pa.table(columns)


def _atomic_write(path: Path, write: Any) -> None:
    """Write ``path`` through a temporary sibling that replaces it once complete and on disk."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("wb") as handle:
        write(handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    _fsync_directory(path.parent)


def _fsync_directory(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
