"""Data-parallel inner training under torchrun (gloo on CPU): 2 data ranks + 1 curvature
worker against the single-rank run with the worker, same config; and the settings it refuses."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from pinnctl import PinnctlError, runs
from pinnctl.cli import main
from pinnctl.dataparallel import shard

SETS = ["pretrain.steps=3", "inner.steps=2", "outer.steps=2", "certify_every=0", "parallel.threads=1",
        "method.options.refine=0"]
ARGS = ["solve", "heat2d", "--preset", "smoke", "--quiet", "--parallel", *[a for s in SETS for a in ("--set", s)]]


def _run(cmd: list[str]) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stdout[-1500:] + proc.stderr[-3000:]


@pytest.mark.slow
def test_two_data_ranks_match_one_rank(tmp_path):
    """Every condition's points split over 2 ranks, θ-gradients all-reduced: the same run up to
    float reassociation (the shard means average to the full mean in another order)."""
    one, two = tmp_path / "one", tmp_path / "two"
    _run([sys.executable, "-m", "pinnctl", *ARGS, "--out", str(one)])
    _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "3", "-m", "pinnctl",
          *ARGS, "--set", "parallel.data_ranks=2", "--out", str(two)])
    a, b = runs.read(one), runs.read(two)
    np.testing.assert_allclose(b["arrays"]["state/theta"], a["arrays"]["state/theta"], rtol=0, atol=1e-5)
    np.testing.assert_allclose(b["arrays"]["control/v"], a["arrays"]["control/v"], rtol=1e-4, atol=1e-6)
    for key in ("outer_loss", "hypergrad_norm", "inner_terms/pde", "inner_terms/boundary", "inner_terms/initial"):
        np.testing.assert_allclose(b["history"][key], a["history"][key], rtol=1e-4, err_msg=key)
    # not bit-identical: the reduction order differs, which is the point of "up to reassociation"
    assert not np.array_equal(b["arrays"]["state/theta"], a["arrays"]["state/theta"])


def test_shards_are_every_kth_point_and_must_divide():
    batch = {"pde": torch.arange(6.0)[:, None], "boundary": torch.arange(4.0)[:, None]}
    parts = [shard(batch, r, 2) for r in range(2)]
    assert torch.equal(parts[1]["pde"][:, 0], torch.tensor([1.0, 3.0, 5.0]))
    assert sorted(torch.cat([p["boundary"] for p in parts])[:, 0].tolist()) == [0.0, 1.0, 2.0, 3.0]
    with pytest.raises(PinnctlError, match="'pde' has 6 points"):
        shard(batch, 0, 4)


@pytest.mark.parametrize("sets, match", [
    (["parallel.data_ranks=2"], "needs torchrun: torchrun --nproc-per-node 3"),
    (["parallel.data_ranks=0"], "data_ranks must be ≥ 1"),
])
def test_data_ranks_settings_are_one_line_errors(tmp_path, capsys, sets, match):
    assert main([*ARGS, "--out", str(tmp_path / "r"), *[a for s in sets for a in ("--set", s)]]) == 2
    err = capsys.readouterr().err.strip()
    assert match in err and len(err.splitlines()) == 1 and not (tmp_path / "r").exists()
