"""Smoke test of benchmarks/bench_gpu.py --quick (a subprocess on the CPU; skipped without MONAI)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks" / "bench_gpu.py"
ROWS = ("1 training step", "2 loader alone", "3 resample f32 linear", "4 resample u8 nearest", "5 sliding window",
        "6 BatchAugment")  # fmt: skip

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("monai") is None or importlib.util.find_spec("torch") is None,
    reason="bench_gpu.py compares with MONAI: monai (and torch) not installed",
)


def test_bench_gpu_quick_runs_every_row(tmp_path):
    out = tmp_path / "bench_gpu.json"
    res = subprocess.run([sys.executable, str(BENCH), "--quick", "--device", "cpu", "--json", str(out)], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    text = res.stdout + res.stderr
    assert res.returncode == 0, text[-4000:]
    for row in ROWS:
        assert row in res.stdout, f"row {row!r} missing:\n{res.stdout[-4000:]}"
    assert "error:" not in res.stdout, res.stdout[-4000:]
    payload = json.loads(out.read_text())
    assert {r["section"] for r in payload["rows"]} == set(ROWS)
    assert all("error" not in r for r in payload["rows"])
