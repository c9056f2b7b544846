"""Each condition type against an analytic solution (forward PINN for a fixed control), a two-output
system against a manufactured solution, and Taylor-mode mixed derivatives against autograd.

Tiny 1-D nets, a few hundred Adam steps: the tolerances are about twice the errors measured
(noted per test), so a broken condition (wrong normal, wrong face, wrong value) fails clearly.
"""

import math

import numpy as np
import pytest
import torch

from pinnctl.bilevel import InnerState, train_state
from pinnctl.config import PretrainCfg
from pinnctl.geometry import Box
from pinnctl.nets import MLP, Channels, jet_forward
from pinnctl.problem import (Boundary, Data, Grid, Initial, Interior, JetOps, Neumann, PDEProblem, Robin, Tracking,
                             VectorControl, compile_problem)

PI = math.pi


def exact(x):  # u = sin(πx) + x on [0, 1]: −u'' = π² sin(πx), u(0) = 0, u(1) = 1, u'(1) = 1 − π
    return torch.sin(PI * x[:, 0]) + x[:, 0]


def poisson(x, u, f, ops):
    return -ops.dx(u, x, 0, order=2) - PI**2 * torch.sin(PI * x[:, 0])


def steady(conditions, widths=(1, 16, 16, 1), outputs=None):
    return PDEProblem(name="t", domain=Box([0.0], [1.0]), time=None, conditions=conditions, state=MLP(list(widths)),
                      control=VectorControl(1), objective=Tracking(exact, points=Grid(41)), outputs=outputs)


def fit(problem, steps=600, lr=1e-2):
    prob = compile_problem(problem, seed=0)
    state = InnerState.create(prob.theta0, PretrainCfg(lr=lr))
    train_state(prob, state, prob.v0, steps)
    return prob, state.theta.detach()


def rel_l2(problem, theta, truth, x, col=0):
    u = problem.state.forward(theta, x)[:, col]
    return float((u - truth).norm() / truth.norm())


X = torch.linspace(0, 1, 101)[:, None]


def test_dirichlet_on_named_faces_with_different_values():
    """u(0) = 0 on "x=lo", u(1) = 1 on "x=hi" (measured rel. L2 0.006)."""
    p = steady({"pde": Interior(poisson, n=64), "left": Boundary(0.0, where="x=lo", n_per_side=4),
                "right": Boundary(1.0, where="x=hi", n_per_side=4)})
    prob, theta = fit(p)
    assert prob.full_batch()["left"][:, 0].eq(0).all() and prob.full_batch()["right"][:, 0].eq(1).all()
    assert rel_l2(p, theta, exact(X), X) < 0.02


def test_dirichlet_by_predicate_and_neumann_with_outward_normal():
    """u(0) = 0 (predicate), ∂u/∂n = u'(1) = 1 − π at x = 1 (normal +1) (measured 0.009)."""
    p = steady({"pde": Interior(poisson, n=64), "left": Boundary(0.0, where=lambda q: q[:, 0] < 0.5, n_per_side=4),
                "right": Neumann(1 - PI, where="x=hi", n_per_side=4)})
    prob, theta = fit(p)
    assert torch.equal(prob.full_batch()["right"][:, 1], torch.ones(4))  # the outward normal travels with the points
    assert rel_l2(p, theta, exact(X), X) < 0.03


def test_neumann_on_the_low_face_has_a_negative_normal():
    """∂u/∂n at x = 0 is −u'(0) = −(π + 1); with u(1) = 1 this fixes the same solution (measured 0.007)."""
    p = steady({"pde": Interior(poisson, n=64), "left": Neumann(-(PI + 1), where="x=lo", n_per_side=4),
                "right": Boundary(1.0, where="x=hi", n_per_side=4)})
    _, theta = fit(p)
    assert rel_l2(p, theta, exact(X), X) < 0.03


def test_robin():
    """u + ∂u/∂n = 1 + (1 − π) at x = 1, u(0) = 0 (measured 0.007)."""
    p = steady({"pde": Interior(poisson, n=64), "left": Boundary(0.0, where="x=lo", n_per_side=4),
                "right": Robin(a=1.0, b=1.0, value=2 - PI, where="x=hi", n_per_side=4)})
    _, theta = fit(p)
    assert rel_l2(p, theta, exact(X), X) < 0.03


def test_data_condition_replaces_boundary_values():
    """Observations u(x_i) at 5 points (the two ends and three inside) (measured 0.004)."""
    xs = np.array([[0.0], [0.3], [0.5], [0.8], [1.0]])
    p = steady({"pde": Interior(poisson, n=64), "obs": Data(xs, exact(torch.as_tensor(xs)).numpy())})
    _, theta = fit(p)
    assert rel_l2(p, theta, exact(X), X) < 0.02


def test_initial_condition_heat_1d():
    """u_t = 0.1 u_xx, u(x, 0) = sin(πx), u = 0 at both ends: u = exp(−0.1π²t) sin(πx) (measured 0.02)."""
    def heat(x, u, f, ops):
        return ops.dt(u, x) - 0.1 * ops.dx(u, x, 0, order=2)

    p = PDEProblem(name="h", domain=Box([0.0], [1.0]), time=(0.0, 1.0),
                   conditions={"pde": Interior(heat, n=128), "walls": Boundary(0.0, n_per_side=16),
                               "initial": Initial(lambda x: torch.sin(PI * x[:, 0]), n=32)},
                   state=MLP([2, 16, 16, 1]), control=VectorControl(1), objective=Tracking(exact, points=Grid(5, 5)))
    _, theta = fit(p, steps=800)
    g = torch.cartesian_prod(torch.linspace(0, 1, 21), torch.linspace(0, 1, 11))
    truth = torch.exp(-0.1 * PI**2 * g[:, 1]) * torch.sin(PI * g[:, 0])
    assert rel_l2(p, theta, truth, g) < 0.05


def test_two_output_system_manufactured():
    """u' = w, w' = −π² u, u(0) = 0, w(0) = π: u = sin(πx), w = π cos(πx); two named residual
    components become two loss terms (measured rel. L2 0.01 for u, 0.005 for w)."""
    def system(x, s, f, ops):
        return {"a": ops.dx(s["u"], x, 0) - s["w"], "b": ops.dx(s.w, x, 0) + PI**2 * s["u"]}

    p = steady({"pde": Interior(system, n=64), "u0": Boundary(0.0, where="x=lo", n_per_side=2, output="u"),
                "w0": Boundary(PI, where="x=lo", n_per_side=2, output="w")}, widths=(1, 16, 16, 2), outputs=("u", "w"))
    prob, theta = fit(p, steps=800)
    assert prob.info["terms"] == ["pde.a", "pde.b", "u0", "w0"]
    assert set(prob.inner_terms(theta, prob.v0, prob.full_batch())) == {"pde.a", "pde.b", "u0", "w0"}
    assert rel_l2(p, theta, torch.sin(PI * X[:, 0]), X, col=0) < 0.04
    assert rel_l2(p, theta, PI * torch.cos(PI * X[:, 0]), X, col=1) < 0.04


def test_mixed_second_derivatives_of_each_output_match_autograd():
    spec = MLP([2, 6, 6, 3])
    params = spec.init_params(1).double()
    x = torch.rand(7, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    ops = JetOps(jet_forward(spec, params, x, Channels(second=((0, 1), 0, 1))), None, 2, ("u", "v", "p"))
    s = ops.state()
    xr = x.clone().requires_grad_(True)
    out = spec.forward(params, xr)
    for k, name in enumerate(("u", "v", "p")):
        g = torch.autograd.grad(out[:, k].sum(), xr, create_graph=True)[0]
        gxy = torch.autograd.grad(g[:, 0].sum(), xr, retain_graph=True)[0][:, 1]
        gyy = torch.autograd.grad(g[:, 1].sum(), xr, retain_graph=True)[0][:, 1]
        torch.testing.assert_close(ops.d2(s[name], x, 0, 1), gxy, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(ops.d2(name, x, 1, 0), gxy, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(ops.dx(s[name], x, 1, order=2), gyy, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(ops.grad(s[name], x), g.detach(), rtol=1e-10, atol=1e-12)


def test_residual_reading_mixed_derivative_gets_its_channel():
    p = PDEProblem(name="m", domain=Box([0, 0], [1, 1]), time=None,
                   conditions={"pde": Interior(lambda x, u, f, ops: ops.d2(u, x, 0, 1), n=8)},
                   state=MLP([2, 4, 1]), control=VectorControl(1), objective=Tracking(lambda x: x[:, 0], Grid(3, 3)))
    assert compile_problem(p).info["channels"]["pde"] == ((0, 1), ((0, 1),))
