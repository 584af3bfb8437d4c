"""A short soak through `GGROLLM` (scripts/soak.py in the ggro repository): memory stays flat and every
output and nudge-event count stays what the first call for its prompt gave."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

SOAK_SCRIPT = Path(__file__).resolve().parents[4] / "scripts" / "soak.py"


def _load_soak() -> ModuleType:
    if not SOAK_SCRIPT.is_file():
        pytest.skip(f"{SOAK_SCRIPT} not found (the soak script lives in the ggro repository)")
    if not Path("/proc/self/status").is_file():
        pytest.skip("RSS is read from /proc/self/status (Linux only)")
    spec = importlib.util.spec_from_file_location("ggro_soak", SOAK_SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass resolves annotations through sys.modules
    spec.loader.exec_module(module)
    return module


@pytest.mark.soak
def test_short_soak_keeps_memory_flat_and_outputs_intact() -> None:
    soak = _load_soak()
    report = soak.run_soak(generations=150, warmup=30, max_new_tokens=8, refinement_steps=3, sample_every=50)
    print("\n" + "\n".join(report.lines()))
    assert report.intact, report.mismatches[:5]
    assert report.checked == report.generations + report.warmup == 180
    assert all(report.calls[path] > 0 for path in soak.PATHS)  # invoke, stream and batch were all exercised
    assert report.nudge_events > 0  # the tiny models always nudge: zero events would mean none were delivered
    assert report.growth_mb < 100, report.rss_samples
