"""Steady Navier–Stokes (Re = 100) in a channel with wall blowing/suction: the inlet profile θ(y)·4y(1−y) steers the outlet to 4y(1−y) (BPN's ns2inlet)."""

import numpy as np

from pinnctl import PinnctlError
from pinnctl.geometry import Box
from pinnctl.nets import MLP
from pinnctl.problem import (CONTROL, Boundary, BoundaryEquation, Interior, PDEProblem, Points, Tracking, VectorControl,
                             relu_penalty)
from pinnctl.reference import ns_inlet as ref


def _y(x):
    return x[:, 1]


def make(outflow: str = "traction", re: float = ref.RE) -> PDEProblem:
    """``outflow="traction"``: −p + (1/Re)∂u/∂x = 0, ∂v/∂x = 0 at x = 1.5 (what the FEM reference imposes
    naturally); ``"pressure"``: BPN's p = 0 alone, which leaves the PINN's outlet velocity unconstrained."""
    if outflow not in ref.OUTFLOWS:
        raise PinnctlError(f"ns_inlet: outflow must be one of {', '.join(ref.OUTFLOWS)}; got {outflow!r}")
    if not re > 0:
        raise PinnctlError(f"ns_inlet: re must be > 0 (a Reynolds number); got {re}")
    nu = 1.0 / re

    def navier_stokes(x, s, f, ops):
        u, v, p = s["u"], s["v"], s["p"]
        ux, uy, vx, vy = ops.dx(u, x, 0), ops.dx(u, x, 1), ops.dx(v, x, 0), ops.dx(v, x, 1)
        return {"momentum_x": u * ux + v * uy + ops.dx(p, x, 0) - nu * ops.laplacian(u, x),
                "momentum_y": u * vx + v * vy + ops.dx(p, x, 1) - nu * ops.laplacian(v, x),
                "continuity": ux + vy}

    def traction(x, s, f, ops, n):  # the outward normal is +x on the outlet
        return {"x": -s["p"] + nu * ops.dx(s["u"], x, 0), "y": ops.dx(s["v"], x, 0)}

    walls = ["y=lo", "y=hi"]
    side = 64  # 4 faces × 64 = BPN's 256 boundary points
    outlet = (BoundaryEquation(traction, where="x=hi", n_per_side=side) if outflow == "traction"
              else Boundary(0.0, where="x=hi", n_per_side=side, output="p"))
    y_out = ref.outlet_y()
    return PDEProblem(
        name="ns_inlet",
        domain=Box([0.0, 0.0], [ref.LX, ref.LY]),
        time=None,
        conditions={
            "pde": Interior(navier_stokes, n=4096, control=None),
            "inlet_u": Boundary(CONTROL * (lambda x: ref.parabola(_y(x))), where="x=lo", n_per_side=side, output="u"),
            "inlet_v": Boundary(0.0, where="x=lo", n_per_side=side, output="v"),
            "wall_u": Boundary(0.0, where=walls, n_per_side=side // 2, output="u"),
            "wall_v": Boundary(lambda x: ref.wall_v(x[:, 0]), where=walls, n_per_side=side // 2, output="v"),
            "outlet": outlet,
        },
        state=MLP([2, 64, 64, 64, 64, 64, 3]),
        outputs=("u", "v", "p"),
        control=VectorControl(ref.N_CONTROL, init=1.0, profile=ref.INLET),
        objective=Tracking(lambda x: ref.parabola(_y(x)), points=Points(np.stack([np.full_like(y_out, ref.LX), y_out], 1)),
                           output="u"),
        penalties={"box": relu_penalty(ref.PENALTY / ref.N_CONTROL, lo=0.0, hi=ref.THETA_MAX),
                   "mean": relu_penalty(ref.PENALTY, mean_hi=ref.MEAN_MAX)},
        reference="ns_inlet",
        params={"outflow": outflow, "re": float(re)},
        preset_defaults={
            # BPN's ns2inlet_boundary.py: 5000 Adam pretraining steps at 1e-3, 500 outer × 50 inner, outer lr 0.05
            "paper": {"pretrain.steps": 5000, "pretrain.lr": 1e-3, "outer.steps": 500, "inner.steps": 50,
                      "outer.lr": 0.05},
            "quick": {"pretrain.steps": 1500, "outer.steps": 30, "inner.steps": 10, "outer.lr": 0.05},
        },
        # BPN's Broyden setting; NHGD's fast setting (the quick preset's, which a problem stating its own setup repeats)
        method_defaults={"broyden": {"threshold": 40, "eps": 1e-4}, "nhgd": {"every": 5, "warm_start": True}},
    )
