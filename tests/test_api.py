"""The Python API (pinnctl.solve, Run, load_run, compare, problems, reference) against the CLI.

The truth for numbers is the CLI run of the same config (bit-identical history) and an
uninterrupted run (for resume); the toy problem (pinnctl.toys.toy_cleaning) keeps each run
under a second, heat2d's smoke preset covers the certified path.
"""

from __future__ import annotations

import importlib
import json

import numpy as np
import pytest

import pinnctl
from pinnctl import PinnctlError, runs
from pinnctl.cli import main

TIMINGS = ("wall_time", "inner_time", "curvature_time", "hypergrad_time")


def _numbers(run) -> dict[str, np.ndarray]:
    path = run.path if isinstance(run, pinnctl.Run) else run
    return {k: a for k, a in runs.read(path)["history"].items() if k not in TIMINGS}


def _assert_same_history(a, b) -> None:
    ha, hb = _numbers(a), _numbers(b)
    assert set(ha) == set(hb) and len(ha["step"]) > 0
    for key in ha:
        np.testing.assert_array_equal(ha[key], hb[key], err_msg=key)


@pytest.fixture
def toy(tmp_path, monkeypatch):
    """A problem file for the toy, found by discovery (also by a curvature worker process)."""
    folder = tmp_path / "problems"
    folder.mkdir()
    (folder / "toy_cleaning.py").write_text("from pinnctl.toys import toy_cleaning as make\n")
    monkeypatch.setenv("PINNCTL_PROBLEMS", str(folder))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_api_reproduces_the_cli_bit_for_bit(toy):
    assert main(["solve", "toy_cleaning", "--method", "broyden", "--preset", "smoke", "--quiet", "--out", "cli",
                 "--set", "outer.steps=4", "--set", "method.options.variant=fast"]) == 0
    run = pinnctl.solve("toy_cleaning", "broyden", preset="smoke", out="api", quiet=True, outer={"steps": 4},
                        options={"variant": "fast"})
    _assert_same_history(toy / "cli", run)
    assert run.config == runs.read(toy / "cli")["attrs"]["config"]
    assert run.summary["status"] == "done" and run.summary["outer_steps"] == 4


def test_resume_equals_an_uninterrupted_run(toy):
    full = pinnctl.solve("toy_cleaning", "nhgd", preset="smoke", out="full", quiet=True,
                         **{"outer.steps": 5, "checkpoint_every": 1})
    part = pinnctl.solve("toy_cleaning", "nhgd", preset="smoke", out="part", quiet=True,
                         **{"outer.steps": 2, "checkpoint_every": 1})
    assert len(part.history["step"]) == 2
    resumed = part.resume(steps=5, quiet=True)
    assert resumed.path == part.path and resumed.config["outer"]["steps"] == 5
    _assert_same_history(full, resumed)


def test_history_arrays_and_pandas(toy):
    run = pinnctl.solve("toy_cleaning", "cg", preset="smoke", out="r", quiet=True)
    hist = run.history
    np.testing.assert_array_equal(hist["step"], np.arange(3))
    assert {"outer_loss", "hypergrad_norm", "info/cg_iterations", "info/residual"} <= set(hist)
    assert hist["outer_loss"][-1] == pytest.approx(run.summary["final_outer_loss"])
    assert pinnctl.load_run(run.path).history.keys() == hist.keys()
    with pytest.raises(PinnctlError, match="stored no sampled control"):
        run.control([0.0])
    pd = pytest.importorskip("pandas")
    frame = run.to_pandas()
    assert isinstance(frame, pd.DataFrame) and list(frame.index) == [0, 1, 2]


def test_compare_two_runs(toy):
    a = pinnctl.solve("toy_cleaning", "cg", preset="smoke", out="a", quiet=True)
    b = pinnctl.solve("toy_cleaning", "neumann", preset="smoke", out="b", quiet=True)
    result = pinnctl.compare([a, str(b.path)], out=toy / "cmp.png")
    assert [r["run"] for r in result.rows] == ["cg", "neumann"]
    for row, run in zip(result.rows, (a, b)):
        assert row["final_J_pinn"] == pytest.approx(float(run.history["outer_loss"][-1]))
        assert row["outer_steps"] == 3
    assert result.j_star is None and (toy / "cmp.png").stat().st_size > 10_000
    assert json.loads((toy / "cmp.json").read_text())["rows"] == result.rows
    assert "neumann" in result.table and "<img src='data:image/png;base64," in result._repr_html_()


@pytest.mark.parametrize("call, argv", [
    (lambda: pinnctl.solve("heat3d"), ["solve", "heat3d"]),
    (lambda: pinnctl.solve("heat2d", "nhdg"), ["solve", "heat2d", "--method", "nhdg"]),
    (lambda: pinnctl.solve("heat2d", inner={"stepz": 1}), ["solve", "heat2d", "--set", "inner.stepz=1"]),
    (lambda: pinnctl.solve("heat2d", preset="fast"), ["solve", "heat2d", "--preset", "fast"]),
    (lambda: pinnctl.load_run("."), ["compare", "."]),
])
def test_bad_arguments_raise_the_cli_message(toy, capsys, call, argv):
    with pytest.raises(PinnctlError) as err:
        call()
    assert main(argv) == 2
    assert capsys.readouterr().err.strip() == f"pinnctl: error: {err.value}"
    assert "\n" not in str(err.value)


def test_problems_reference_and_a_problem_object(toy):
    listed = pinnctl.problems()
    assert "heat2d" in listed and "toy_cleaning" in listed and "heat" in listed["heat2d"]
    importlib.import_module("pinnctl.reference.heat2d")  # binds pinnctl.reference to the (callable) package

    optimum = pinnctl.reference("heat2d")
    assert optimum.J == pytest.approx(2.172582e-02, rel=1e-5) and optimum.t.shape == optimum.f.shape
    from pinnctl.toys import toy_cleaning

    run = pinnctl.solve(toy_cleaning(n_train=30), "exact", preset="smoke", out="obj", quiet=True)
    assert run.config["problem"] == "toy_cleaning" and run.config["params"]["n_train"] == 30
    assert len(run.history["step"]) == 3
    with pytest.raises(PinnctlError, match="needs a problem file"):
        pinnctl.solve(toy_cleaning(), "exact", preset="smoke", parallel=True, quiet=True)


@pytest.mark.parametrize("method", ["broyden", "exact"])
def test_parallel_worker_sends_typed_results(toy, method):
    """The two methods whose diagnostics were not plain floats (a string, a list) under --parallel."""
    inline = pinnctl.solve("toy_cleaning", method, preset="smoke", out="inline", quiet=True)
    remote = pinnctl.solve("toy_cleaning", method, preset="smoke", out="remote", quiet=True, parallel=True,
                           **{"parallel.threads": 1})
    a, b = _numbers(inline), _numbers(remote)
    assert set(a) == set(b)
    for key in a:
        np.testing.assert_allclose(b[key], a[key], rtol=1e-6, atol=0, err_msg=key)
    assert remote.summary["curvature_worker"]["messages"] > 0


def test_heat2d_run_certified_control_and_plots(tmp_path):
    run = pinnctl.solve("heat2d", preset="smoke", out=tmp_path / "h", quiet=True)
    summary = run.summary
    assert run.certified == summary["certified"] and run.certified["grid"] > run.j_star
    assert run.j_star == pytest.approx(2.172582e-02, rel=1e-5)
    arrays = runs.read(run.path)["arrays"]
    t, f = arrays["control/t"], arrays["control/f"]
    np.testing.assert_array_equal(run.control(t[::50]), f[::50])
    mid = 0.5 * (t[10] + t[11])
    assert run.control(mid) == pytest.approx(0.5 * (f[10] + f[11]))
    paths = run.plot(show=False)
    assert paths and all(p.stat().st_size > 5_000 for p in paths)
