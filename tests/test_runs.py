"""Run files, checkpoints, resume, Ctrl-C, the divergence guard and plots (issue 7).

Every test drives the real CLI on heat2d with the smoke preset (20 pretraining steps,
3 inner steps per outer step); the truth is an uninterrupted run of the same config.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from pinnctl import PinnctlError, checkpoint, runs
from pinnctl.cli import main

STEPS = 4
BASE = ["solve", "heat2d", "--preset", "smoke", "--quiet", "--set", "checkpoint_every=2"]
# Timings differ between runs; everything else must be bit-identical.
TIMINGS = ("wall_time", "inner_time", "curvature_time", "hypergrad_time")


def _solve(out, *extra: str) -> int:
    return main([*BASE, "--out", str(out), *extra])


def _numbers(run_dir) -> dict[str, np.ndarray]:
    return {k: a for k, a in runs.read(run_dir)["history"].items() if k not in TIMINGS}


def _assert_same_history(a, b) -> None:
    ha, hb = _numbers(a), _numbers(b)
    assert set(ha) == set(hb)
    for key in ha:
        np.testing.assert_array_equal(ha[key], hb[key], err_msg=key)


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("full") / "run"
    assert _solve(out, "--set", f"outer.steps={STEPS}") == 0
    return out


def test_run_file_layout_readable_with_plain_h5py(full_run):
    """The documented layout, read in a fresh interpreter that never imports pinnctl."""
    code = f"""
import json, sys, h5py
with h5py.File({str(full_run / runs.RUN_FILE)!r}, "r") as fh:
    cfg = json.loads(fh.attrs["config"])
    out = {{
        "config_steps": cfg["outer"]["steps"], "status": fh.attrs["status"], "seed": int(fh.attrs["seed"]),
        "versions": sorted(json.loads(fh.attrs["versions"])), "J_star": float(fh.attrs["J_star"]),
        "history": sorted(k for k in fh["history"].keys()),
        "terms": sorted(fh["history/inner_terms"].keys()),
        "rows": {{k: fh["history"][k].shape[0] for k in ("outer_loss", "wall_time", "certified/grid")}},
        "control": [fh["control/t"].shape[0], fh["control/f"].shape[0]], "theta": fh["state/theta"].shape[0],
        "reference": fh["reference/f"].shape[0], "pinnctl_imported": "pinnctl" in sys.modules,
    }}
print(json.dumps(out))
"""
    res = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert res["config_steps"] == STEPS and res["status"] == "done" and res["seed"] == 0
    assert {"torch", "pinnctl", "h5py"} <= set(res["versions"])
    assert res["J_star"] == pytest.approx(2.172582e-02, rel=1e-5)
    assert {"step", "outer_loss", "certified", "inner_terms", "info", "hypergrad_norm", "wall_time",
            "inner_time", "curvature_time", "hypergrad_time"} <= set(res["history"])
    assert res["terms"] == ["boundary", "initial", "pde"]
    assert set(res["rows"].values()) == {STEPS}
    assert res["control"] == [401, 401] and res["theta"] > 10_000 and res["reference"] == 101
    assert not res["pinnctl_imported"]


def test_history_matches_summary_and_certifies(full_run):
    data = runs.read(full_run)
    summary = json.loads((full_run / "summary.json").read_text())
    h = data["history"]
    np.testing.assert_array_equal(h["step"], np.arange(STEPS))
    assert summary["certified"]["grid"] == h["certified/grid"][-1] and summary["outer_steps"] == STEPS
    assert np.all(np.diff(h["wall_time"]) > 0) and np.all(h["certified/grid"] > data["attrs"]["J_star"])


def test_resume_continues_to_the_same_numbers(full_run, tmp_path):
    out = tmp_path / "run"
    assert _solve(out, "--set", "outer.steps=2") == 0
    assert checkpoint.load(out)["outer_step"] == 2
    assert main(["solve", "--resume", str(out), "--quiet", "--set", f"outer.steps={STEPS}"]) == 0
    _assert_same_history(full_run, out)
    np.testing.assert_array_equal(runs.read(out)["arrays"]["state/theta"], runs.read(full_run)["arrays"]["state/theta"])


def _fail_at_inner_call(monkeypatch, n: int, exc: BaseException) -> None:
    """Raise ``exc`` from the n-th inner step (outer step n // 3 with 3 inner steps)."""
    import pinnctl.bilevel as bl

    real, calls = bl.inner_step, {"n": 0}

    def patched(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == n:
            raise exc
        return real(*args, **kwargs)

    monkeypatch.setattr(bl, "inner_step", patched)


def test_ctrl_c_writes_checkpoint_and_resume_matches(full_run, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    # 20 pretraining calls, then 3 per outer step: call 20 + 3·3 + 2 is inside outer step 4 (k = 3)
    _fail_at_inner_call(monkeypatch, 20 + 3 * 3 + 2, KeyboardInterrupt())
    assert _solve(out, "--set", f"outer.steps={STEPS}") == 130
    assert "pinnctl solve --resume" in capsys.readouterr().out
    snap = checkpoint.load(out)
    assert snap["outer_step"] == 3  # the last completed step, although checkpoint_every = 2
    data = runs.read(out)
    assert data["attrs"]["status"] == "interrupted" and data["rows"] == 3
    monkeypatch.undo()
    assert main(["solve", "--resume", str(out), "--quiet"]) == 0
    _assert_same_history(full_run, out)


def test_nan_guard_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch, capsys):
    """A NaN appears in θ during outer step 3 (a blown-up weight): the run stops with a
    clear message, exit 1, and the checkpoint holds the last good step (2), finite."""
    import pinnctl.bilevel as bl

    real, calls = bl.inner_step, {"n": 0}

    def poisoned(problem, state, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 20 + 3 * 2 + 2:
            with torch.no_grad():
                state.theta[0] = math.nan
        return real(problem, state, *args, **kwargs)

    monkeypatch.setattr(bl, "inner_step", poisoned)
    out = tmp_path / "run"
    assert _solve(out, "--set", f"outer.steps={STEPS}") == 1
    err = capsys.readouterr().err
    assert "inner loss at inner step 27 is nan" in err and "diverged" in err
    snap = checkpoint.load(out)
    assert snap["outer_step"] == 2 and torch.isfinite(snap["theta"]).all()
    assert runs.read(out)["attrs"]["status"] == "diverged" and runs.read(out)["rows"] == 2


def test_checkpoint_rejects_pickled_code_and_garbage(tmp_path):
    path = tmp_path / "checkpoint.pt"
    torch.save({"format": checkpoint.FORMAT, "x": np.random.default_rng(0)}, path)  # not weights-only
    with pytest.raises(PinnctlError, match="unreadable, truncated or not a pinnctl checkpoint"):
        checkpoint.load(path)
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(PinnctlError, match="unreadable"):
        checkpoint.load(tmp_path)
    with pytest.raises(PinnctlError, match="no checkpoint at"):
        checkpoint.load(tmp_path / "missing")
    checkpoint.save(path, {"theta": torch.arange(3.0), "step": 7})
    assert checkpoint.load(path)["step"] == 7 and not list(tmp_path.glob(".*tmp*"))


def test_resume_errors_are_one_line(tmp_path, full_run, capsys):
    assert main(["solve", "--resume", str(tmp_path)]) == 2
    assert "no checkpoint at" in capsys.readouterr().err
    assert main(["solve", "--resume", str(full_run), "--method", "cg"]) == 2
    assert "only --set overrides" in capsys.readouterr().err
    assert main(["solve", "poisson", "--resume", str(full_run)]) == 2
    assert "is a run of 'heat2d'" in capsys.readouterr().err
    assert main(["solve", "--resume", str(full_run), "--set", "outer.stepz=3"]) == 2
    assert "unknown config key 'outer.stepz'" in capsys.readouterr().err


def test_plot_writes_readable_figures(full_run, capsys):
    assert main(["plot", str(full_run)]) == 0
    names = [p.rsplit("/", 1)[-1] for p in capsys.readouterr().out.split()]
    assert names == ["objective.png", "loss_terms.png", "control.png", "state_error.png"]
    for name in names:
        assert (full_run / name).stat().st_size > 20_000


def test_compare_reads_the_runs_own_measure_and_legacy_files(tmp_path):
    """A run certified on a measure other than "grid" is compared on that measure (J*, table, time
    to target), and a file written before the measure was stored (J_star_grid) still reads as grid."""
    import h5py

    from pinnctl import comparison, runs

    hist = {"step": [0, 1, 2], "outer_loss": [3.0, 2.0, 1.5], "wall_time": [1.0, 2.0, 3.0],
            "certified/outlet": [4.0, 2.2, 2.05], "certified/grid": [9.0, 9.0, 9.0]}
    config = {"problem": "p", "method": {"name": "nhgd"}}
    for name in ("new", "legacy"):
        (tmp_path / name).mkdir()
        runs.rebuild(tmp_path / name, config=config, history=hist, j_star=2.0, measure="outlet")
    run = comparison.load_run(tmp_path / "new")
    assert (run.j_star, run.measure) == (2.0, "outlet")
    row, = comparison.table_rows([run], run.j_star, target=1.05)
    assert (row["certified_J"], row["best_certified_J"]) == (2.05, 2.05)
    assert row["J_over_Jstar"] == pytest.approx(1.025) and row["time_to_1.05Jstar_s"] == 3.0  # 2.2 > 2.1 at t = 2
    with h5py.File(tmp_path / "legacy" / runs.RUN_FILE, "a") as fh:  # the attributes of a file from before
        del fh.attrs["J_star"], fh.attrs["measure"]
        fh.attrs["J_star_grid"] = 8.0
    old = comparison.load_run(tmp_path / "legacy")
    assert (old.j_star, old.measure) == (8.0, "grid")
    assert comparison.table_rows([old], old.j_star)[0]["J_over_Jstar"] == pytest.approx(9.0 / 8.0)


def test_compare_classification_runs_plots_accuracy_and_last50(tmp_path):
    """Runs without a control but with test accuracy (classification): the table's last-50 mean
    skips steps without metrics, the figure's second panel is accuracy against wall-clock, and two
    runs of one method are told apart by their folder names."""
    import math

    from pinnctl import api, comparison, runs

    steps = 60
    acc = [0.5 + 0.005 * k if k % 10 == 9 or k >= steps - 50 else math.nan for k in range(steps)]
    hist = {"step": list(range(steps)), "outer_loss": [2.0 / (1 + k) for k in range(steps)],
            "wall_time": [0.1 * k for k in range(steps)], "metrics/test_accuracy": acc}
    for name in ("neumann10", "neumann40"):
        (tmp_path / name).mkdir()
        runs.rebuild(tmp_path / name, config={"problem": "data_cleaning", "method": {"name": "neumann"}}, history=hist)
    loaded = [comparison.load_run(tmp_path / n) for n in ("neumann10", "neumann40")]
    row = comparison.table_rows(loaded, None)[0]
    assert row["test_accuracy_last50"] == pytest.approx(sum(0.5 + 0.005 * k for k in range(10, 60)) / 50)
    assert comparison._labels(loaded) == ["neumann (neumann10)", "neumann (neumann40)"]
    assert [r["run"] for r in comparison.table_rows(loaded, None)] == comparison._labels(loaded)  # the table tells them apart too
    result = api.compare([tmp_path / "neumann10", tmp_path / "neumann40"], out=tmp_path / "cmp.png")
    assert "acc(last50)" in result.table and (tmp_path / "cmp.png").stat().st_size > 20_000
    assert "J/J*" not in result.table  # no reference: no J columns that would all read '-'
    assert row["outer_loss_last50"] == pytest.approx(sum(2.0 / (1 + k) for k in range(10, 60)) / 50)
