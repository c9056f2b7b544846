"""bench/gpu_check.py on the CPU in its tiny mode: every run and figure is produced and finite
(the script is meant for a GPU machine; this keeps its code path working without one)."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "gpu_check.py"


@pytest.mark.slow
def test_gpu_check_tiny_on_cpu(tmp_path):
    out = tmp_path / "gpu_check.json"
    proc = subprocess.run([sys.executable, str(BENCH), "--tiny", "--device", "cpu", "--methods", "nhgd,broyden-fast",
                           "--out", str(out)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads(out.read_text())
    assert set(data["runs"]) == {f"{m}/cpu/{mode}" for m in ("nhgd", "broyden-fast") for mode in ("inline", "parallel")}
    for r in data["runs"].values():
        parts = r["inner_s_per_outer"] + r["curvature_s_per_outer"] + r["hypergrad_s_per_outer"]
        assert r["outer_step_s"] == pytest.approx(parts) and r["inner_ms_per_step"] > 0
        assert r["J_star"] > 0 and r["certified_J"] >= r["J_star"] and r["peak_gpu_memory_mb"] is None
    # same device for both: the speed-up is 1 exactly, the other ratios are finite and positive
    assert all(math.isfinite(x) and x > 0 for x in data["figures"].values()) and len(data["figures"]) == 6
    assert data["figures"]["nhgd: inner step speed-up cpu vs cpu"] == 1.0
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 4 + 6 + 1 and lines[-1].startswith("gpu_check: 4 runs, 6 figures")
    # the NHGD and broyden runs share the inline / parallel numbers of their own method only
    assert data["runs"]["nhgd/cpu/parallel"]["parallel"] and not data["runs"]["nhgd/cpu/inline"]["parallel"]


def test_gpu_check_without_the_device_is_one_line_error():
    proc = subprocess.run([sys.executable, str(BENCH), "--tiny", "--device", "cuda:7"], capture_output=True, text=True,
                          timeout=300)
    err = proc.stderr.strip()
    assert proc.returncode == 1 and len(err.splitlines()) == 1 and "device 'cuda:7'" in err and "device_count()" in err
