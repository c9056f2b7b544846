"""Natural-gradient inner optimisers (issue 10, part): the ENGD step is the dense Gauss–Newton
step, computed independently here; K-FAC steps reduce the loss; NHGD reuses their statistics."""

import torch
from conftest import dense_gn_step

from pinnctl.bilevel import InnerState, inner_step, make_optimizer
from pinnctl.config import InnerCfg
from pinnctl.hypergrad import make_method


def test_engd_direction_is_the_dense_gauss_newton_step(tiny_problem):
    prob = tiny_problem
    theta = prob.theta0.double()
    v, batch = prob.v0.double(), prob.sample(0)
    opt = make_optimizer("engd", theta.clone().requires_grad_(True), 1.0, 1e-3)
    t = theta.clone().requires_grad_(True)
    g = torch.autograd.grad(prob.inner_loss(t, v, batch), t)[0]
    d, _ = opt._direction(prob, theta, v, batch, g)
    ref = dense_gn_step(prob, theta, v, batch, 1e-3)
    assert torch.allclose(d.double(), ref, rtol=1e-6, atol=1e-9 * float(ref.abs().max()))


def test_natural_gradient_steps_reduce_the_loss(tiny_problem):
    prob = tiny_problem
    for name in ("kfac", "engd"):
        state = InnerState.create(prob.theta0, InnerCfg(lr=1.0))
        state.optimizer = make_optimizer(name, state.theta, 1.0, 1e-3)
        first = inner_step(prob, state, prob.v0)
        for _ in range(10):
            last = inner_step(prob, state, prob.v0)
        assert last.loss < 0.5 * first.loss, name


def _kfac_state(prob):
    state = InnerState.create(prob.theta0, InnerCfg(lr=1.0))
    state.optimizer = make_optimizer("kfac", state.theta, 1.0, 1e-3)
    return state


def test_nhgd_uses_the_inner_steps_kfac_statistics(tiny_problem, monkeypatch):
    prob = tiny_problem
    state = _kfac_state(prob)
    info = inner_step(prob, state, prob.v0)
    assert "kfac_stats" in info.extras
    calls = {"n": 0}
    real = prob.kfac_factors

    def counting(*a, **k):
        calls["n"] += 1
        return real(*a, **k)

    object.__setattr__(prob, "kfac_factors", counting)
    stats = make_method("nhgd", {"curvature": "kfac"}).collect(prob, info)
    assert calls["n"] == 0 and stats is info.extras["kfac_stats"]  # nothing computed twice
