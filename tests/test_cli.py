"""CLI and problem discovery: listing, errors for unknown/broken/duplicate problems, exit codes."""

import subprocess
import sys
import textwrap

import pytest

from pinnctl.cli import main

GOOD = textwrap.dedent('''
    """A user problem for tests."""
    from pinnctl.geometry import Box
    from pinnctl.nets import MLP
    from pinnctl.problem import Boundary, Grid, Interior, PDEProblem, VectorControl, Tracking

    def residual(x, u, f, ops):
        return ops.laplacian(u, x) + f[0]

    problem = PDEProblem(name="{name}", domain=Box([0], [1]), time=None,
                         conditions={{"pde": Interior(residual, n=8), "boundary": Boundary(0.0, n_per_side=1)}},
                         state=MLP([1, 4, 1]), control=VectorControl(1), objective=Tracking(lambda x: x[:, 0], Grid(5)))
''')


@pytest.fixture
def user_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "problems").mkdir()
    monkeypatch.delenv("PINNCTL_PROBLEMS", raising=False)
    return tmp_path


def test_list_shows_bundled_and_user_problems(user_dir, capsys):
    (user_dir / "problems" / "mine.py").write_text(GOOD.format(name="mine"))
    (user_dir / "problems" / "_template.py").write_text("raise RuntimeError('templates are skipped')")
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "heat2d" in out and "2-D heat equation" in out
    assert "mine" in out and "A user problem for tests." in out


def test_env_var_problems_and_duplicates(user_dir, tmp_path_factory, monkeypatch, capsys):
    other = tmp_path_factory.mktemp("other")
    (other / "extra.py").write_text(GOOD.format(name="extra"))
    monkeypatch.setenv("PINNCTL_PROBLEMS", str(other))
    assert main(["list"]) == 0
    assert "extra" in capsys.readouterr().out
    (user_dir / "problems" / "dup.py").write_text(GOOD.format(name="extra"))
    assert main(["list"]) == 1  # the duplicate disables only itself: every other problem is listed
    captured = capsys.readouterr()
    assert "heat2d" in captured.out and "extra" not in captured.out
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and "'extra' is defined twice" in err[0] and "dup.py" in err[0] and "extra.py" in err[0]


def test_broken_problem_file_is_named(user_dir, capsys):
    (user_dir / "problems" / "broken.py").write_text("import numpy\nx = 1 / 0\n")
    assert main(["list"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "broken.py" in err[0] and "ZeroDivisionError" in err[0]


def test_unknown_problem_and_method(user_dir, capsys):
    assert main(["solve", "heat3d"]) == 2
    assert "unknown problem 'heat3d'; known:" in capsys.readouterr().err
    assert main(["solve", "heat2d", "--method", "nhdg"]) == 2
    err = capsys.readouterr().err
    assert "unknown method 'nhdg'; known:" in err and "nhgd" in err and "forward" in err
    assert main(["solve", "heat2d", "--set", "inner.stepz=1"]) == 2
    assert "unknown config key 'inner.stepz'" in capsys.readouterr().err


def test_import_is_light_and_silent():
    code = "import sys, pinnctl, pinnctl.problem, pinnctl.cli; print(sorted(m for m in ('deepxde', 'matplotlib') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]" and out.stderr == ""


@pytest.mark.parametrize("method, options", [("nhgd", []), ("broyden", ["method.options.variant=fast"])])
def test_solve_smoke_writes_run_files_and_compare_reads_them(tmp_path, capsys, method, options):
    import json

    out = tmp_path / method
    sets = [a for o in options for a in ("--set", o)]
    assert main(["solve", "heat2d", "--preset", "smoke", "--method", method, "--out", str(out), *sets]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "done" and summary["outer_steps"] == 2
    j_star = summary["J_star"]
    assert j_star == pytest.approx(2.172582e-02, rel=1e-5) and summary["certified"]["grid"] > j_star
    assert main(["compare", str(out), "--out", str(tmp_path / "cmp.png")]) == 0
    text = capsys.readouterr().out
    assert method in text and (tmp_path / "cmp.png").stat().st_size > 10_000
    rows = json.loads((tmp_path / "cmp.json").read_text())["rows"]
    assert rows[0]["certified_J"] == pytest.approx(summary["certified"]["grid"])


def test_compare_rejects_non_run_directory(tmp_path, capsys):
    assert main(["compare", str(tmp_path)]) == 2
    assert "is not a run directory" in capsys.readouterr().err


def test_source_checkout_problems_dir_is_not_a_duplicate(user_dir, capsys):
    """After a non-editable install, running from the repo root sees problems/heat2d.py twice."""
    from pinnctl.discovery import bundled_dir

    (user_dir / "problems" / "heat2d.py").write_bytes((bundled_dir() / "heat2d.py").read_bytes())
    assert main(["list"]) == 0
    (user_dir / "problems" / "heat2d.py").write_text(GOOD.format(name="heat2d"))
    assert main(["list"]) == 1  # a real duplicate: reported, and only heat2d is disabled
    assert "defined twice" in capsys.readouterr().err


def test_reference_takes_problem_parameters(capsys):
    """`pinnctl reference P --set name=value` passes any problem parameter; a bad one is a one-line error."""
    import numpy as np

    from pinnctl.reference import poisson2d as ref

    assert main(["reference", "poisson2d", "--set", "alpha=0.1"]) == 0
    assert f"J(0) = {ref.objective(np.zeros(len(ref.control_points())), alpha=0.1):.6e}" in capsys.readouterr().out
    assert main(["reference", "poisson2d", "--set", "bogus=1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no parameter(s) bogus" in err
