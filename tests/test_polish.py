"""Gauss–Newton polish of the inner state (``inner.polish``): one step through the outer step's
Woodbury factorisation is the dense damped Gauss–Newton step (autograd Jacobian, dense solve) times
the line search's η; the factorisation travels in the checkpoint (resume bit-identical); misuse is a
one-line error."""

import pytest
import torch
from conftest import dense_gn_step, tiny_heat

from pinnctl import PinnctlError
from pinnctl import checkpoint as ckpt
from pinnctl.bilevel import InnerState, run
from pinnctl.config import InnerCfg, OuterCfg, PretrainCfg, parse_sets, resolve, validate
from pinnctl.hypergrad import make_method
from pinnctl.hypergrad.linalg import WoodburyInverse
from pinnctl.natgrad import gauss_newton_polish
from pinnctl.outer import Factorisation
from pinnctl.problem import compile_problem


def test_least_squares_step_is_the_dense_damped_gauss_newton_step():
    g = torch.Generator().manual_seed(1)
    J = torch.randn(7, 20, generator=g, dtype=torch.float64)
    r = torch.randn(7, generator=g, dtype=torch.float64)
    dense = torch.linalg.solve(J.T @ J + 1e-2 * torch.eye(20, dtype=torch.float64), J.T @ r)
    torch.testing.assert_close(WoodburyInverse(J, 1e-2).least_squares_step(r), dense, rtol=1e-9, atol=1e-12)


def test_polish_step_is_the_dense_gauss_newton_step_after_v_moved(tiny_problem):
    prob = tiny_problem
    theta = prob.theta0.double().clone().requires_grad_(True)
    v0, v1 = prob.v0.double(), prob.v0.double() + 0.5  # the factorisation at v0; the polish at the new v
    lam = 1e-3
    factors = Factorisation(lam)
    factors.reset(theta, v0)
    before = theta.detach().clone()
    info = gauss_newton_polish(prob, theta, v1, factors.inverse(prob), steps=1)
    eta = info["polish_eta"]
    assert eta > 0 and info["polish_loss_after"] < info["polish_loss_before"]
    dense = dense_gn_step(prob, before, v1, prob.full_batch(), lam)  # the control enters additively: J is v-free
    step = before - theta.detach()
    assert float((step - eta * dense).norm() / (eta * dense).norm()) < 1e-6


def test_resume_with_polish_is_bit_identical(tmp_path):
    prob = compile_problem(tiny_heat(), seed=0)
    est_opts = {"curvature": "kfac", "every": 2, "refine": 2, "warm_start": True}
    cfg = dict(pretrain=PretrainCfg(steps=20), inner=InnerCfg(steps=3, polish=1), certify_every=0)
    outer = dict(optimizer="gn", ihvp="woodbury", options={"cg_steps": 2})
    full = run(prob, make_method("nhgd", est_opts), **cfg, outer=OuterCfg(steps=4, **outer))
    assert all("polish_eta" in r.info for r in full.history[1:]) and "polish_eta" not in full.history[0].info

    def keep(snap):
        if snap["outer_step"] == 2:
            ckpt.save(tmp_path / "c.pt", snap)

    run(prob, make_method("nhgd", est_opts), **cfg, outer=OuterCfg(steps=2, **outer), checkpoint=keep)
    resume = ckpt.load(tmp_path / "c.pt")
    assert resume["factors"] is not None  # the factorisation's anchor travels; the factorisation is rebuilt
    rest = run(prob, make_method("nhgd", est_opts), **cfg, outer=OuterCfg(steps=4, **outer), resume=resume)
    assert torch.equal(rest.v, full.v) and torch.equal(rest.theta, full.theta)


def test_polish_without_the_woodbury_factorisation_is_a_one_line_error():
    with pytest.raises(PinnctlError, match="inner.polish' must be 0 unless outer.ihvp=woodbury"):
        validate(resolve("paper", sets=parse_sets(["inner.polish=2"])))
    with pytest.raises(PinnctlError, match="inner.polish' must be ≥ 0"):
        validate(resolve("gn", sets=parse_sets(["inner.polish=-1"])))
    prob = compile_problem(tiny_heat(), seed=0)
    with pytest.raises(PinnctlError, match="set outer.ihvp=woodbury"):
        run(prob, make_method("nhgd", {}), pretrain=PretrainCfg(steps=1), inner=InnerCfg(steps=1, polish=1),
            outer=OuterCfg(steps=1, optimizer="gn"), certify_every=0)


def test_exact_woodbury_hypergradient_is_the_dense_one_and_shares_the_gn_factorisation(tiny_problem, monkeypatch):
    prob = tiny_problem
    theta, v = prob.theta0.double(), prob.v0.double() + 0.3
    dense = make_method("exact", {"matrix": "gn", "solver": "dense", "damping": 1e-3}).hypergradient(prob, theta, v, 0).h
    wood = make_method("exact", {"matrix": "gn", "solver": "woodbury", "damping": 1e-3}).hypergradient(prob, theta, v, 0).h
    assert float((wood - dense).norm() / dense.norm()) < 1e-8
    import pinnctl.hypergrad.linalg as linalg

    built = []
    original = linalg.WoodburyInverse.__init__

    def counting(self, rows, damping):
        built.append(1)
        original(self, rows, damping)

    monkeypatch.setattr(linalg.WoodburyInverse, "__init__", counting)
    res = run(prob, make_method("exact", {"matrix": "gn", "solver": "woodbury", "damping": 1e-3}), pretrain=PretrainCfg(steps=5),
              inner=InnerCfg(steps=2, polish=1), outer=OuterCfg(steps=3, optimizer="gn", ihvp="woodbury", options={"cg_steps": 2}),
              certify_every=0)
    accepted = sum(1 for r in res.history if not r.info.get("outer_rejected"))
    assert len(built) == accepted  # one factorisation per outer step for h, the gn step and the next polish


def test_gn_exact_preset_is_the_gn_preset_with_the_shared_woodbury_hypergradient():
    cfg, gn = resolve("gn-exact"), resolve("gn")
    assert cfg.method.name == "exact" and cfg.method.options == {"matrix": "gn", "solver": "woodbury", "damping": 1e-3}
    assert cfg.method.options["damping"] == cfg.outer.ihvp_damping  # the condition for sharing the factorisation
    assert (cfg.inner, cfg.outer) == (gn.inner, gn.outer)
    validate(cfg)
