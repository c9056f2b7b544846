"""reference/poisson_holes.py: a manufactured solution on the perforated square at P1's orders, mesh
convergence of J for a fixed smooth control, J* (KKT) against a direct evaluation of J at f* and
against refined smooth bases (D4-invariant Zernike, full Legendre)."""

import numpy as np
import pytest

from pinnctl import PinnctlError
from pinnctl.reference import poisson_holes as ref

HS = (0.4, 0.2, 0.1)


def _exact(p):
    return np.sin(0.7 * p[..., 0]) * np.cos(0.5 * p[..., 1]) + 0.1 * p[..., 0] * p[..., 1]


def _laplacian(p):
    return -(0.49 + 0.25) * np.sin(0.7 * p[..., 0]) * np.cos(0.5 * p[..., 1])


def _manufactured_error(h):
    """L2 and H1-seminorm errors of the P1 solve of Δu = Δu_ex with u = u_ex on the circles and the square."""
    from skfem import Basis, ElementTriP1, LinearForm, asm

    s = ref.system(h)
    load = asm(LinearForm(lambda v, w: _laplacian(np.stack([w.x[0], w.x[1]], -1)) * v), s.basis)
    u = ref.solve_nodal(s, load, _exact(s.mesh.p.T[s.fixed]))
    fine = Basis(s.mesh, ElementTriP1(), intorder=6)
    uh = fine.interpolate(u)
    x = np.moveaxis(np.asarray(fine.global_coordinates()), 0, -1)
    l2 = np.sqrt(np.sum((np.asarray(uh) - _exact(x)) ** 2 * fine.dx))
    gx = 0.7 * np.cos(0.7 * x[..., 0]) * np.cos(0.5 * x[..., 1]) + 0.1 * x[..., 1]
    gy = -0.5 * np.sin(0.7 * x[..., 0]) * np.sin(0.5 * x[..., 1]) + 0.1 * x[..., 0]
    h1 = np.sqrt(np.sum(((uh.grad[0] - gx) ** 2 + (uh.grad[1] - gy) ** 2) * fine.dx))
    return l2, h1


def test_manufactured_solution_at_p1_orders():
    errs = np.array([_manufactured_error(h) for h in HS])
    orders = np.log2(errs[:-1] / errs[1:])  # h halves
    assert errs[-1, 0] < 2e-3 and np.all(orders[:, 0] > 1.85), (errs, orders)  # L2: measured 1.92, 1.99
    assert np.all(orders[:, 1] > 0.95), (errs, orders)  # H1: measured 1.0


def _smooth(p):
    return 3.0 + np.cos(p[:, 0]) * p[:, 1] ** 2


def test_objective_converges_in_h_for_a_fixed_control():
    j = np.array([ref.objective(_smooth, h) for h in HS])
    ratio = (j[0] - j[1]) / (j[1] - j[2])
    assert 3.0 < ratio < 5.5, (j, ratio)  # second order: measured ratio 3.9
    assert abs(j[2] - j[1]) / j[2] < 5e-3  # measured 3.5e-3 (and 1.5e-4 from h = 0.05 to 0.025)


def test_optimum_is_min_of_certified_objective():
    h = 0.2
    J = ref.discrete_optimum(h)[0]
    assert ref.objective(ref.optimal_control_samples(h), h) == pytest.approx(J, rel=1e-10)
    j0 = ref.objective(np.zeros(len(ref.control_points(h))), h)
    assert J < ref.objective(_smooth, h) and J < 0.4 * j0
    # smooth controls in refined bases approach it from above; the D4 basis loses nothing
    z = [ref.basis_optimum(ref.zernike_d4, d, h)[0] for d in (4, 8, 16)]
    assert J < z[2] < z[1] < z[0] and (z[2] - J) < 0.01 * J
    assert ref.basis_optimum(ref.legendre_full, 8, h)[0] == pytest.approx(z[1], rel=1e-4)
    # any perturbation of f* raises J
    rng = np.random.default_rng(0)
    f = ref.optimal_control_samples(h) + rng.normal(size=len(ref.control_points(h)))
    assert ref.objective(f, h) > J


def test_certify_checks_the_number_of_values():
    with pytest.raises(PinnctlError, match="control_points"):
        ref.objective(np.zeros(3), 0.4)
