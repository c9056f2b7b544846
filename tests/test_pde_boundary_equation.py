"""BoundaryEquation (a residual coupling outputs on a boundary part) and CONTROL * w (a control's
values times a function of the points), checked against autograd and the profile by hand."""

import numpy as np
import pytest
import torch

from pinnctl import PinnctlError
from pinnctl.geometry import Box
from pinnctl.nets import MLP
from pinnctl.problem import (CONTROL, Boundary, BoundaryEquation, Interior, PDEProblem, PiecewiseLinear, Points,
                             Tracking, VectorControl, compile_problem)


def _problem(value) -> PDEProblem:
    def traction(x, s, f, ops, n):
        return {"x": -s["p"] + 0.1 * (ops.grad(s["u"], x) * n).sum(1), "y": ops.dx(s["u"], x, 1)}

    return PDEProblem(
        name="toy", domain=Box([0.0, 0.0], [2.0, 1.0]), time=None,
        conditions={"pde": Interior(lambda x, s, f, ops: ops.laplacian(s["u"], x), n=8, control=None),
                    "left": Boundary(value, where="x=lo", n_per_side=16, output="u"),
                    "right": BoundaryEquation(traction, where="x=hi", n_per_side=16)},
        state=MLP([2, 8, 8, 2]), outputs=("u", "p"),
        control=VectorControl(5, init=0.0, profile=PiecewiseLinear(axis=1, lo=0.0, hi=1.0)),
        objective=Tracking(lambda x: x[:, 1], points=Points(np.array([[1.0, 0.5]])), output="u"))


def test_boundary_equation_matches_autograd():
    prob = _problem(CONTROL)
    bp = compile_problem(prob, seed=3)
    p = bp.full_batch()["right"]
    assert torch.allclose(p[:, 2:], torch.tensor([1.0, 0.0]).expand(len(p), 2))  # outward normals of x = hi
    res = bp.residuals(bp.theta0, bp.v0, bp.full_batch())
    x = p[:, :2].clone().requires_grad_(True)
    out = prob.state.forward(bp.theta0, x)
    du = torch.autograd.grad(out[:, 0].sum(), x)[0]
    assert torch.allclose(res["right.x"][0], -out[:, 1] + 0.1 * du[:, 0], atol=1e-6)
    assert torch.allclose(res["right.y"][0], du[:, 1], atol=1e-6)


def test_control_times_function():
    w = lambda x: 4 * x[:, 1] * (1 - x[:, 1])  # noqa: E731
    bp = compile_problem(_problem(CONTROL * w), seed=0)
    v = torch.tensor([0.5, 1.0, -2.0, 3.0, 1.5])
    p = bp.full_batch()["left"]
    r = bp.residuals(bp.theta0, v, bp.full_batch())["left"][0]
    u = _problem(CONTROL).state.forward(bp.theta0, p[:, :2])[:, 0]
    y = p[:, 1].double().numpy()
    expected = np.interp(y, np.linspace(0, 1, 5), v.double().numpy()) * 4 * y * (1 - y)
    assert np.allclose((u - r).double().numpy(), expected, atol=1e-6)
    assert (w * CONTROL).scale is w and (CONTROL * w * w).scale is not None
    with pytest.raises(PinnctlError, match="needs a function"):
        CONTROL * 2.0
