"""Controls anywhere (profiles, several named controls, bounds, penalties), objectives of derivatives,
Gauss–Newton/K-FAC of a system residual against dense matrices, a boundary vector control's
hypergradient against the exact reference, and a user problem bringing its own Reference."""

import json
import math
import textwrap

import numpy as np
import pytest
import torch

from pinnctl.bilevel import InnerState, inner_step, train_state
from pinnctl.cli import main
from pinnctl.config import PretrainCfg
from pinnctl.geometry import Box
from pinnctl.hypergrad import make_method
from pinnctl.hypergrad.autodiff import gn_matvec
from pinnctl.nets import MLP
from pinnctl.problem import (Boundary, ControlRef, Data, Grid, Interior, PDEProblem, PiecewiseLinear, Points, Tracking,
                             VectorControl, compile_problem, relu_penalty, tikhonov)

PI = math.pi


def system_problem(widths=(1, 5, 5, 2)):
    def system(x, s, f, ops):
        return {"a": ops.dx(s["u"], x, 0) - s["w"], "b": ops.dx(s["w"], x, 0, order=2) + f[0] * s["u"] * s["w"]}

    return PDEProblem(name="sys", domain=Box([0.0], [1.0]), time=None,
                      conditions={"pde": Interior(system, n=6), "u0": Boundary(0.0, where="x=lo", n_per_side=2, output="u"),
                                  "w1": Boundary(1.0, where="x=hi", n_per_side=2, output="w", weight=3.0)},
                      state=MLP(list(widths)), control=VectorControl(1, init=0.7), outputs=("u", "w"),
                      objective=Tracking(lambda x: x[:, 0], Grid(5), output="w"))


def test_gauss_newton_of_a_system_matches_the_dense_jacobian():
    prob = compile_problem(system_problem(), seed=0, dtype=torch.float64)
    theta, v, batch = prob.theta0, prob.v0, prob.full_batch()
    assert theta.dtype == torch.float64 and all(p.dtype == torch.float64 for p in batch.values())

    def scaled(t):
        return torch.cat([r * (2.0 * w / r.numel()) ** 0.5 for r, w in prob.residuals(t, v, batch).values()])

    J = torch.autograd.functional.jacobian(scaled, theta)
    torch.testing.assert_close(prob.jacobian_rows(theta, v, batch), J, rtol=1e-10, atol=1e-12)
    w = torch.randn(theta.numel(), dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(gn_matvec(prob, theta, v, batch, w), J.T @ (J @ w), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(0.5 * (scaled(theta) ** 2).sum(), prob.inner_loss(theta, v, batch), rtol=1e-12, atol=0)


def test_jacobian_rows_of_a_time_dependent_problem_match_jacrev():
    """heat-type residual (u_t, Laplacian, a time control): the per-point rows from the recorded
    channels (one backward per component) against torch.func.jacrev of the scaled residuals."""
    from conftest import tiny_heat
    from pinnctl.hypergrad.autodiff import scaled_residuals

    prob = compile_problem(tiny_heat(), seed=0, dtype=torch.float64)
    theta, v, batch = prob.theta0, prob.v0 + 0.2, prob.full_batch()
    J = torch.func.jacrev(lambda t: scaled_residuals(prob, t, v, batch))(theta)
    torch.testing.assert_close(prob.jacobian_rows(theta, v, batch), J, rtol=1e-10, atol=1e-12)


def test_kfac_of_a_system_is_exact_for_one_linear_layer():
    """Two outputs observed at the same points through one linear layer: every term has the same
    input factor A, so A ⊗ (B_u + B_w) is the exact Gauss–Newton matrix (in vec order of [W | b])."""
    xs = np.linspace(0, 1, 7)[:, None]
    p = PDEProblem(name="lin", domain=Box([0.0], [1.0]), time=None,
                   conditions={"u": Data(xs, np.sin(xs[:, 0]), output="u"), "w": Data(xs, np.cos(xs[:, 0]), output="w", weight=2.0)},
                   state=MLP([1, 2]), control=VectorControl(1), outputs=("u", "w"),
                   objective=Tracking(lambda x: x[:, 0], Grid(3)))
    prob = compile_problem(p, seed=0, dtype=torch.float64)
    theta, v, batch = prob.theta0, prob.v0, prob.full_batch()
    J = prob.jacobian_rows(theta, v, batch)
    G = J.T @ J  # θ = (W₀₀, W₁₀, b₀, b₁); K-FAC orders [W | b] column-major: (W₀₀, W₁₀, b₀, b₁) as well
    (A, B), = prob.kfac_factors(theta, v, batch)
    torch.testing.assert_close(torch.kron(A, B), G, rtol=1e-10, atol=1e-12)


def test_kfac_runs_on_every_component_of_a_system():
    prob = compile_problem(system_problem(), seed=0, dtype=torch.float64)
    factors = prob.kfac_factors(prob.theta0, prob.v0, prob.full_batch())
    assert [(A.shape[0], B.shape[0]) for A, B in factors] == [(2, 5), (6, 5), (6, 2)]
    assert all(torch.linalg.eigvalsh(A).min() > -1e-12 and torch.linalg.eigvalsh(B).min() > -1e-12 for A, B in factors)


def test_piecewise_linear_profile_and_bounds():
    prof = PiecewiseLinear(axis=0, lo=0.0, hi=2.0)
    v = torch.tensor([1.0, 3.0, -1.0])
    x = torch.tensor([[0.0], [0.5], [1.0], [1.75], [2.0]])
    torch.testing.assert_close(prof(v, x), torch.tensor([1.0, 2.0, 3.0, 0.0, -1.0]))
    c = VectorControl(3, init=0.25, bounds=(0.0, 1.0))
    torch.testing.assert_close(c.vector(c.init(0)), torch.full((3,), 0.25))
    assert float(c.vector(torch.full((3,), 50.0)).max()) <= 1.0 and float(c.vector(torch.full((3,), -50.0)).min()) >= 0.0


def test_several_named_controls_share_one_flat_v():
    """A scalar source on the interior and a 3-node inlet profile on x = lo of a 2-D box."""
    def pde(x, u, f, ops):
        return ops.laplacian(u, x) + f[0]

    p = PDEProblem(name="two", domain=Box([0, 0], [1, 1]), time=None,
                   conditions={"pde": Interior(pde, n=8, control=ControlRef("source")),
                               "inlet": Boundary(ControlRef("inlet"), where="x=lo", n_per_side=5),
                               "walls": Boundary(0.0, where=["x=hi", "y=lo", "y=hi"], n_per_side=2)},
                   state=MLP([2, 4, 1]), objective=Tracking(lambda x: x[:, 0], Grid(3, 3)),
                   control={"source": VectorControl(1, init=2.0), "inlet": VectorControl(3, profile=PiecewiseLinear(1, 0.0, 1.0))})
    prob = compile_problem(p, seed=0)
    assert prob.v0.numel() == 4 and prob.info["control_slices"] == {"source": slice(0, 1), "inlet": slice(1, 4)}
    v = torch.tensor([2.0, 1.0, 0.0, -1.0])
    batch = prob.full_batch()
    y = batch["inlet"][:, 1]
    u = p.state.forward(prob.theta0, batch["inlet"])[:, 0]
    torch.testing.assert_close(prob.residuals(prob.theta0, v, batch)["inlet"][0], u - (1 - 2 * y))
    with pytest.raises(Exception, match="uses control 'nope'; controls: source, inlet"):
        PDEProblem(name="two", domain=p.domain, time=None, conditions={"pde": Interior(pde, control=ControlRef("nope"))},
                   state=p.state, control=p.control, objective=p.objective)


def test_objective_of_a_derivative_and_penalties():
    """Tracking of du/dx (a flux) against autograd, plus relu and Tikhonov penalties on the bounded vector."""
    xs = np.linspace(0, 1, 9)[:, None]
    p = PDEProblem(name="obj", domain=Box([0.0], [1.0]), time=None,
                   conditions={"pde": Interior(lambda x, u, f, ops: ops.dx(u, x, 0, order=2), n=8)},
                   state=MLP([1, 6, 1]), control=VectorControl(3, init=0.5, bounds=(0.0, 2.0)),
                   objective=Tracking(lambda x: torch.cos(x[:, 0]), Points(xs), of=lambda x, u, ops: ops.dx(u, x, 0)),
                   penalties={"box": relu_penalty(10.0, hi=0.8, mean_lo=0.6), "cost": tikhonov(0.1, rate=1.0)})
    prob = compile_problem(p, seed=0, dtype=torch.float64)
    theta, v = prob.theta0, torch.tensor([0.0, 1.0, -1.0], dtype=torch.float64)
    x = torch.as_tensor(xs).requires_grad_(True)
    du = torch.autograd.grad(p.state.forward(theta, x)[:, 0].sum(), x)[0][:, 0]
    b = 2 * torch.sigmoid(v)  # the bounded values the penalties see
    pen = 10 * (torch.relu(b - 0.8) ** 2).sum() + 10 * torch.relu(0.6 - b.mean()) ** 2
    pen = pen + 0.1 * (b**2).mean() + ((b[1:] - b[:-1]) ** 2).mean()
    torch.testing.assert_close(prob.outer_loss(theta, v), ((du - torch.cos(x[:, 0].detach())) ** 2).mean() + pen)


def test_boundary_vector_control_hypergradient_matches_the_exact_gradient():
    """laplace_bc (u = Σ v_k sin(kπx) on y = 1, 2 modes): after 900 Adam steps the NHGD (K-FAC)
    hypergradient at v = 0 against ∇J by central differences through the closed-form reference
    (exact for this quadratic J). Measured: cos 0.986, |h|/|∇J| 0.78 (the gap is the PINN's own
    state error, 24% relative L2; the exact-Hessian method gives cos 0.991, ratio 0.58)."""
    from pinnctl.discovery import discover

    prob = compile_problem(discover().get("laplace_bc").build(width=16, n=128), seed=0)
    v = prob.v0.detach()
    state = InnerState.create(prob.theta0, PretrainCfg(lr=1e-2))
    train_state(prob, state, v, 900)
    est = make_method("nhgd", {})
    for _ in range(10):
        est.observe(est.collect(prob, inner_step(prob, state, v)))
    h = est.hypergradient(prob, state.theta.detach(), v, state.step).h
    eps = 1e-3
    g = torch.tensor([(prob.certify(v + eps * e)["grid"] - prob.certify(v - eps * e)["grid"]) / (2 * eps)
                      for e in torch.eye(v.numel())], dtype=torch.float64)
    h = h.double()
    assert float(h @ g / (h.norm() * g.norm())) > 0.95 and 0.5 < float(h.norm() / g.norm()) < 1.3


USER = textwrap.dedent('''
    """1-D Poisson -u'' = v (a scalar source), u(0) = u(1) = 0, tracking x(1-x)/2 (J* = 0 at v = 1)."""
    import numpy as np
    import torch

    from pinnctl.geometry import Box
    from pinnctl.nets import MLP
    from pinnctl.problem import Boundary, ControlVector, Grid, Interior, Optimum, PDEProblem, Reference, Tracking, VectorControl

    X = np.linspace(0, 1, 11)


    class Exact(Reference):
        """u = v x(1-x)/2, so J(v) = (v - 1)² mean((x(1-x)/2)²)."""

        measures, control = ("grid", "max"), ControlVector(size=1)

        def certify(self, v):
            err = (v[0] - 1.0) * X * (1 - X) / 2
            return {"grid": float(np.mean(err**2)), "max": float(np.abs(err).max())}

        def optimum(self, measure=None):
            return Optimum("grid", 0.0)


    def make():
        return PDEProblem(
            name="mine", domain=Box([0.0], [1.0]), time=None,
            conditions={"pde": Interior(lambda x, u, f, ops: ops.dx(u, x, 0, order=2) + f[0], n=32),
                        "walls": Boundary(0.0, n_per_side=2)},
            state=MLP([1, 8, 1]), control=VectorControl(1, init=0.0),
            objective=Tracking(lambda x: x[:, 0] * (1 - x[:, 0]) / 2, Grid(11)), reference=Exact())
''')


def test_user_problem_with_its_own_reference_is_listed_solved_and_certified(tmp_path, monkeypatch, capsys):
    import h5py

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PINNCTL_PROBLEMS", raising=False)
    (tmp_path / "problems").mkdir()
    (tmp_path / "problems" / "mine.py").write_text(USER)
    assert main(["list"]) == 0
    assert "1-D Poisson -u'' = v" in capsys.readouterr().out
    out = tmp_path / "run"
    assert main(["solve", "mine", "--preset", "smoke", "--method", "nhgd", "--quiet", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    with h5py.File(out / "run.h5") as f:
        v = f["control/v"][()].astype(np.float64)
        cert = f["history/certified/grid"][()]
    j = (v[0] - 1.0) ** 2 * np.mean((np.linspace(0, 1, 11) * (1 - np.linspace(0, 1, 11)) / 2) ** 2)
    assert summary["J_star"] == 0.0 and summary["certified"]["grid"] == pytest.approx(j, rel=1e-9)
    assert cert[-1] == pytest.approx(j, rel=1e-9) and "max" in summary["certified"]


def test_flux_objective_on_a_boundary_part():
    """Tracking ∂u/∂x on the face x = hi of a square (Part points), against autograd."""
    from pinnctl.problem import Part

    p = PDEProblem(name="flux", domain=Box([0, 0], [1, 1]), time=None,
                   conditions={"pde": Interior(lambda x, u, f, ops: ops.laplacian(u, x), n=8)},
                   state=MLP([2, 6, 1]), control=VectorControl(1),
                   objective=Tracking(lambda x: x[:, 1], Part("x=hi", n_per_side=16), of=lambda x, u, ops: ops.dx(u, x, 0)))
    prob = compile_problem(p, seed=0, dtype=torch.float64)
    from pinnctl.problem import objective_points

    x = torch.as_tensor(objective_points(p)).requires_grad_(True)
    assert x.shape == (16, 2) and bool((x[:, 0] == 1).all())
    du = torch.autograd.grad(p.state.forward(prob.theta0, x)[:, 0].sum(), x)[0][:, 0]
    torch.testing.assert_close(prob.outer_loss(prob.theta0, prob.v0), ((du - x[:, 1].detach()) ** 2).mean())


@pytest.mark.parametrize("name", ["tiny_heat", "system"])
def test_compile_creates_every_tensor_on_the_requested_device(name):
    """On the meta device any tensor made without device= would be a CPU tensor and mix (error)."""
    from conftest import tiny_heat

    problem = tiny_heat() if name == "tiny_heat" else system_problem()
    prob = compile_problem(problem, seed=0, device="meta", dtype=torch.float64)
    batch = prob.sample(0)
    assert prob.theta0.device.type == prob.v0.device.type == "meta" and prob.theta0.dtype == torch.float64
    assert all(x.device.type == "meta" for x in batch.values())
    assert all(t.device.type == "meta" for t in prob.inner_terms(prob.theta0, prob.v0, batch).values())
    assert prob.outer_loss(prob.theta0, prob.v0).device.type == "meta"
