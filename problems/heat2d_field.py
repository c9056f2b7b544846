"""heat2d with a space-time control field f(x,y,t) (a 4.5k-parameter control net); exact optimum J* = 0."""

import torch

from pinnctl.geometry import Box
from pinnctl.nets import MLP
from pinnctl.problem import Boundary, FieldControl, Grid, Initial, Interior, PDEProblem, Tracking


def target(x):
    return 16 * x[:, 0] * (1 - x[:, 0]) * x[:, 1] * (1 - x[:, 1]) * torch.sin(torch.pi * x[:, 2])


def make(nu: float = 0.001) -> PDEProblem:
    def residual(x, u, f, ops):  # x = (x, y, t); f = f(x, y, t)
        return ops.dt(u, x) - nu * ops.laplacian(u, x, space=(0, 1)) - f

    return PDEProblem(
        name="heat2d_field",
        domain=Box([0, 0], [1, 1]),
        time=(0.0, 2.0),
        conditions={
            "pde": Interior(residual, n=1024),
            "boundary": Boundary(value=0.0, n_per_side=256),
            "initial": Initial(value=0.0, n=256),
        },
        state=MLP([3, 64, 64, 64, 64, 1]),
        control=FieldControl(MLP([3, 64, 64, 1])),
        objective=Tracking(target, points=Grid(11, 11, 201)),
        reference="heat2d_field",
        params={"nu": nu},
    )
