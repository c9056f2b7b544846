"""Laplace on the unit square, Neumann (flux) control on the top face: du/dn(x,1) = sum_k v_k sin(k pi x) steers u to a target (J* = 0, closed-form reference)."""

import numpy as np
import torch

from pinnctl.geometry import Box
from pinnctl.nets import MLP
from pinnctl.problem import (CONTROL, Basis, Boundary, ControlVector, Grid, Interior, Neumann, Optimum, PDEProblem,
                             Reference, Tracking, VectorControl)

MODES = 2
V_STAR = np.array([2.0, -1.0])


def modes(x, y):
    """Ψ_k = sin(kπx) sinh(kπy)/(kπ cosh(kπ)): harmonic, ∂Ψ_k/∂y = sin(kπx) on y = 1, Ψ_k = 0 on the other faces."""
    k = np.arange(1, MODES + 1)
    return np.sin(np.pi * np.outer(x, k)) * np.sinh(np.pi * np.outer(y, k)) / (np.pi * k * np.cosh(np.pi * k))


class LaplaceFlux(Reference):
    """Exact: u = Σ v_k Ψ_k, J(v) = mean (Ψ v − z)² on the objective grid, J* = 0 at v*."""

    measures, control = ("grid",), ControlVector(size=MODES)

    def __init__(self, points: np.ndarray) -> None:
        self.psi = modes(points[:, 0], points[:, 1])
        self.z = self.psi @ V_STAR

    def certify(self, v):
        return {"grid": float(np.mean((self.psi @ v - self.z) ** 2))}

    def optimum(self, measure=None):
        return Optimum("grid", 0.0)

    def state(self, v, points):
        return modes(points[:, 0], points[:, 1]) @ np.asarray(v)


def make(width: int = 32, n: int = 512) -> PDEProblem:
    pts = np.stack(np.meshgrid(np.linspace(0, 1, 11), np.linspace(0, 1, 11), indexing="ij"), -1).reshape(-1, 2)

    def target(x):
        return torch.as_tensor(modes(x[:, 0].cpu().numpy(), x[:, 1].cpu().numpy()) @ V_STAR, dtype=x.dtype, device=x.device)

    basis = Basis([lambda x, k=k: torch.sin(k * torch.pi * x[:, 0]) for k in range(1, MODES + 1)])
    return PDEProblem(
        name="laplace_flux",
        domain=Box([0, 0], [1, 1]),
        time=None,
        conditions={
            "pde": Interior(lambda x, u, f, ops: ops.laplacian(u, x), n=n, control=None),
            "flux": Neumann(value=CONTROL, where="y=hi", n_per_side=n // 8),  # ∂u/∂n = Σ v_k sin(kπx) on y = 1
            "walls": Boundary(value=0.0, where=["x=lo", "x=hi", "y=lo"], n_per_side=n // 8),
        },
        state=MLP([2, width, width, 1]),
        control=VectorControl(MODES, profile=basis),
        objective=Tracking(target, points=Grid(11, 11)),
        reference=LaplaceFlux(pts),
        params={"width": width, "n": n},
    )
