"""`ggro reference-check` on the authors'-release fixtures (real SmolLM2 + seeded RM head)."""

from __future__ import annotations

import pytest

from conftest import fixtures_dir
from ggro.cli import main

pytestmark = pytest.mark.slow


def test_reference_check_passes_on_shared_fixtures(capsys: pytest.CaptureFixture[str]) -> None:
    directory = fixtures_dir()
    if not directory.is_dir():
        pytest.skip(f"reference fixtures not found at {directory} (set GGRO_REFERENCE_FIXTURES)")
    cases = sorted(directory.glob("case_*.json"))
    code = main(["reference-check", str(directory)])
    out = capsys.readouterr().out
    print(out)
    assert out.strip().splitlines()[-1] == f"{len(cases)} passed, 0 failed"
    assert code == 0


def test_reference_check_reports_failures(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    directory = fixtures_dir()
    if not directory.is_dir():
        pytest.skip(f"reference fixtures not found at {directory}")
    case = json.loads((directory / "case_18.json").read_text())
    case["output"]["response_token_ids"][3] += 1  # corrupt one expected token
    (tmp_path / "case_18.json").write_text(json.dumps(case))
    assert main(["reference-check", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "case_18: FAIL" in out and "response ids differ from token 3" in out
    assert out.strip().splitlines()[-1] == "0 passed, 1 failed"
