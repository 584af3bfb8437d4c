"""`ggro align` on the local engine, with tiny models saved to disk: the formats, resuming (after a partial
output with a torn line, after a killed run, after the input grew), error rows, and bad input refused before any
model loads."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from align_support import (
    ERROR_IDS,
    MAX_NEW_TOKENS,
    assert_same_rows,
    ids_once,
    input_rows,
    read_output,
    write_input,
)
from ggro import GGROConfig, GGRODecoder
from ggro.align import OUTPUT_COLUMNS, Aligner, AlignInputError, run_align
from ggro.cli import main
from ggro.testing import save_tiny_models, tiny_decoder

CONFIG = GGROConfig(max_new_tokens=MAX_NEW_TOKENS)
PYARROW = pytest.mark.skipif(
    importlib.util.find_spec("pyarrow") is None, reason="Parquet needs pyarrow (pip install -e '.[ray]')"
)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    policy, reward = save_tiny_models(tmp_path_factory.mktemp("tiny"), seed=0)
    return str(policy), str(reward)


def align(models: tuple[str, str], source: Path, output: Path, **options: Any) -> Any:
    options.setdefault("batch_size", 3)
    return run_align(source, output, policy=models[0], reward=models[1], config=CONFIG, progress=False, **options)


@pytest.fixture(scope="module")
def reference(models: tuple[str, str], tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """The rows decoded one at a time, JSONL in and out."""
    folder = tmp_path_factory.mktemp("reference")
    source = write_input(folder / "in.jsonl", input_rows())
    summary = align(models, source, folder / "out.jsonl", batch_size=1)
    assert (summary.total, summary.skipped, summary.decoded, summary.errors) == (8, 0, 8, 2)
    return read_output(folder / "out.jsonl")


def test_reference_rows(reference: list[dict[str, Any]], models: tuple[str, str]) -> None:
    assert [r["id"] for r in reference] == list(range(8))
    for r in reference:
        if r["id"] in ERROR_IDS:
            assert r["text"] is None and r["final_reward"] is None and r["error"]
        else:
            assert r["error"] is None and isinstance(r["text"], str) and isinstance(r["final_reward"], float)
            assert r["usage"]["completion_tokens"] <= MAX_NEW_TOKENS and r["segments"]
            assert r["num_nudges"] == sum(n["kept"] for n in r["nudges"])
            assert "sequence_index" not in r["segments"][0]  # the row's place in its batch is no property of the row
        assert (r["policy"], r["reward"]) == (models[0], models[1])
    by_id = {r["id"]: r for r in reference}
    assert by_id[2]["error"] == "ValueError: prompt: must be a non-empty string"
    assert "do not fit the model's context window of 4096 tokens" in by_id[3]["error"]


@pytest.mark.parametrize(
    ("source_ext", "output_ext"),
    [pytest.param("csv", "parquet", marks=PYARROW), pytest.param("parquet", "csv", marks=PYARROW), ("jsonl", "jsonl")],
)
def test_formats_and_batch_sizes_give_the_same_rows(
    models: tuple[str, str], reference: list[dict[str, Any]], tmp_path: Path, source_ext: str, output_ext: str
) -> None:
    source = write_input(tmp_path / f"in.{source_ext}", input_rows())
    output = tmp_path / f"out.{output_ext}"
    summary = align(models, source, output, batch_size=8 if output_ext == "jsonl" else 3)
    assert (summary.decoded, summary.errors) == (8, 2)
    records = read_output(output)
    if source_ext == "csv":  # CSV ids are text
        assert all(isinstance(r["id"], str) for r in records)
        records = [{**r, "id": int(r["id"])} for r in records]
    assert_same_rows(records, reference)
    assert not output.with_name(output.name + ".partial.jsonl").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([source.name, output.name])  # no temporary left


def test_resume_after_a_partial_output_with_a_torn_line(
    models: tuple[str, str], reference: list[dict[str, Any]], tmp_path: Path
) -> None:
    source = write_input(tmp_path / "in.jsonl", input_rows())
    output = tmp_path / "out.jsonl"
    lines = [json.dumps(r) + "\n" for r in reference]
    output.write_text("".join(lines[:3]) + lines[3][: len(lines[3]) // 2], encoding="utf-8")  # killed mid-write
    summary = align(models, source, output)
    assert (summary.skipped, summary.decoded) == (3, 5)
    records = read_output(output)
    assert set(ids_once(records).values()) == {1}
    assert_same_rows(records, reference)
    again = align(models, source, output)
    assert (again.skipped, again.decoded) == (8, 0)
    assert read_output(output) == records


@pytest.mark.parametrize("output_ext", ["csv", pytest.param("parquet", marks=PYARROW)])
def test_resume_from_the_journal_of_a_csv_or_parquet_output(
    models: tuple[str, str], reference: list[dict[str, Any]], tmp_path: Path, output_ext: str
) -> None:
    source = write_input(tmp_path / "in.jsonl", input_rows())
    output = tmp_path / f"out.{output_ext}"
    journal = tmp_path / f"out.{output_ext}.partial.jsonl"
    lines = [json.dumps(r) + "\n" for r in reference]
    journal.write_text("".join(lines[4:6]) + lines[6][:40], encoding="utf-8")
    summary = align(models, source, output)
    assert (summary.skipped, summary.decoded) == (2, 6)
    assert_same_rows(read_output(output), reference)
    assert not journal.exists()


def test_a_grown_input_adds_only_its_new_rows_to_a_finished_output(
    models: tuple[str, str], reference: list[dict[str, Any]], tmp_path: Path
) -> None:
    source = write_input(tmp_path / "in.jsonl", input_rows()[:5])
    output = tmp_path / "out.csv"
    assert align(models, source, output).decoded == 5
    write_input(source, input_rows())
    summary = align(models, source, output)
    assert (summary.skipped, summary.decoded) == (5, 3)
    assert_same_rows(read_output(output), reference)


def test_a_killed_run_resumes_without_losing_or_repeating_ids(models: tuple[str, str], tmp_path: Path) -> None:
    rows = [{"id": f"row-{i}", "prompt": f"Prompt number {i}"} for i in range(12)]
    source = write_input(tmp_path / "in.jsonl", rows)
    output = tmp_path / "out.jsonl"
    command = [sys.executable, "-m", "ggro.cli", "align", str(source), "--output", str(output), "--no-progress"]
    command += ["--policy", models[0], "--reward", models[1], "--batch-size", "1", "--max-new-tokens", "16"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and process.poll() is None:
            if output.exists() and output.read_text(encoding="utf-8").count("\n") >= 2:
                break
            time.sleep(0.02)
        assert process.poll() is None, "the run ended before it could be killed"
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait(30)
    written = output.read_text(encoding="utf-8").count("\n")
    assert 2 <= written < len(rows)
    summary = run_align(
        source, output, policy=models[0], reward=models[1], config=GGROConfig(max_new_tokens=16), progress=False
    )
    assert summary.skipped == written and summary.skipped + summary.decoded == len(rows)
    records = read_output(output)
    assert [r["id"] for r in records] == [r["id"] for r in rows]  # each once, in input order
    assert all(r["error"] is None for r in records)


def test_retry_errors_decodes_failed_rows_again(
    models: tuple[str, str], reference: list[dict[str, Any]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = write_input(tmp_path / "in.jsonl", input_rows())
    output = tmp_path / "out.jsonl"
    generate = GGRODecoder.generate

    def failing(self: GGRODecoder, prompts: Any, **kwargs: Any) -> Any:
        if any(isinstance(p, str) and p.startswith("Question 5") for p in prompts):
            raise RuntimeError("out of memory (simulated)")
        return generate(self, prompts, **kwargs)

    monkeypatch.setattr(GGRODecoder, "generate", failing)
    first = align(models, source, output)
    assert first.errors == 3  # the empty, the too long, and row 5 (its batch was redone one row at a time)
    by_id = {r["id"]: r for r in read_output(output)}
    assert by_id[5]["error"] == "RuntimeError: out of memory (simulated)"
    assert by_id[4]["error"] is None and by_id[6]["error"] is None  # its batch mates were decoded
    monkeypatch.setattr(GGRODecoder, "generate", generate)
    assert align(models, source, output).decoded == 0  # error rows are done unless asked
    second = align(models, source, output, retry_errors=True)
    assert (second.skipped, second.decoded, second.errors) == (5, 3, 2)
    assert_same_rows(read_output(output), reference)


def test_aligner_reports_unreadable_rows_and_decodes_the_rest() -> None:
    aligner = Aligner(tiny_decoder(0, CONFIG), "tiny")
    records = aligner.align(
        [
            (1, "Hello"),
            (2, [{"role": "user"}]),
            (3, ValueError("input: no 'prompt' or 'messages' field")),
            (4, [{"role": "user", "content": "Hi"}]),
        ]
    )
    assert [r["id"] for r in records] == [1, 2, 3, 4]
    assert [r["error"] is None for r in records] == [True, False, False, True]
    assert records[1]["error"].startswith("TypeError: prompt: message 0 needs string 'role' and 'content'")
    assert records[2]["error"] == "ValueError: input: no 'prompt' or 'messages' field"
    assert all(list(r) == list(OUTPUT_COLUMNS) for r in records)


# ---------------------------------------------------------------------------------------------------- bad input
def _jsonl(path: Path, *rows: Any) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def _text(path: Path, content: str | bytes) -> Path:
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def _folder(path: Path) -> Path:
    path.mkdir()
    return path


BAD_INPUTS: dict[str, tuple[Any, str]] = {
    "missing file": (lambda d: d / "nope.jsonl", "nope.jsonl: no such file"),
    "a directory": (lambda d: _folder(d / "dir.jsonl"), "dir.jsonl: not a file"),
    "unknown extension": (lambda d: _jsonl(d / "in.txt", {"id": 1, "prompt": "x"}), "must be a .jsonl, .csv or"),
    "empty jsonl": (lambda d: _jsonl(d / "in.jsonl"), "in.jsonl: no rows (the file is empty)"),
    "empty csv": (lambda d: _text(d / "in.csv", ""), "in.csv: no rows"),
    "header-only csv": (lambda d: _text(d / "in.csv", "id,prompt\n"), "in.csv: no rows"),
    "not json": (lambda d: _jsonl(d / "in.jsonl", {"id": 1, "prompt": "a"}, "{oops"), "in.jsonl, line 2: not valid"),
    "not an object": (lambda d: _jsonl(d / "in.jsonl", [1, 2]), "in.jsonl, line 1: expected a JSON object"),
    "no prompt field": (
        lambda d: _jsonl(d / "in.jsonl", {"id": 1, "prompt": "a"}, {"id": 2, "text": "b"}),
        "in.jsonl, line 2: no 'prompt' or 'messages' field",
    ),
    "no prompt column": (
        lambda d: _text(d / "in.csv", "id,text\n1,hello\n"),
        "in.csv, line 1: the header has no 'prompt' or 'messages' column (columns: id, text)",
    ),
    "no id column": (
        lambda d: _text(d / "in.csv", "prompt\nhello\n"),
        "in.csv, line 1: the header has no 'id' column",
    ),
    "no id": (lambda d: _jsonl(d / "in.jsonl", {"prompt": "a"}), "in.jsonl, line 1: no 'id' field"),
    "float id": (lambda d: _jsonl(d / "in.jsonl", {"id": 1.5, "prompt": "a"}), "line 1: id must be a string or an"),
    "duplicated id": (
        lambda d: _jsonl(
            d / "in.jsonl", {"id": "a", "prompt": "x"}, {"id": "b", "prompt": "y"}, {"id": "a", "prompt": "z"}
        ),
        "in.jsonl, line 3: duplicated id 'a' (first at line 1)",
    ),
    "duplicated id in csv": (
        lambda d: _text(d / "in.csv", 'id,prompt\n7,x\n8,"two\nlines"\n7,z\n'),
        "in.csv, line 5: duplicated id '7' (first at line 2)",
    ),
    "mixed ids": (
        lambda d: _jsonl(d / "in.jsonl", {"id": 1, "prompt": "x"}, {"id": "2", "prompt": "y"}),
        "in.jsonl, line 2: id '2' is a string but line 1 has an integer",
    ),
    "both prompt and messages": (
        lambda d: _jsonl(d / "in.jsonl", {"id": 1, "prompt": "x", "messages": [{"role": "user", "content": "y"}]}),
        "line 1: the row has both 'prompt' and 'messages'",
    ),
    "bad chat json in csv": (
        lambda d: _text(d / "in.csv", 'id,messages\n1,"[{""role"": ""user"""\n'),
        "in.csv, line 2: 'messages' is not valid JSON",
    ),
    "chat not a list": (
        lambda d: _jsonl(d / "in.jsonl", {"id": 1, "messages": {"role": "user", "content": "x"}}),
        "line 1: 'messages' must be a list of {role, content} objects, got dict",
    ),
    "prompt not text": (lambda d: _jsonl(d / "in.jsonl", {"id": 1, "prompt": 5}), "line 1: 'prompt' must be text"),
    "not utf-8": (lambda d: _text(d / "in.jsonl", b'{"id": 1, "prompt": "\xff"}\n'), "not UTF-8"),
    "not parquet": (lambda d: _jsonl(d / "in.parquet", {"id": 1}), "in.parquet: not a readable Parquet file"),
    "ragged csv": (lambda d: _text(d / "in.csv", "id,prompt\n1,a\n2,b,c\n"), "in.csv, line 3: more fields than"),
}


@pytest.mark.parametrize("case", [pytest.param(c, marks=PYARROW) if "parquet" in c else c for c in BAD_INPUTS])
def test_bad_input_is_refused_before_any_model_loads(
    case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_model(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a model was loaded before the input was checked")

    monkeypatch.setattr(Aligner, "load", no_model)
    make, message = BAD_INPUTS[case]
    source = make(tmp_path)
    with pytest.raises(AlignInputError) as caught:
        run_align(source, tmp_path / "out.jsonl", progress=False)
    assert message in str(caught.value)
    assert not (tmp_path / "out.jsonl").exists()


def test_an_output_of_another_input_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Aligner, "load", lambda *a, **k: pytest.fail("a model was loaded"))
    source = _jsonl(tmp_path / "in.jsonl", {"id": 1, "prompt": "x"})
    output = _jsonl(tmp_path / "out.jsonl", {"id": 9, "text": "y"}, {"id": 1, "text": "z"})
    with pytest.raises(AlignInputError, match=r"out.jsonl, line 1: id 9 is not in the input"):
        run_align(source, output, progress=False)
    output = _jsonl(tmp_path / "out.jsonl", {"id": 1, "text": "y"}, "garbage", {"id": 2})
    with pytest.raises(AlignInputError, match=r"out.jsonl, line 2: not an output record"):
        run_align(source, output, progress=False)
    with pytest.raises(AlignInputError, match="must not be the input"):
        run_align(source, source, progress=False)


def test_cli_reports_bad_input_with_the_file_and_row(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = _jsonl(tmp_path / "in.jsonl", {"id": 1, "prompt": "x"}, {"id": 1, "prompt": "y"})
    assert main(["align", str(source), "--output", str(tmp_path / "out.csv")]) == 2
    assert f"ggro: error: {source}, line 2: duplicated id 1 (first at line 1)" in capsys.readouterr().err


@PYARROW
def test_cli_align_writes_the_output(
    models: tuple[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = write_input(tmp_path / "in.jsonl", input_rows(5))
    output = tmp_path / "out.parquet"
    args = ["align", str(source), "-o", str(output), "--policy", models[0], "--reward", models[1]]
    assert main([*args, "--max-new-tokens", "4", "--batch-size", "2", "--no-progress"]) == 0
    assert "5 rows in" in capsys.readouterr().out
    assert [r["id"] for r in read_output(output)] == [0, 1, 2, 3, 4]


def test_importing_ggro_does_not_import_ray() -> None:
    code = "import sys, ggro, ggro.align, ggro.distributed, ggro.cli; sys.exit('ray' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_a_second_run_on_the_same_output_is_refused_while_one_runs(tmp_path: Path) -> None:
    from ggro.align import OutputFile

    source = _jsonl(tmp_path / "in.jsonl", {"id": 1, "prompt": "x"})
    running = OutputFile(tmp_path / "out.jsonl")
    running.lock()
    try:
        with pytest.raises(AlignInputError, match="another run is writing this output"):
            run_align(source, tmp_path / "out.jsonl", progress=False)
    finally:
        running.release()
    assert not list(tmp_path.glob(".*lock"))


def test_a_csv_field_over_128_kib_is_read(tmp_path: Path) -> None:
    import csv

    from ggro.align import read_input

    limit = csv.field_size_limit()
    (row,) = read_input(_text(tmp_path / "in.csv", "id,prompt\n1," + "x" * 200_000 + "\n"))
    assert row.prompt == "x" * 200_000 and row.where == "line 2"
    assert csv.field_size_limit() == limit  # restored
