"""Poisson on a square with four holes (Bi-level PINN): a source on the central disk steers u to 1 (J* > 0, FEM reference)."""

from __future__ import annotations

import numpy as np
import torch

from pinnctl.geometry import DeepXDEGeometry, deepxde
from pinnctl.nets import MLP
from pinnctl.problem import Boundary, FieldControl, Functional, Interior, PDEProblem, Points
from pinnctl.reference import poisson_holes as holes

CONTROL_NET = MLP([2, 32, 32, 32, 1])


def geometry() -> DeepXDEGeometry:
    """[−4, 4]² minus the four disks, as R − ((D1 ∪ D2) ∪ (D3 ∪ D4)).

    Why not BPN's (((R − D1) − D2) − D3) − D4: deepxde's difference draws half of its boundary
    points from its second operand, so that chain puts 1/16 of them on the square and 1/2, 1/4,
    1/8, 1/16 on the circles; subtracting one balanced union gives the square half and each
    circle an eighth (docs/problems.md)."""
    dde = deepxde().geometry
    d = [dde.Disk(list(c), holes.HOLE_R) for c in holes.HOLE_CENTRES]
    disks = dde.csg.CSGUnion(dde.csg.CSGUnion(d[0], d[1]), dde.csg.CSGUnion(d[2], d[3]))
    return DeepXDEGeometry(dde.csg.CSGDifference(dde.Rectangle([-holes.HALF] * 2, [holes.HALF] * 2), disks))


def on_square(x: np.ndarray) -> np.ndarray:
    return np.isclose(np.abs(x[:, :2]).max(axis=1), holes.HALF)


def initial_control(points: np.ndarray) -> np.ndarray:
    """f₀ at points: the control net as a seed-0 run initialises it (compile draws the first
    control with seed + 1)."""
    v = CONTROL_NET.init_params(1)
    with torch.no_grad():
        return CONTROL_NET.forward(v, torch.as_tensor(points, dtype=v.dtype)).reshape(-1).double().numpy()


def make(n_interior: int = 2304, n_boundary: int = 384, n_objective: int = 2304, h: float = holes.H) -> PDEProblem:
    def residual(x, u, f, ops):  # Δu − f·1{|x| ≤ 1.6} = 0, BPN's sign
        return ops.laplacian(u, x) - f * (x.norm(dim=1) <= holes.CTRL_R).to(x.dtype)

    def objective(x, u, f):  # BPN's J: the domain mean of (u − 1)² times the area
        return holes.AREA * ((u - 1.0) ** 2).mean()

    domain = geometry()
    return PDEProblem(
        name="poisson_holes",
        domain=domain,
        time=None,
        conditions={
            "pde": Interior(residual, n=n_interior),
            "square": Boundary(value=1.0, where=on_square, n_per_side=n_boundary),
            "circles": Boundary(value=0.0, where=lambda x: ~on_square(x), n_per_side=n_boundary),
        },
        state=MLP([2, 50, 50, 50, 50, 1]),
        control=FieldControl(CONTROL_NET, inputs="space"),
        objective=Functional(objective, points=Points(domain.interior(n_objective, seed=12345))),
        reference=holes.reference(initial=initial_control, h=h),  # h: the FEM mesh size
        params={"n_interior": n_interior, "n_boundary": n_boundary, "n_objective": n_objective, "h": h},
        # BPN's script: pretrain 10000 Adam steps (1e-3), 20 outer steps of 256 inner steps, outer
        # Adam 0.01 with hypergradients clipped to ±0.1, Broyden threshold 20 (eps 1e-6)
        preset_defaults={"paper": {"pretrain.steps": 10000, "outer.steps": 20, "inner.steps": 256, "outer.lr": 0.01},
                         "quick": {"pretrain.steps": 2000, "outer.steps": 30, "inner.steps": 64, "outer.lr": 0.01}},
        # NHGD's fast setting (the quick preset's, which a problem stating its own setup must repeat)
        method_defaults={"broyden": {"threshold": 20}, "nhgd": {"every": 5, "warm_start": True}},
    )
