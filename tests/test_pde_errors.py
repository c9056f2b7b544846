"""Bad problem definitions fail at compile (or discovery) with one line naming the problem,
the condition and what to do; through the CLI: exit code 2, no traceback."""

import textwrap

import numpy as np
import pytest
import torch

from pinnctl import PinnctlError
from pinnctl.cli import main
from pinnctl.geometry import Box, DeepXDEGeometry
from pinnctl.nets import MLP
from pinnctl.problem import (CONTROL, Basis, Boundary, Grid, Interior, Neumann, PDEProblem, PiecewiseLinear, Tracking,
                             VectorControl, compile_problem)


def laplace(x, u, f, ops):
    return ops.dx(u, x, 0, order=2)


def problem(residual=laplace, boundary=None, control=None, target=lambda x: x[:, 0], domain=None):
    return PDEProblem(name="bad", domain=domain or Box([0.0], [1.0]), time=None,
                      conditions={"pde": Interior(residual, n=8), "edge": boundary or Boundary(0.0, n_per_side=4)},
                      state=MLP([1, 4, 1]), control=control or VectorControl(1), objective=Tracking(target, Grid(5)))


def one_line_error(p) -> str:
    with pytest.raises(PinnctlError) as e:
        compile_problem(p)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("problem 'bad'")
    return msg


@pytest.mark.parametrize("residual, expect", [
    (lambda x, u, f, ops: 1 / 0, "condition 'pde': ZeroDivisionError"),
    (lambda x, u, f, ops: None, "condition 'pde': residual returned None"),
    (lambda x, u, f, ops: u.sum(), "condition 'pde': residual is a scalar"),
    (lambda x, u, f, ops: u[:3], "condition 'pde': residual has shape (3,) for 8 points"),
    (lambda x, u, f, ops: torch.stack([u, u], 1), "condition 'pde': residual has shape (8, 2) for 8 points"),
    (lambda x, u, f, ops: ops.dx(u * u, x, 0), "condition 'pde': ops differentiate the state outputs"),
    (lambda x, u, f, ops: ops.dt(u, x), "condition 'pde': ops.dt used in a problem without time"),
])
def test_bad_residuals(residual, expect):
    assert expect in one_line_error(problem(residual))


def test_target_of_the_wrong_size():
    assert "objective: target returned 3 values for 5 points" in one_line_error(problem(target=lambda x: x[:3, 0]))


def test_unknown_face_name():
    msg = one_line_error(problem(boundary=Boundary(0.0, where="x=top", n_per_side=2)))
    assert "condition 'edge': unknown face 'x=top'; faces of this 1-D box: x=lo, x=hi" in msg


def test_vector_control_without_profile_on_a_boundary_names_both_sizes():
    """Used to die with a raw RuntimeError (size 8 vs 2), or broadcast silently for VectorControl(1)."""
    msg = one_line_error(problem(boundary=Boundary(CONTROL, n_per_side=4), control=VectorControl(2)))
    assert "condition 'edge': control 'control' gives 2 values for 8 points" in msg and "profile=" in msg
    msg = one_line_error(problem(boundary=Boundary(CONTROL, n_per_side=4), control=VectorControl(1)))
    assert "gives 1 values for 8 points" in msg


def test_profile_size_checks():
    with pytest.raises(PinnctlError, match="Basis has 2 functions but the control has 3 entries"):
        VectorControl(3, profile=Basis([torch.sin, torch.cos]))
    with pytest.raises(PinnctlError, match="PiecewiseLinear needs at least 2 nodal values"):
        VectorControl(1, profile=PiecewiseLinear(axis=0, lo=0.0, hi=1.0))


class _NoNormals:
    """A deepxde-like geometry without boundary_normal."""

    dim = 2

    def inside(self, x):
        return np.ones(len(x), bool)

    def random_points(self, n, random="pseudo"):
        return np.random.rand(n, 2)

    def random_boundary_points(self, n, random="pseudo"):
        return np.c_[np.random.rand(n), np.zeros(n)]


def test_neumann_on_a_domain_without_normals():
    p = PDEProblem(name="bad", domain=DeepXDEGeometry(_NoNormals()), time=None,
                   conditions={"pde": Interior(lambda x, u, f, ops: ops.laplacian(u, x), n=8),
                               "flux": Neumann(0.0, n_per_side=8)},
                   state=MLP([2, 4, 1]), control=VectorControl(1), objective=Tracking(lambda x: x[:, 0], Grid(3, 3)))
    with pytest.raises(PinnctlError) as e:
        compile_problem(p)
    assert "condition 'flux': the domain (_NoNormals) has no outward normals" in str(e.value)


def test_face_names_need_a_box():
    p = PDEProblem(name="bad", domain=DeepXDEGeometry(_NoNormals()), time=None,
                   conditions={"pde": Interior(lambda x, u, f, ops: ops.laplacian(u, x), n=8),
                               "edge": Boundary(0.0, where="x=lo", n_per_side=8)},
                   state=MLP([2, 4, 1]), control=VectorControl(1), objective=Tracking(lambda x: x[:, 0], Grid(3, 3)))
    with pytest.raises(PinnctlError, match="condition 'edge': face name 'x=lo' needs a Box domain"):
        compile_problem(p)


def test_declaration_errors():
    with pytest.raises(PinnctlError, match="state net has 2 outputs; name them with outputs="):
        PDEProblem(name="bad", domain=Box([0.0], [1.0]), time=None, conditions={"pde": Interior(laplace)},
                   state=MLP([1, 4, 2]), control=VectorControl(1), objective=Tracking(lambda x: x[:, 0], Grid(5)))
    with pytest.raises(PinnctlError, match="condition 'pde' is a float, not a condition"):
        PDEProblem(name="bad", domain=Box([0.0], [1.0]), time=None, conditions={"pde": 1.0},
                   state=MLP([1, 4, 1]), control=VectorControl(1), objective=Tracking(lambda x: x[:, 0], Grid(5)))


BAD_FILES = {
    "raises": ("def make():\n    raise ValueError('boom')\n", "raises.py: make() raised ValueError: boom"),
    "notaproblem": ("def make():\n    return 42\n", "notaproblem.py: make() returned int, not a problem"),
    "badshape": (textwrap.dedent('''
        import torch
        from pinnctl.geometry import Box
        from pinnctl.nets import MLP
        from pinnctl.problem import Boundary, Grid, Interior, PDEProblem, Tracking, VectorControl

        def make():
            return PDEProblem(name="badshape", domain=Box([0.0], [1.0]), time=None,
                              conditions={"pde": Interior(lambda x, u, f, ops: torch.stack([u, u], 1), n=8),
                                          "edge": Boundary(0.0, n_per_side=2)},
                              state=MLP([1, 4, 1]), control=VectorControl(1), objective=Tracking(lambda x: x[:, 0], Grid(5)))
    '''), "problem 'badshape', condition 'pde': residual has shape (8, 2) for 8 points"),
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_bad_problem_files_at_the_cli(tmp_path, monkeypatch, capsys, name):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PINNCTL_PROBLEMS", raising=False)
    (tmp_path / "problems").mkdir()
    body, expect = BAD_FILES[name]
    (tmp_path / "problems" / f"{name}.py").write_text(body)
    code = main(["solve", name, "--preset", "smoke", "--quiet", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and expect in err[0], err


def test_heat2d_checks_its_parameter(capsys):
    assert main(["solve", "heat2d", "--preset", "smoke", "--set", "params.nu=-1", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "heat2d.py: heat2d: nu must be > 0" in err[0]
