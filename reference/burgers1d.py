"""Reference for burgers1d: initial-value control of viscous Burgers to reach a target at t = T.

u_t + (u²/2)_x = ν u_xx on [−1, 1] × [0, T], u(±1, t) = 0, u(x, 0) = g(x) (the control).
Objective: mean of (u(x, T) − z(x))² over the 101 points x = −1, −0.98, …, 1.
The target z is the state at T reached from g₀(x) = −sin(πx), so **J* = 0** with g* = g₀
(the forward map of viscous Burgers is injective), in the continuum and in this solver alike.

Solver: method of lines on a uniform grid of ``N`` intervals, conservative central
differences for the flux and the diffusion (second order), integrated by scipy's BDF with a
tridiagonal Jacobian at rtol 1e-9. Second-order convergence: for a smooth control with
J ≈ 0.217, J changes by 1.2e-5 from N = 400 to 800 and by 3e-6 from 800 to 1600, so J at
N = 800 is good to ~4e-6 absolute (tests: the N sequence and a manufactured solution).
The target is computed by the same solver, so J(g₀) = 0 exactly here.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy.integrate import solve_ivp
from scipy.sparse import diags

from pinnctl.pde.reference import Bound, FieldSamples, Optimum

X_LO, X_HI, T = -1.0, 1.0, 1.0
N_GRID = 800  # intervals of the solver grid
OBJ_X = np.linspace(X_LO, X_HI, 101)
MEASURES = ("grid",)


def g0(x: np.ndarray) -> np.ndarray:
    return -np.sin(np.pi * np.asarray(x, dtype=np.float64))


def nodes(n: int = N_GRID) -> np.ndarray:
    return np.linspace(X_LO, X_HI, n + 1)


def control_points(*, nu: float, n: int = N_GRID) -> np.ndarray:
    """(x, t = 0) points at which a run samples its initial-value control for ``certify``."""
    x = nodes(n)
    return np.stack([x, np.zeros_like(x)], axis=1)


def _rhs(nu: float, n: int, source=None):
    dx = (X_HI - X_LO) / n

    def rhs(t: float, u_in: np.ndarray) -> np.ndarray:
        u = np.concatenate([[0.0], u_in, [0.0]])
        flux = 0.5 * u**2
        du = -(flux[2:] - flux[:-2]) / (2 * dx) + nu * (u[2:] - 2 * u[1:-1] + u[:-2]) / dx**2
        return du if source is None else du + source(t, nodes(n)[1:-1])

    return rhs


def final_state(g_values: np.ndarray, *, nu: float, n: int = N_GRID, source=None) -> np.ndarray:
    """u(·, T) at the solver nodes for u(x, 0) = g sampled at the nodes (boundary values forced to 0)."""
    g = np.asarray(g_values, dtype=np.float64).reshape(-1)
    pattern = diags([1.0, 1.0, 1.0], [-1, 0, 1], shape=(n - 1, n - 1))
    sol = solve_ivp(_rhs(nu, n, source), (0.0, T), g[1:-1], method="BDF", rtol=1e-9, atol=1e-11, jac_sparsity=pattern)
    if not sol.success:
        raise RuntimeError(f"burgers1d reference: integration failed: {sol.message}")
    return np.concatenate([[0.0], sol.y[:, -1], [0.0]])


@lru_cache(maxsize=8)
def target(nu: float, n: int = N_GRID) -> np.ndarray:
    """z at OBJ_X: the state at T from g₀."""
    return np.interp(OBJ_X, nodes(n), final_state(g0(nodes(n)), nu=nu, n=n))


def objective(g_values: np.ndarray, *, nu: float, n: int = N_GRID) -> float:
    u_T = np.interp(OBJ_X, nodes(n), final_state(g_values, nu=nu, n=n))
    return float(np.mean((u_T - target(float(nu), n)) ** 2))


def certify(g_values: np.ndarray, *, nu: float) -> dict[str, float]:
    return {"grid": objective(g_values, nu=nu)}


def optimum(*, nu: float, measure: str = "grid") -> Optimum:
    x = nodes(200)
    return Optimum(measure, 0.0, x, g0(x))  # t holds x here: the control is a function of space


def report(*, nu: float) -> str:
    j0 = objective(np.zeros(N_GRID + 1), nu=nu)
    coarse = objective(np.zeros(N_GRID // 2 + 1), nu=nu, n=N_GRID // 2)
    return (f"burgers1d reference (nu = {nu:g}): target = u(·,T) from g0 = −sin(πx); J* = 0 (g* = g0); "
            f"J(g ≡ 0) = {j0:.6e} (N = {N_GRID}; N = {N_GRID // 2}: {coarse:.6e})")


def reference(*, nu: float) -> Bound:
    """The Reference protocol object: the initial state sampled at the solver nodes (t = 0)."""
    return Bound(measures=MEASURES, control=FieldSamples(control_points(nu=nu)), params={"nu": nu},
                 certify=certify, optimum=optimum, report=report)
