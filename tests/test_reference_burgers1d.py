"""reference/burgers1d.py against a manufactured solution, its own grid convergence, and J(g*) = 0."""

import json

import numpy as np
import pytest

from pinnctl.reference import burgers1d as ref

NU = 0.05


def test_manufactured_solution():
    """u = ½e^{−t} sin(πx) solves Burgers with the source u_t + u u_x − ν u_xx; second order in dx."""
    def exact(x, t):
        return 0.5 * np.exp(-t) * np.sin(np.pi * x)

    def source(t, x):
        u = exact(x, t)
        return -u + u * 0.5 * np.exp(-t) * np.pi * np.cos(np.pi * x) + NU * np.pi**2 * u

    errs = []
    for n in (200, 400):
        x = ref.nodes(n)
        errs.append(np.abs(ref.final_state(exact(x, 0.0), nu=NU, n=n, source=source) - exact(x, ref.T)).max())
    assert errs[1] < 2e-5 and 3.0 < errs[0] / errs[1] < 5.0  # second order


def test_grid_convergence_and_optimum():
    g = lambda x: 0.5 * np.sin(np.pi * x) * np.exp(-x**2)  # noqa: E731
    j = [ref.objective(g(ref.nodes(n)), nu=NU, n=n) for n in (400, 800)]
    assert abs(j[1] - j[0]) < 2e-5 and j[1] == pytest.approx(0.21675, abs=1e-4)
    assert ref.objective(ref.g0(ref.nodes()), nu=NU) == 0.0 and ref.optimum(nu=NU).J == 0.0


def test_burgers_problem_smoke_certifies(tmp_path):
    from pinnctl.cli import main

    out = tmp_path / "run"
    assert main(["solve", "burgers1d", "--preset", "smoke", "--quiet", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["J_star"] == 0.0 and 0.0 < summary["certified"]["grid"] < 1.0
