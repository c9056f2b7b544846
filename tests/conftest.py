"""Shared small problems for tests (tiny nets, few points, float64 where truth is needed)."""

import os
import shutil
import tempfile

import pytest
import torch

from pinnctl.geometry import Box
from pinnctl.nets import MLP
from pinnctl.problem import Boundary, Grid, Initial, Interior, PDEProblem, TimeControl, Tracking, compile_problem


def pytest_configure(config):
    """Tests never read the user's reference cache (pinnctl.diskcache): each session starts an empty one,
    so every J* a test checks is computed in that session."""
    config._pinnctl_cache = tempfile.mkdtemp(prefix="pinnctl-test-cache-")
    os.environ["PINNCTL_CACHE"] = config._pinnctl_cache


def pytest_unconfigure(config):
    shutil.rmtree(getattr(config, "_pinnctl_cache", ""), ignore_errors=True)


def tiny_heat(nu: float = 0.1, widths=(3, 8, 8, 1), n: int = 32) -> PDEProblem:
    def residual(x, u, f, ops):
        return ops.dt(u, x) - nu * ops.laplacian(u, x, space=(0, 1)) - f

    def target(x):
        return 16 * x[:, 0] * (1 - x[:, 0]) * x[:, 1] * (1 - x[:, 1]) * torch.sin(torch.pi * x[:, 2])

    return PDEProblem(
        name="tiny_heat",
        domain=Box([0, 0], [1, 1]),
        time=(0.0, 2.0),
        conditions={
            "pde": Interior(residual, n=n),
            "boundary": Boundary(value=0.0, n_per_side=n // 4),
            "initial": Initial(value=0.0, n=n // 2, weight=2.0),
        },
        state=MLP(list(widths)),
        control=TimeControl(MLP([1, 4, 1])),
        objective=Tracking(target, points=Grid(5, 5, 9)),
    )


def dense_gn_step(prob, theta, v, batch, damping):
    """(JᵀJ + λI)⁻¹ g with J the Jacobian of the scaled residual vector, by autograd, dense:
    the independent truth for the Gauss–Newton steps of ENGD and NBO."""
    def scaled(t):
        return torch.cat([r * (2.0 * w / r.numel()) ** 0.5 for r, w in prob.residuals(t, v, batch).values()])

    J = torch.autograd.functional.jacobian(scaled, theta.detach().double()).double()
    t = theta.detach().clone().requires_grad_(True)
    g = torch.autograd.grad(prob.inner_loss(t, v, batch), t)[0].double()
    return torch.linalg.solve(J.T @ J + damping * torch.eye(J.shape[1], dtype=torch.float64), g)


@pytest.fixture
def tiny_problem():
    return compile_problem(tiny_heat(), seed=0)
