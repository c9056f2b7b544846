"""The ns_inlet finite-element reference against independent truth: exact Poiseuille flow, Kovasznay
flow at its expected order, mesh convergence of J, the adjoint gradient against central differences."""

import numpy as np
import pytest

from pinnctl import PinnctlError
from pinnctl.reference import ns_inlet as R


@pytest.mark.parametrize("outflow", R.OUTFLOWS)
def test_poiseuille_is_exact(outflow):
    """θ ≡ 1 without blowing: u = 4y(1−y), v = 0, p = (8/Re)(1.5 − x) (traction) or the same with p = 0
    at the outlet (pressure) — in the P2/P1 space, so exact to round-off on a coarse mesh."""
    disc = R.discretisation(6, 4, outflow=outflow, blow=0.0)
    sol = R.solve_state(np.ones(R.N_CONTROL), disc)
    rng = np.random.default_rng(0)
    pts = np.column_stack([rng.uniform(0, R.LX, 50), rng.uniform(0, R.LY, 50)])
    uvp = R.fields(sol, disc, pts)
    exact = np.column_stack([4 * pts[:, 1] * (1 - pts[:, 1]), 0 * pts[:, 0], 8 / R.RE * (R.LX - pts[:, 0])])
    assert np.abs(uvp - exact).max() < 1e-12
    assert R.tracking(sol, disc) < 1e-24


def kovasznay(x, y, re):
    lam = re / 2 - np.sqrt(re**2 / 4 + 4 * np.pi**2)
    u = 1 - np.exp(lam * x) * np.cos(2 * np.pi * y)
    v = lam / (2 * np.pi) * np.exp(lam * x) * np.sin(2 * np.pi * y)
    return u, v, 0.5 * (1 - np.exp(2 * lam * x))


def kovasznay_error(n: int, re: float = 40.0) -> float:
    """Velocity L2 error of the Taylor–Hood Newton solve with Kovasznay's Dirichlet data on
    [−0.5, 1] × [−0.5, 1.5] (one pressure dof pinned to the exact value)."""
    th = R.TaylorHood(R.rectangle(n, n, -0.5, 1.0, -0.5, 1.5))
    xy = th.ub.doflocs
    bnd = th.ub.get_dofs().flatten()
    u, v, _ = kovasznay(xy[0, bnd], xy[1, bnd], re)
    UD = np.where(np.isin(bnd, th.iu), u, v)
    p0 = th.nu + int(np.argmin(np.hypot(th.pb.doflocs[0] + 0.5, th.pb.doflocs[1] + 0.5)))
    D = np.concatenate([bnd, [p0]])
    UD = np.concatenate([UD, [kovasznay(*th.pb.doflocs[:, p0 - th.nu], re)[2]]])
    U, _, steps = th.solve(re, D, UD)
    field = th.ub.interpolate(U[: th.nu])
    X = th.ub.global_coordinates()
    ue, ve, _ = kovasznay(X[0], X[1], re)
    err2 = ((field[0] - ue) ** 2 + (field[1] - ve) ** 2) * th.ub.dx
    return float(np.sqrt(err2.sum()))


def test_kovasznay_converges_at_third_order():
    errors = [kovasznay_error(n) for n in (4, 8, 16)]
    orders = np.log2(np.array(errors[:-1]) / np.array(errors[1:]))
    assert errors[-1] < 4e-3  # measured 0.282, 0.0250, 0.00300 (and 3.8e-4 at n = 32)
    assert orders[-1] > 2.8, (errors, orders)  # P2 velocity in L2: order 3 (measured 3.06 at 8 → 16, 3.00 at 16 → 32)


def test_objective_converges_under_mesh_refinement():
    """J(θ₀ = 1) with blowing on meshes refined by 2: successive differences shrink at order ≥ 3
    (measured 4.8 from (12, 8) → (24, 16) → (48, 32), docs/problems.md)."""
    J = [R.tracking(R.solve_state(np.ones(R.N_CONTROL), d), d) for d in (R.discretisation(3 * k, 2 * k) for k in (2, 4, 8))]
    d1, d2 = abs(J[1] - J[0]), abs(J[2] - J[1])
    assert d2 < d1 / 8, J
    assert abs(J[2] - 0.0843) < 5e-4


def test_adjoint_gradient_matches_central_differences():
    disc = R.discretisation(6, 8)
    rng = np.random.default_rng(1)
    theta = 1 + 0.3 * rng.standard_normal(R.N_CONTROL)
    theta[3], theta[10] = -0.2, 4.3  # both box penalties active
    J, g, sol = R.objective_and_gradient(theta, disc)
    h = 1e-5
    for _ in range(3):
        d = rng.standard_normal(R.N_CONTROL)
        fd = (R.objective_and_gradient(theta + h * d, disc, sol.U)[0] - R.objective_and_gradient(theta - h * d, disc, sol.U)[0]) / (2 * h)
        assert abs(g @ d - fd) <= 1e-6 * abs(fd), (g @ d, fd)
    pen, dpen = R.penalty(theta)
    assert J == pytest.approx(R.tracking(sol, disc) + pen, rel=1e-12)


def test_reference_protocol_and_errors():
    ref = R.reference(outflow="traction")
    c = ref.certify(np.ones(R.N_CONTROL))
    assert set(c) == {"outlet", "tracking"} and c["outlet"] == pytest.approx(c["tracking"])  # no penalty at θ ≡ 1
    with pytest.raises(PinnctlError, match="64 inlet values"):
        ref.certify(np.ones(5))
    with pytest.raises(PinnctlError, match="unknown outflow"):
        R.discretisation(12, 8, outflow="foo")
