"""2-D heat equation with a time-only source control, tracking 16x(1-x)y(1-y)sin(pi t) (Hao et al., BPN)."""

import torch

from pinnctl.geometry import Box
from pinnctl.nets import MLP
from pinnctl import PinnctlError
from pinnctl.config import PRESETS
from pinnctl.problem import Boundary, Grid, Initial, Interior, PDEProblem, TimeControl, Tracking


def target(x):
    return 16 * x[:, 0] * (1 - x[:, 0]) * x[:, 1] * (1 - x[:, 1]) * torch.sin(torch.pi * x[:, 2])


def make(nu: float = 0.001) -> PDEProblem:
    if not nu > 0:
        raise PinnctlError(f"heat2d: nu must be > 0 (a diffusivity); got {nu}")
    def residual(x, u, f, ops):  # x = (x, y, t); f = control at t
        return ops.dt(u, x) - nu * ops.laplacian(u, x, space=(0, 1)) - f

    return PDEProblem(
        name="heat2d",
        domain=Box([0, 0], [1, 1]),
        time=(0.0, 2.0),
        conditions={
            "pde": Interior(residual, n=1024),
            "boundary": Boundary(value=0.0, n_per_side=256),
            "initial": Initial(value=0.0, n=256),
        },
        state=MLP([3, 64, 64, 64, 64, 1]),
        control=TimeControl(MLP([1, 32, 32, 1])),
        objective=Tracking(target, points=Grid(11, 11, 201)),
        reference="heat2d",
        params={"nu": nu},
        # heat2d's quick preset is the gn preset (Gauss–Newton outer step through the exact Woodbury IHVP):
        # about twice as fast and closer to J* than Adam's 200 × 20 steps (docs/heat2d-methods.md)
        preset_defaults={"quick": PRESETS["gn"]},
    )
