"""Exact reference for heat2d with a space–time control field f(x, y, t).

u_t − ν Δu = f(x, y, t) on [0,1]² × [0,2], u = 0 on the boundary and at t = 0, tracking
u_ref = 16x(1−x)y(1−y) sin(πt) on BPN's 11×11×201 grid (the same target as heat2d).

**J* = 0**, attained by f* = ∂_t u_ref − ν Δu_ref: u_ref itself satisfies the boundary and
initial conditions, so a field control can reproduce it exactly. What a run needs from this
module is therefore the certified J(f) of a learned field: f is sampled on the N×N interior
nodes x_i = i/(N+1) of a discrete sine transform at the 201 grid times; DST-I gives its
modal coefficients f_mn(t) for m, n ≤ N; each mode a' = −λ_mn a + f_mn(t), λ_mn = νπ²(m²+n²),
is stepped exactly for f_mn piecewise linear in t (the same Duhamel integrals as heat2d);
u on the grid is the sine sum. Accuracy (tests): for fields that vanish on the boundary,
like f*, J is exact to ~1e-9 (J(f*) = 7.8e-10); for fields that do not, the sine
interpolant rings at the boundary (Gibbs) and J converges like N^-1.8: a spatially constant
control gives J within 2e-3 relative of ``reference.heat2d``'s exact value at N = 63
(2.4e-3 at N = 31, 4e-4 at N = 127). J(f ≡ 0) equals heat2d's to 1e-9.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy.fft import dstn

from pinnctl.pde.reference import Bound, FieldSamples, Optimum
from .heat2d import GRID_T, GRID_X, _phi, _psi

N_SPACE = 63  # interior DST nodes per axis
MEASURES = ("grid",)


def space_nodes(n: int = N_SPACE) -> np.ndarray:
    return np.arange(1, n + 1) / (n + 1)


def control_points(*, nu: float, n: int = N_SPACE) -> np.ndarray:
    """The (x, y, t) points at which a run samples its control for ``certify``, shape (n²·201, 3)."""
    xs = space_nodes(n)
    X, Y, Tt = np.meshgrid(xs, xs, GRID_T, indexing="ij")
    return np.stack([X.ravel(), Y.ravel(), Tt.ravel()], axis=1)


def target_grid() -> np.ndarray:
    xx, yy, tt = np.meshgrid(GRID_X, GRID_X, GRID_T, indexing="ij")
    return 16 * xx * (1 - xx) * yy * (1 - yy) * np.sin(np.pi * tt)


def optimal_field(x: np.ndarray, y: np.ndarray, t: np.ndarray, *, nu: float) -> np.ndarray:
    """f* = ∂_t u_ref − ν Δu_ref (closed form)."""
    p, q = x * (1 - x), y * (1 - y)
    return 16 * p * q * np.pi * np.cos(np.pi * t) + 32 * nu * (p + q) * np.sin(np.pi * t)


@lru_cache(maxsize=8)
def _modal(nu: float, n: int) -> tuple[np.ndarray, np.ndarray]:
    m = np.arange(1, n + 1, dtype=np.float64)
    lam = nu * np.pi**2 * (m[:, None] ** 2 + m[None, :] ** 2)
    sx = np.sin(np.pi * GRID_X[:, None] * m[None, :])  # (11, n)
    return lam, sx


def grid_state(values: np.ndarray, *, nu: float, n: int = N_SPACE) -> np.ndarray:
    """u on the 11×11×201 grid for the control sampled at ``control_points`` (values flat or (n, n, 201))."""
    F = np.asarray(values, dtype=np.float64).reshape(n, n, len(GRID_T))
    coef = dstn(F, type=1, axes=(0, 1)) / (n + 1) ** 2  # f = Σ c_mn sin(mπx) sin(nπy) at the nodes
    lam, sx = _modal(float(nu), n)
    h = GRID_T[1] - GRID_T[0]
    e = np.exp(-lam * h)
    ph, ps = _phi(lam, np.full_like(lam, h)), _psi(lam, np.full_like(lam, h))
    a = np.zeros_like(lam)
    out = np.zeros((len(GRID_X), len(GRID_X), len(GRID_T)))
    for k in range(1, len(GRID_T)):  # exact step for f piecewise linear between grid times
        a = a * e + coef[:, :, k - 1] * ph + (coef[:, :, k] - coef[:, :, k - 1]) / h * ps
        out[:, :, k] = sx @ a @ sx.T
    return out


def objective(values: np.ndarray, *, nu: float, n: int = N_SPACE) -> float:
    return float(np.mean((grid_state(values, nu=nu, n=n) - target_grid()) ** 2))


def certify(values: np.ndarray, *, nu: float) -> dict[str, float]:
    return {"grid": objective(values, nu=nu)}


def optimum(*, nu: float, measure: str = "grid") -> Optimum:
    return Optimum(measure, 0.0)  # a field has no f*(t) curve to plot


def report(*, nu: float) -> str:
    pts = control_points(nu=nu)
    j_star = objective(optimal_field(pts[:, 0], pts[:, 1], pts[:, 2], nu=nu), nu=nu)
    j0 = objective(np.zeros(len(pts)), nu=nu)
    return (f"heat2d_field reference (nu = {nu:g}): J* = 0 exactly (f* = ∂t u_ref − ν Δu_ref); "
            f"this solver gives J(f*) = {j_star:.3e} (discretisation, {N_SPACE}² DST nodes × 201 times) "
            f"and J(f≡0) = {j0:.6e}")


def reference(*, nu: float) -> Bound:
    """The Reference protocol object: the field sampled at the DST nodes × grid times."""
    return Bound(measures=MEASURES, control=FieldSamples(control_points(nu=nu)), params={"nu": nu},
                 certify=certify, optimum=optimum, report=report)
