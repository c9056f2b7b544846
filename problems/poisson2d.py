"""Poisson on an L-shaped domain (deepxde geometry): a distributed source f(x,y) steers u to sin2πx sin2πy (J* = 0)."""

import torch

from pinnctl import PinnctlError
from pinnctl.geometry import DeepXDEGeometry, deepxde
from pinnctl.nets import MLP
from pinnctl.problem import Boundary, FieldControl, Interior, PDEProblem, Points, Tracking
from pinnctl.reference import poisson2d as ref


def target(x):
    return torch.sin(2 * torch.pi * x[:, 0]) * torch.sin(2 * torch.pi * x[:, 1])


def make(alpha: float = 0.0) -> PDEProblem:
    if not alpha >= 0:
        raise PinnctlError(f"poisson2d: alpha must be >= 0 (a control cost weight); got {alpha}")
    def residual(x, u, f, ops):  # -Δu - f = 0
        return -ops.laplacian(u, x) - f

    return PDEProblem(
        name="poisson2d",
        domain=DeepXDEGeometry(deepxde().geometry.Polygon(ref.L_VERTICES)),
        time=None,
        conditions={"pde": Interior(residual, n=2048), "boundary": Boundary(value=0.0, n_per_side=512)},
        state=MLP([2, 64, 64, 64, 1]),
        control=FieldControl(MLP([2, 32, 32, 1])),
        objective=Tracking(target, points=Points(ref.objective_points()), control_weight=alpha),
        reference="poisson2d",
        params={"alpha": alpha},
    )
