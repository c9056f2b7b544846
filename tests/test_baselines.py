"""Neumann, CG and Broyden hypergradients against the closed form and the exact solver."""

import dataclasses

import pytest
import torch

from pinnctl import PinnctlError
from pinnctl.hypergrad import make_method
from pinnctl.hypergrad.broyden import broyden_solve
from pinnctl.hypergrad.autodiff import curvature_operator
from pinnctl.toys import logistic_cleaning, quadratic


def _quadratic_at_optimum(**kw):
    prob, truth = quadratic(p=12, q=4, **kw)
    v = prob.v0
    return prob, truth, truth["theta_star"](v), v


@pytest.mark.parametrize("method, options, rtol", [
    ("neumann", {"terms": 400}, 1e-6),
    ("cg", {"maxiter": 12, "tol": 1e-12}, 1e-8),
    ("broyden", {"variant": "fast", "eps": 1e-12}, 1e-6),
    ("broyden", {"variant": "bpn", "eps": 1e-12}, 1e-6),
])
def test_baselines_match_closed_form_on_quadratic(method, options, rtol):
    prob, truth, theta, v = _quadratic_at_optimum()
    res = make_method(method, options).hypergradient(prob, theta, v, step=0)
    h, info = res.h, res.diagnostics
    torch.testing.assert_close(h, truth["grad_phi"](v), rtol=rtol, atol=1e-9)
    assert info["hvp_count"] >= 1


def test_neumann_truncation_error_is_the_geometric_tail():
    """With φ = 1/λ_max, K terms give w = (I − (I − φA)^{K+1}) A⁻¹ b exactly: compare with the dense formula."""
    prob, truth, theta, v = _quadratic_at_optimum()
    A, B = truth["A"], truth["B"]
    lam = float(torch.linalg.eigvalsh(A).max())
    w_star = torch.linalg.solve(A, theta - truth["c"])
    for K in (0, 3, 10):
        h = make_method("neumann", {"terms": K, "phi": 1 / lam}).hypergradient(prob, theta, v, step=0).h
        tail = torch.linalg.matrix_power(torch.eye(12, dtype=A.dtype) - A / lam, K + 1)
        torch.testing.assert_close(h, B.T @ (w_star - tail @ w_star) + 0.1 * v, rtol=1e-9, atol=1e-12)


def test_cg_maxiter_zero_drops_the_implicit_term_and_breakdown_is_reported():
    prob, truth, theta, v = _quadratic_at_optimum()
    res = make_method("cg", {"maxiter": 0}).hypergradient(prob, theta, v, step=0)
    h, info = res.h, res.diagnostics
    torch.testing.assert_close(h, 0.1 * v)  # ∇_v f only
    assert info["cg_iterations"] == 0 and info["ihvp_norm"] == 0.0
    # an indefinite inner Hessian: flip the quadratic's curvature along one direction
    prob2, _ = quadratic(p=12, q=4, indefinite=True)
    res2 = make_method("cg", {"maxiter": 50}).hypergradient(prob2, theta, prob2.v0, step=0)
    h2, info2 = res2.h, res2.diagnostics
    assert torch.isfinite(h2).all() and info2["cg_breakdown"] == 1.0


def test_broyden_variants_agree_and_bpn_pays_per_tensor_backward_passes():
    # the autograd Hessian (the backward passes counted here): without the problem's closed-form products
    prob = dataclasses.replace(logistic_cleaning(n_train=60, n_val=30, dim=4, classes=3), hessian_operator=None)
    v = torch.ones(60, dtype=torch.float64)
    theta = torch.randn(prob.theta0.numel(), dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 0.1
    exact = make_method("exact").hypergradient(prob, theta, v, step=0).h
    out = {}
    for variant in ("bpn", "fast"):
        out[variant] = make_method("broyden", {"variant": variant, "threshold": 60, "eps": 1e-10}).hypergradient(prob, theta, v, step=0)
    hb, ib = out["bpn"].h, out["bpn"].diagnostics
    hf, i_f = out["fast"].h, out["fast"].diagnostics
    for h in (hb, hf):
        assert float((h - exact).norm() / exact.norm()) < 1e-4
    n_tensors = 2 * len(prob.layer_shapes)
    assert ib["backward_count"] == n_tensors * ib["hvp_count"] and i_f["backward_count"] == i_f["hvp_count"]
    assert i_f["hvp_count"] <= i_f["broyden_steps"] + 1
    assert ib["residual"] < 1e-6 and ib["broyden_evaluations"] >= ib["broyden_steps"] + 1


def test_broyden_solver_on_a_known_system():
    A = torch.tensor([[4.0, 1.0, 0.0], [1.0, 3.0, 0.5], [0.0, 0.5, 2.0]], dtype=torch.float64)
    b = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    for affine in (True, False):
        r = broyden_solve(lambda x: A @ x, b, threshold=30, eps=1e-13, affine=affine)
        torch.testing.assert_close(r.x, torch.linalg.solve(A, b), rtol=1e-10, atol=1e-12)
    zero = broyden_solve(lambda x: A @ x, torch.zeros(3, dtype=torch.float64))
    assert zero.steps == 0 and torch.count_nonzero(zero.x) == 0


def test_hessian_operator_per_tensor_equals_batched():
    prob = dataclasses.replace(logistic_cleaning(n_train=30, n_val=10, dim=3, classes=3), hessian_operator=None)
    theta = prob.theta0.clone() + 0.1
    v = torch.ones(30, dtype=torch.float64)
    x = torch.randn(theta.numel(), dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    batched = curvature_operator(prob, theta, v, prob.full_batch())
    split = curvature_operator(prob, theta, v, prob.full_batch(), tensor_sizes=[9, 3])
    torch.testing.assert_close(batched.matvec(x), split.matvec(x))
    assert (batched.counter["backward"], split.counter["backward"]) == (1, 2)


def test_baseline_options_are_validated():
    with pytest.raises(PinnctlError, match="unknown broyden variant 'slow'; known: bpn, fast"):
        make_method("broyden", {"variant": "slow"})
    with pytest.raises(PinnctlError, match="cg needs maxiter"):
        make_method("cg", {"maxiter": -1})
    with pytest.raises(PinnctlError, match="has no option"):
        make_method("neumann", {"alpha": 0.1})
