"""Laplace on the unit square, boundary control on the top face: u(x,1) = sum_k v_k sin(k pi x) (2 modes) steers u to a target (J* = 0, closed-form reference)."""

import numpy as np
import torch

from pinnctl.geometry import Box
from pinnctl.nets import MLP
from pinnctl.problem import (CONTROL, Basis, Boundary, ControlVector, Grid, Interior, Optimum, PDEProblem, Reference,
                             Tracking, VectorControl)

MODES = 2
V_STAR = np.array([1.0, -0.5])  # the control that produces the target


def modes(x, y):
    """Φ_k(x, y) = sin(kπx) sinh(kπy)/sinh(kπ): the harmonic function with u = sin(kπx) on top, 0 elsewhere."""
    k = np.arange(1, MODES + 1)
    return np.sin(np.pi * np.outer(x, k)) * np.sinh(np.pi * np.outer(y, k)) / np.sinh(np.pi * k)


class LaplaceTop(Reference):
    """Exact: u = Σ v_k Φ_k, so J(v) = mean (Φ v − z)² on the objective grid, J* = 0 at v*."""

    measures, control = ("grid",), ControlVector(size=MODES)

    def __init__(self, points: np.ndarray) -> None:
        self.phi = modes(points[:, 0], points[:, 1])
        self.z = self.phi @ V_STAR

    def certify(self, v):
        return {"grid": float(np.mean((self.phi @ v - self.z) ** 2))}

    def optimum(self, measure=None):
        return Optimum("grid", 0.0)

    def state(self, v, points):
        return modes(points[:, 0], points[:, 1]) @ np.asarray(v)

    def report(self):
        return f"laplace_bc: J* = 0 at v* = {V_STAR.tolist()}; J(0) = {self.certify(np.zeros(MODES))['grid']:.6e}"


def make(width: int = 32, n: int = 512) -> PDEProblem:
    grid = Grid(11, 11)
    pts = np.stack(np.meshgrid(np.linspace(0, 1, 11), np.linspace(0, 1, 11), indexing="ij"), -1).reshape(-1, 2)
    ref = LaplaceTop(pts)

    def target(x):
        return torch.as_tensor(modes(x[:, 0].cpu().numpy(), x[:, 1].cpu().numpy()) @ V_STAR, dtype=x.dtype, device=x.device)

    basis = Basis([lambda x, k=k: torch.sin(k * torch.pi * x[:, 0]) for k in range(1, MODES + 1)])
    return PDEProblem(
        name="laplace_bc",
        domain=Box([0, 0], [1, 1]),
        time=None,
        conditions={
            "pde": Interior(lambda x, u, f, ops: ops.laplacian(u, x), n=n, control=None),
            "top": Boundary(value=CONTROL, where="y=hi", n_per_side=n // 8),  # u = Σ v_k sin(kπx) on y = 1
            "walls": Boundary(value=0.0, where=["x=lo", "x=hi", "y=lo"], n_per_side=n // 8),
        },
        state=MLP([2, width, width, 1]),
        control=VectorControl(MODES, profile=basis),
        objective=Tracking(target, points=grid),
        reference=ref,
        params={"width": width, "n": n},
    )
