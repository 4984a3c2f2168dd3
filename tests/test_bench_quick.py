"""The benchmarks never rot: `python -m bench --quick` runs every scenario at a tiny size and
each one ends by comparing both sides. No timing is asserted here (figures are printed only)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.postgres

ROOT = Path(__file__).resolve().parent.parent


def test_quick_bench_runs_and_every_scenario_verifies(pg_admin: str) -> None:
    sys.path.insert(0, str(ROOT))
    try:
        from bench.run import QUICK_OFF, SCENARIOS
    finally:
        sys.path.remove(str(ROOT))
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick"],
        cwd=ROOT,
        env={**os.environ, "BENCH_PG": pg_admin, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-5000:]
    summary = out.split("== summary ==", 1)[1]
    assert "FAILED" not in summary, summary
    for name in SCENARIOS:
        if name in QUICK_OFF:
            assert f"== {name} ==" not in out
            continue
        section = out.split(f"== {name} ==", 1)[1].split("\n== ", 1)[0]
        verified = re.findall(r"^  verified: .+$", section, re.M)
        skipped = re.findall(r"^  skipped: .+$", section, re.M)
        outcomes = re.findall(r"^-- .+$", section, re.M)
        assert outcomes, f"scenario {name} printed no result:\n{section}"
        # every outcome of the scenario either verified both sides or said why it was skipped
        assert len(verified) + len(skipped) >= len(outcomes), section
