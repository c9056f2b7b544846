"""Outer optimisers (pinnctl.outer): known optima, the dense Gauss–Newton step, guarded trials, resume."""

import pytest
import torch

from pinnctl import PinnctlError
from pinnctl import checkpoint as ckpt
from pinnctl.bilevel import InnerState, run
from pinnctl.config import InnerCfg, OuterCfg, PretrainCfg
from pinnctl.hypergrad import make_method
from pinnctl.hypergrad.exact import exact_ihvp
from pinnctl.hypergrad.linalg import WoodburyInverse
from pinnctl.outer import OuterContext, make_outer, woodbury_ihvp
from pinnctl.problem import compile_problem
from pinnctl.toys import quadratic

from conftest import tiny_heat

# Inner loop that keeps θ converged on the quadratic toy (A's eigenvalues lie in [1, ~4]; θ is warm-started).
QUAD_INNER = InnerCfg(steps=20, lr=0.4, optimizer="sgd")


def _quadratic_run(optimizer: str, steps: int, lr: float = 0.0, options: dict | None = None):
    prob, truth = quadratic(p=6, q=3, alpha=0.1)
    errors = []
    res = run(prob, make_method("exact"), pretrain=PretrainCfg(steps=50, lr=0.1), inner=QUAD_INNER,
              outer=OuterCfg(steps=steps, lr=lr, optimizer=optimizer, clip=0.0, options=options or {}), certify_every=0,
              callback=lambda r: errors.append(r))
    return float((res.v - truth["v_star"]).norm() / truth["v_star"].norm()), res


@pytest.mark.parametrize("optimizer,steps,lr,tol", [
    # relative error ‖v − v*‖/‖v*‖ measured: sgd 4.0e-2 after 15 steps; adam (lr 0.2 → 0.001 cosine) 2.2e-2
    # after 40; lbfgs 1.5e-6 after 10; gn 6.3e-11 after 5 (one step is exact on a quadratic Φ; the first
    # is capped by the trust radius)
    ("sgd", 15, 0.5, 6e-2),
    ("adam", 40, 0.2, 4e-2),
    ("lbfgs", 10, 0.0, 1e-5),
    ("gn", 5, 0.0, 1e-9),
])
def test_outer_optimizers_reach_the_quadratic_optimum(optimizer, steps, lr, tol):
    options = {"schedule": "cosine", "lr_min": 1e-3} if optimizer == "adam" else {}
    err, _ = _quadratic_run(optimizer, steps, lr, options)
    assert err < tol


def test_gn_beats_first_order_per_outer_step():
    err_gn, _ = _quadratic_run("gn", 3)
    err_sgd, _ = _quadratic_run("sgd", 3, 0.5)
    assert err_gn < 1e-4 < err_sgd


def _dense_outer_jacobian(prob, theta, v, lam):
    """J = dr/dv along θ*(v) with H = G + λI, every piece dense by autograd."""
    batch = prob.full_batch()

    def scaled(t):
        return torch.cat([r * (2.0 * w / r.numel()) ** 0.5 for r, w in prob.residuals(t, v, batch).values()])

    Jt = torch.autograd.functional.jacobian(scaled, theta)
    H = Jt.T @ Jt + lam * torch.eye(theta.numel(), dtype=torch.float64)

    def grad_theta(vv):
        t = theta.clone().requires_grad_(True)
        return torch.autograd.grad(prob.inner_loss(t, vv, batch), t, create_graph=True)[0]

    Lt = torch.autograd.functional.jacobian(grad_theta, v)  # (p, q) = Lᵀ
    r_theta, r_v = torch.autograd.functional.jacobian(prob.outer_residuals, (theta, v))
    return r_v - r_theta @ torch.linalg.solve(H, Lt)


@pytest.mark.parametrize("kind", ["method", "woodbury"])
def test_gn_step_equals_the_dense_gauss_newton_step(kind):
    prob = compile_problem(tiny_heat(), seed=0)
    theta, v = prob.theta0.double(), prob.v0.double() + 0.3
    lam = 1e-3
    est = make_method("exact", {"matrix": "gn", "damping": lam, "solver": "dense"})
    h = est.hypergradient(prob, theta, v, 0).h
    J = _dense_outer_jacobian(prob, theta, v, lam)
    r = prob.outer_residuals(theta, v).detach()
    assert torch.allclose(h, 2 * J.T @ r, rtol=1e-6, atol=1e-10)  # the hypergradient is the GN gradient
    G = 2 * J.T @ J
    mu_rel = 1e-2
    mu = mu_rel * float(h @ G @ h / (h @ h))
    dense = -torch.linalg.solve(G + mu * torch.eye(v.numel(), dtype=torch.float64), h)

    inner = InnerState.create(theta, PretrainCfg())
    if kind == "woodbury":  # the full-batch Gauss–Newton factored once (outer.ihvp=woodbury)
        ihvp = woodbury_ihvp(prob, theta, v, lam)
    else:
        ihvp = lambda b: exact_ihvp(prob, theta, v, b, matrix="gn", damping=lam, solver="dense")[0]  # noqa: E731
    ctx = OuterContext(prob, inner, v, h, float(prob.outer_loss(theta, v)), ihvp)
    gn = make_outer("gn", v.clone(), 0.0, 0.0, 1, {"cg_steps": v.numel(), "damping": mu_rel})
    d, dGd, _ = gn.solve(ctx)
    rel = float((d - dense).norm() / dense.norm())
    assert rel < 1e-6, rel
    assert dGd == pytest.approx(float(dense @ G @ dense), rel=1e-6)


def test_woodbury_inverse_is_the_dense_damped_inverse():
    g = torch.Generator().manual_seed(0)
    J = torch.randn(7, 20, generator=g, dtype=torch.float64)
    B = torch.randn(20, 3, generator=g, dtype=torch.float64)
    dense = torch.linalg.solve(J.T @ J + 1e-2 * torch.eye(20, dtype=torch.float64), B)
    W = WoodburyInverse(J, 1e-2)
    torch.testing.assert_close(W.solve(B), dense, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(W.solve(B[:, 0]), dense[:, 0], rtol=1e-9, atol=1e-12)


def test_unknown_outer_ihvp_is_a_one_line_error():
    prob, _ = quadratic()
    with pytest.raises(PinnctlError, match="unknown outer.ihvp 'woodbery'; known: method, woodbury"):
        run(prob, make_method("exact"), pretrain=PretrainCfg(steps=1), inner=InnerCfg(steps=1),
            outer=OuterCfg(steps=1, optimizer="gn", ihvp="woodbery"), certify_every=0)


def test_rejected_trial_restores_v_theta_and_halves_the_step():
    prob, _ = quadratic(p=6, q=3)
    v = prob.v0.clone().requires_grad_(True)
    inner = InnerState.create(prob.theta0, QUAD_INNER, optimizer="sgd")
    opt = make_outer("lbfgs", v, 0.0, 0.0, 10, {"radius": 0.5})
    v0, th0 = v.detach().clone(), inner.theta.detach().clone()
    h = torch.ones(3, dtype=torch.float64)
    ctx = OuterContext(prob, inner, v0, h, 1.0, lambda b: b)
    opt.step(v, ctx)
    d = v.detach() - v0
    assert float(d.norm()) == pytest.approx(0.5)
    with torch.no_grad():
        inner.theta.add_(1.0)  # the inner loop moved θ
    assert opt.check(2.0, v, inner) is False  # f went up: undo, try half the step from the old point
    assert torch.equal(inner.theta.detach(), th0)
    assert torch.allclose(v.detach() - v0, 0.5 * d)
    assert opt.check(0.5, v, inner) is True and opt.trial is None


def test_unknown_outer_optimizer_and_option_are_one_line_errors():
    v = torch.zeros(3, requires_grad=True)
    with pytest.raises(PinnctlError, match="known: adam, gn, lbfgs, sgd"):
        make_outer("lbgfs", v, 0.01, 0.1, 10)
    with pytest.raises(PinnctlError, match="no option"):
        make_outer("gn", v, 0.01, 0.1, 10, {"cg_stepz": 3})
    with pytest.raises(PinnctlError, match="expects int"):
        make_outer("gn", v, 0.01, 0.1, 10, {"cg_steps": "many"})
    prob, _ = quadratic()
    with pytest.raises(PinnctlError, match="least-squares outer objective"):
        prob.outer_residuals = None
        run(prob, make_method("exact"), pretrain=PretrainCfg(steps=1), inner=InnerCfg(steps=1),
            outer=OuterCfg(steps=1, optimizer="gn"), certify_every=0)


@pytest.mark.parametrize("optimizer,predict,ihvp", [("lbfgs", True, "method"), ("gn", False, "method"), ("gn", True, "woodbury")])
def test_resume_is_bit_identical_with_the_outer_state_in_the_checkpoint(optimizer, predict, ihvp, tmp_path):
    prob = compile_problem(tiny_heat(), seed=0)
    est_opts = {"curvature": "kfac", "every": 2, "refine": 2, "warm_start": True}
    options = {"cg_steps": 2} if optimizer == "gn" else {}
    cfg = dict(pretrain=PretrainCfg(steps=20), inner=InnerCfg(steps=3), certify_every=0)
    outer = dict(optimizer=optimizer, predict=predict, ihvp_steps=1, ihvp=ihvp, options=options)
    full = run(prob, make_method("nhgd", est_opts), **cfg, outer=OuterCfg(steps=4, **outer))
    saved = []

    def keep(snap):
        if snap["outer_step"] == 2:
            ckpt.save(tmp_path / "c.pt", snap)
            saved.append(snap)

    run(prob, make_method("nhgd", est_opts), **cfg, outer=OuterCfg(steps=2, **outer), checkpoint=keep)
    resume = ckpt.load(tmp_path / "c.pt")
    assert saved and resume["outer_optimizer"]["trial"] is not None  # the pending trial travels in the checkpoint
    rest = run(prob, make_method("nhgd", est_opts), **cfg, outer=OuterCfg(steps=4, **outer), resume=resume)
    assert torch.equal(rest.v, full.v) and torch.equal(rest.theta, full.theta)
    assert [r.outer_loss for r in rest.history] == [r.outer_loss for r in full.history[2:]]


def test_settled_inner_loop_stops_early_and_warm_steps_shorten_it():
    prob, truth = quadratic(p=6, q=3, alpha=0.1)
    counts = []
    run(prob, make_method("exact"), pretrain=PretrainCfg(steps=50, lr=0.1),
        inner=InnerCfg(steps=40, lr=0.3, optimizer="sgd", settle=1e-6), outer=OuterCfg(steps=4, optimizer="gn", clip=0.0),
        certify_every=0, callback=lambda r: counts.append(r.info["inner_steps"]))
    assert all(10 <= c < 40 for c in counts[1:]), counts  # converged θ: the loss settles long before 40 steps
    counts.clear()
    run(prob, make_method("exact"), pretrain=PretrainCfg(steps=5), inner=InnerCfg(steps=12, warm_steps=3, optimizer="sgd"),
        outer=OuterCfg(steps=3), certify_every=0, callback=lambda r: counts.append(r.info["inner_steps"]))
    assert counts == [12.0, 3.0, 3.0]


def test_quick_preset_method_options_yield_to_the_user_and_to_other_methods():
    from pinnctl.config import parse_sets, resolve

    assert resolve("quick").method.options == {"every": 5, "warm_start": True}
    assert resolve("quick", sets=parse_sets(["method.options.every=1"])).method.options == {"every": 1, "warm_start": True}
    assert resolve("quick", sets=parse_sets(["method.name=broyden"])).method.options == {}
    assert resolve("paper").method.options == {}
    assert resolve("quick", problem_defaults={"outer.steps": 5}).method.options == {"every": 5, "warm_start": True}
    assert resolve("quick", problem_defaults={"method.options.beta": 0.8}).method.options == {"beta": 0.8}


def test_gn_with_the_woodbury_ihvp_reaches_the_boundary_control_optimum():
    """laplace_bc (u = Σ v_k sin(kπx) on y = 1, closed-form optimum v* = (1, −0.5), J* = 0): the
    Gauss–Newton outer step with the exact linear IHVP, from v = 0 on a pretrained PINN.
    Measured: ‖v − v*‖/‖v*‖ = 0.20 after 3 outer steps (from 1.0), certified J = 3.4e-3 from J(v0) = 0.102;
    the rest is the PINN's own state error (24 % relative L2 at this size, test_pde_control),
    which the outer step cannot see. BPN's Adam (lr 0.01, clip 0.1) moves v by ≤ 0.03 in 3 steps."""
    from pinnctl.discovery import discover

    prob = compile_problem(discover().get("laplace_bc").build(width=16, n=128), seed=0)
    res = run(prob, make_method("nhgd", {}), pretrain=PretrainCfg(steps=500, lr=1e-2), inner=InnerCfg(steps=30, lr=1e-2),
              outer=OuterCfg(steps=3, optimizer="gn", ihvp="woodbury", options={"radius": 2.0, "cg_steps": 2}),
              certify_every=0)
    v_star = torch.tensor([1.0, -0.5], dtype=res.v.dtype)
    err = float((res.v - v_star).norm() / v_star.norm())
    J0, J = prob.certify(prob.v0)["grid"], prob.certify(res.v)["grid"]
    assert err < 0.3 and J < 0.05 * J0


def test_gn_preset_sets_the_woodbury_gauss_newton_step_and_bad_ihvp_is_a_config_error():
    from pinnctl.config import parse_sets, resolve, validate

    cfg = resolve("gn")
    assert (cfg.outer.optimizer, cfg.outer.ihvp, cfg.inner.steps, cfg.inner.settle, cfg.inner.polish) == ("gn", "woodbury", 120, 0.02, 2)
    assert cfg.outer.options == {"radius": 0.3, "max_radius": 0.6, "cg_steps": 5}
    assert cfg.method.options == {"every": 5, "warm_start": True}
    with pytest.raises(PinnctlError, match="outer.ihvp' must be one of method, woodbury"):
        validate(resolve("gn", sets=parse_sets(["outer.ihvp=dense"])))
