"""The ns_inlet problem: it compiles with the reference's own profile, penalties and boundary data,
rejects a bad outflow in one line, takes a smoke step and is certified in the run; the slow test
measures the forward PINN at θ₀ against the finite-element state."""

import json

import numpy as np
import pytest
import torch

from pinnctl import PinnctlError
from pinnctl.api import reference_report
from pinnctl.cli import main
from pinnctl.discovery import find
from pinnctl.plots import plot_run
from pinnctl.problem import compile_problem
from pinnctl.reference import ns_inlet as R


def test_bad_outflow_is_one_line_error(capsys):
    with pytest.raises(PinnctlError, match="outflow must be one of traction, pressure"):
        find("ns_inlet").build(outflow="foo")
    assert main(["solve", "ns_inlet", "--set", "params.outflow=foo", "--preset", "smoke", "--quiet"]) == 2
    assert "outflow must be one of" in capsys.readouterr().err


@pytest.mark.parametrize("outflow", R.OUTFLOWS)
def test_compiled_problem_agrees_with_reference(outflow):
    bp = compile_problem(find("ns_inlet").build(outflow=outflow))
    assert bp.info["terms"][:3] == ["pde.momentum_x", "pde.momentum_y", "pde.continuity"]
    assert ("outlet.x" in bp.info["terms"]) == (outflow == "traction")
    rng = np.random.default_rng(0)
    v = torch.as_tensor(rng.uniform(-1, 5, R.N_CONTROL), dtype=bp.v0.dtype)
    zero_theta = torch.zeros_like(bp.theta0)  # the state net is ≡ 0 (zero weights, zero biases)
    # inlet: u − θ(y)·4y(1−y), with θ(y) by the reference's own hats
    p = bp.full_batch()["inlet_u"]
    r = bp.residuals(zero_theta, v, bp.full_batch())
    y = p[:, 1].double().numpy()
    assert np.allclose(-r["inlet_u"][0].double().numpy(), R.hats(y) @ v.double().numpy() * R.parabola(y), atol=1e-5)
    pw = bp.full_batch()["wall_v"]
    assert np.allclose(-r["wall_v"][0].double().numpy(), 8 * np.clip((pw[:, 0].double().numpy() - 0.5) * (1 - pw[:, 0].double().numpy()), 0, None), atol=1e-6)
    # outer loss at u ≡ 0: mean target² + the reference's penalties
    expected = np.mean(R.parabola(R.outlet_y()) ** 2) + R.penalty(v.double().numpy())[0]
    assert float(bp.outer_loss(zero_theta, v)) == pytest.approx(expected, rel=1e-5)


@pytest.fixture
def short_optimum(monkeypatch):
    """A 3-step J* search (the real one takes ~20 s CPU; test_optimum_is_reproduced checks it)."""
    monkeypatch.setattr(R, "SEARCH_STEPS", 2)
    monkeypatch.setattr(R, "POLISH_STEPS", 1)
    R._optimum.cache_clear()
    yield
    R._optimum.cache_clear()


def test_smoke_step_is_certified(tmp_path, short_optimum):
    out = tmp_path / "run"
    assert main(["solve", "ns_inlet", "--preset", "smoke", "--method", "broyden", "--quiet", "--out", str(out),
                 "--set", "method.options.variant=fast", "--set", "method.options.threshold=3",
                 "--set", "outer.steps=1", "--set", "inner.steps=1"]) == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["measure"] == "outlet" and s["status"] == "done"
    assert s["certified"]["outlet"] > s["J_star"] == pytest.approx(R.optimum().J)
    assert s["certified"]["outlet"] == pytest.approx(R.certify(np.ones(R.N_CONTROL))["outlet"], rel=0.2)  # near θ₀ after one step
    assert (out / "profiles.png") in plot_run(out)  # learned θ against θ*, outlet u against the target


@pytest.mark.slow
def test_optimum_is_reproduced():
    """J* from THETA_START with the default search (measured 0.016075; a 236-step longer search gives 0.016070)."""
    opt = R.optimum()
    assert opt.J == pytest.approx(0.016075, rel=1e-3)
    assert opt.J < R.certify(np.ones(R.N_CONTROL))["outlet"] / 5
    text = reference_report("ns_inlet")  # what `pinnctl reference ns_inlet` prints
    assert f"J* = {opt.J:.6e}" in text and "J(θ₀ = 1) = 8.426766e-02" in text and "θ* at y" in text


@pytest.mark.slow
def test_forward_pinn_matches_fem_state(tmp_path):
    """The state PINN trained at θ₀ = 1 (600 Adam steps, ~110 s CPU) against the FEM state on a 31 × 21
    grid: relative L2 error of the velocity measured 0.302 (docs/problems.md; the PINN is far from
    converged at this budget, which is what the bilevel runs start from)."""
    from pinnctl.bilevel import InnerState, train_state
    from pinnctl.config import PretrainCfg

    prob = find("ns_inlet").build()
    bp = compile_problem(prob, seed=0)
    state = InnerState.create(bp.theta0, PretrainCfg(steps=600, lr=1e-3))
    train_state(bp, state, bp.v0, 600)
    theta = state.theta.detach()
    g = np.stack(np.meshgrid(np.linspace(0, R.LX, 31), np.linspace(0, R.LY, 21), indexing="ij"), -1).reshape(-1, 2)
    fem = R.state(np.ones(R.N_CONTROL), g)
    with torch.no_grad():
        pinn = prob.state.forward(theta, torch.as_tensor(g, dtype=bp.theta0.dtype)).double().numpy()
    err = np.linalg.norm(pinn[:, :2] - fem[:, :2]) / np.linalg.norm(fem[:, :2])
    assert err < 0.35, err
