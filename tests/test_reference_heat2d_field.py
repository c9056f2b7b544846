"""reference/heat2d_field.py against independent truth: the heat2d series solution (a field
constant in space is a time-only control), the closed-form optimum f* (J* = 0), and N-convergence."""

import numpy as np
import pytest

from pinnctl.reference import heat2d, heat2d_field as ref

NU = 0.001


def _values(fn, n=ref.N_SPACE):
    pts = ref.control_points(nu=NU, n=n)
    return fn(pts[:, 0], pts[:, 1], pts[:, 2])


def test_zero_control_matches_heat2d():
    assert ref.objective(np.zeros(ref.N_SPACE**2 * 201), nu=NU) == pytest.approx(
        heat2d.objective(lambda t: np.zeros_like(t), nu=NU), rel=1e-9)


def test_optimal_field_tracks_exactly():
    assert ref.objective(_values(lambda x, y, t: ref.optimal_field(x, y, t, nu=NU)), nu=NU) < 1e-8
    assert ref.optimum(nu=NU).J == 0.0


def test_time_only_control_matches_heat2d_and_converges():
    """A spatially constant field does not vanish on the boundary: the DST interpolant rings
    (Gibbs), so agreement is 2e-3 at N = 63 and improves with N."""
    exact = heat2d.objective(lambda t: np.sin(2 * t) + 0.5, nu=NU)
    errs = [abs(ref.objective(_values(lambda x, y, t: np.sin(2 * t) + 0.5, n), nu=NU, n=n) - exact) / exact
            for n in (31, 63)]
    assert errs[1] < 2e-3 and errs[1] < 0.5 * errs[0]


def test_field_problem_smoke_certifies(tmp_path):
    import json

    from pinnctl.cli import main

    out = tmp_path / "run"
    assert main(["solve", "heat2d_field", "--preset", "smoke", "--quiet", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["J_star"] == 0.0 and summary["certified"]["grid"] > 1e-3
