"""Viscous Burgers on [-1,1]: choose the initial state g(x) so that u(x,T=1) hits a target (J* = 0, g* = -sin(pi x))."""

import numpy as np
import torch

from pinnctl import PinnctlError
from pinnctl.geometry import Box
from pinnctl.nets import MLP
from pinnctl.problem import CONTROL, Boundary, FieldControl, Initial, Interior, PDEProblem, Points, Tracking
from pinnctl.reference import burgers1d as ref


def make(nu: float = 0.05) -> PDEProblem:
    if not nu > 0:
        raise PinnctlError(f"burgers1d: nu must be > 0 (a viscosity); got {nu}")
    z = ref.target(nu)  # u(x, T) reached from g*(x) = -sin(pi x), by the reference solver

    def target(x):
        return torch.as_tensor(np.interp(x[:, 0].cpu().numpy(), ref.OBJ_X, z), dtype=x.dtype, device=x.device)

    def residual(x, u, f, ops):  # u_t + u u_x - nu u_xx = 0 (f is unused: the control acts at t = 0)
        return ops.dt(u, x) + u * ops.dx(u, x, 0) - nu * ops.laplacian(u, x, space=(0,))

    return PDEProblem(
        name="burgers1d",
        domain=Box([ref.X_LO], [ref.X_HI]),
        time=(0.0, ref.T),
        conditions={
            "pde": Interior(residual, n=2048),
            "boundary": Boundary(value=0.0, n_per_side=128),
            "initial": Initial(value=CONTROL, n=256),  # u(x, 0) = g_v(x): initial-value control
        },
        state=MLP([2, 64, 64, 64, 1]),
        control=FieldControl(MLP([1, 32, 32, 1]), inputs="space"),
        objective=Tracking(target, points=Points(np.stack([ref.OBJ_X, np.full_like(ref.OBJ_X, ref.T)], 1))),
        reference="burgers1d",
        params={"nu": nu},
    )
