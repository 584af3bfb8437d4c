"""`ggro reference-check` on the authors'-release fixtures (real SmolLM2 + seeded RM head).

Without the fixtures these tests skip, except under GGRO_REQUIRE_REFERENCE_FIXTURES=1 (CI's .ci/run), where
they fail: CI must not pass by skipping the check the README says it requires.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import REQUIRE_FIXTURES_ENV, required_fixtures_dir
from ggro.cli import main


@pytest.mark.slow
def test_reference_check_passes_on_shared_fixtures(capsys: pytest.CaptureFixture[str]) -> None:
    directory = required_fixtures_dir()
    cases = sorted(directory.glob("case_*.json"))
    code = main(["reference-check", str(directory)])
    out = capsys.readouterr().out
    print(out)
    assert out.strip().splitlines()[-1] == f"{len(cases)} passed, 0 failed"
    assert code == 0


@pytest.mark.slow
def test_reference_check_reports_failures(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    directory = required_fixtures_dir()
    case = json.loads((directory / "case_18.json").read_text())
    case["output"]["response_token_ids"][3] += 1  # corrupt one expected token
    (tmp_path / "case_18.json").write_text(json.dumps(case))
    assert main(["reference-check", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "case_18: FAIL" in out and "response ids differ from token 3" in out
    assert out.strip().splitlines()[-1] == "0 passed, 1 failed"


# Not slow: what the two tests above do when the fixtures are missing (no model is loaded before that).
def test_missing_fixtures_skip_unless_required(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("GGRO_REFERENCE_FIXTURES", str(tmp_path / "nowhere"))
    for required, outcome in (("1", pytest.fail.Exception), ("", pytest.skip.Exception), ("0", pytest.skip.Exception)):
        monkeypatch.setenv(REQUIRE_FIXTURES_ENV, required)
        with pytest.raises(outcome, match=f"reference fixtures not found at {tmp_path / 'nowhere'}"):
            test_reference_check_passes_on_shared_fixtures(capsys)
        with pytest.raises(outcome, match="reference fixtures not found"):
            test_reference_check_reports_failures(tmp_path, capsys)
    # A directory without cases is as missing as no directory (reference-check would find nothing to check).
    monkeypatch.setenv("GGRO_REFERENCE_FIXTURES", str(tmp_path))
    monkeypatch.setenv(REQUIRE_FIXTURES_ENV, "1")
    with pytest.raises(pytest.fail.Exception, match="GGRO_REQUIRE_REFERENCE_FIXTURES is set"):
        test_reference_check_passes_on_shared_fixtures(capsys)
