"""Classification extras (issue 8): IDX loader, hypergradients of every method against
`exact` on a small data-cleaning problem, and a short cleaning run that beats the
uncleaned baseline on real MNIST."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
import torch

from pinnctl import PinnctlError, data
from pinnctl.cli import main
from pinnctl.hypergrad import make_method
from pinnctl.toys import converged_theta, logistic_cleaning


def _write_idx(path, arr: np.ndarray, compress: bool) -> None:
    magic = {1: 0x0801, 3: 0x0803}[arr.ndim]
    raw = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in arr.shape) + arr.astype(np.uint8).tobytes()
    if compress:
        with gzip.open(path, "wb") as fh:
            fh.write(raw)
    else:
        path.write_bytes(raw)


@pytest.fixture
def tiny_dataset(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    root = tmp_path / "data" / "mnist"
    root.mkdir(parents=True)
    for split, n, gz in (("train", 12, True), ("t10k", 5, False)):
        images = rng.integers(0, 256, (n, 28, 28))
        labels = rng.integers(0, 10, n)
        _write_idx(root / (f"{split}-images-idx3-ubyte" + (".gz" if gz else "")), images, gz)
        _write_idx(root / (f"{split}-labels-idx1-ubyte" + (".gz" if gz else "")), labels, gz)
    data.load.cache_clear()
    yield tmp_path / "data", root
    data.load.cache_clear()


def test_idx_loader_reads_gz_and_raw(tiny_dataset):
    base, root = tiny_dataset
    x, y = data.load("mnist", "train", str(base))
    raw = gzip.open(root / "train-images-idx3-ubyte.gz").read()
    assert x.shape == (12, 784) and x.dtype == np.float32 and y.shape == (12,)
    np.testing.assert_array_equal(x[3], np.frombuffer(raw, np.uint8, offset=16)[3 * 784:4 * 784] / np.float32(255))
    xt, yt = data.load("mnist", "test", str(base))
    assert xt.shape == (5, 784) and 0.0 <= xt.min() and xt.max() <= 1.0


def test_env_var_and_missing_and_corrupt_files(tiny_dataset, monkeypatch):
    base, root = tiny_dataset
    monkeypatch.setenv("PINNCTL_DATA", str(base))
    assert data.load("mnist", "train")[0].shape == (12, 784)
    with pytest.raises(PinnctlError, match=r"missing data file: expected .*/nowhere/fashion-mnist/train-images-idx3-ubyte.gz"):
        data.load("fashion-mnist", "train", str(base / "nowhere"))
    bad = root / "t10k-labels-idx1-ubyte"
    bad.write_bytes(bad.read_bytes()[:-1])  # truncated
    with pytest.raises(PinnctlError, match="is corrupt: header says"):
        data.read_idx(bad, 1)
    bad.write_bytes(b"\x00\x00\x08\x03" + bad.read_bytes()[4:])
    with pytest.raises(PinnctlError, match="magic"):
        data.read_idx(bad, 1)
    with pytest.raises(PinnctlError, match="unknown dataset"):
        data.load("cifar", "train")


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(a @ b / (a.norm() * b.norm()))


@pytest.fixture(scope="module")
def cleaning_case():
    """Minibatches of 64 out of 200 samples: the stochastic methods see real noise."""
    prob = logistic_cleaning(n_train=200, n_val=100, batch_size=64, lam=1e-2)
    v = torch.linspace(0.1, 0.9, 200, dtype=torch.float64)
    theta = converged_theta(prob, v)
    exact = make_method("exact").hypergradient(prob, theta, v, 0).h
    return prob, theta, v, exact


# Documented tolerances: deterministic solvers on the full batch match to cos ≥ 0.99; stochastic
# ones use 64-sample Hessians, so cos ≥ 0.9 (issue 8) after their own warm-up where they have one.
# One minibatch's cross term touches only that batch's weights (cos ≈ √(64/200) against the full
# hypergradient by construction), so the stochastic ones average the cross term over 20 batches.
DETERMINISTIC = [("neumann", {"terms": 200}), ("cg", {"maxiter": 50}), ("nhgd", {"curvature": "gn", "cross": "full"}),
                 ("nbo", {"solver": "cg", "steps": 50})]
STOCHASTIC = [("stocbio", {"terms": 50, "cross_batches": 20}, 1), ("amigo", {"terms": 20, "cross_batches": 20}, 10),
              ("soba", {"cross_batches": 20}, 200), ("ttsa", {"terms": 50, "cross_batches": 20, "schedule": "random"}, 200),
              ("nsbo", {"steps": 20, "cross_batches": 20, "newton": False}, 10)]


@pytest.mark.parametrize("name, options", DETERMINISTIC)
def test_deterministic_methods_match_exact(cleaning_case, name, options):
    prob, theta, v, exact = cleaning_case
    est = make_method(name, options)
    est.observe(est.collect(prob, _step_info(prob, theta, v)))
    h = est.hypergradient(prob, theta, v, 1).h
    assert _cos(h, exact) >= 0.99 and float((h - exact).norm() / exact.norm()) < 0.1


def _step_info(prob, theta, v):
    from pinnctl.hypergrad import StepInfo

    batch = prob.full_batch()
    t = theta.clone().requires_grad_(True)
    g = torch.autograd.grad(prob.inner_loss(t, v, batch), t)[0]
    return StepInfo(step=0, theta=theta, v=v, batch=batch, loss=0.0, grad=g)


@pytest.mark.parametrize("name, options, calls", STOCHASTIC)
def test_stochastic_methods_match_exact(cleaning_case, name, options, calls):
    """Warm-started methods (AmIGO, SOBA) are called repeatedly at the same point, as an
    outer loop at a slowly moving v would; TTSA's random truncation is averaged over calls."""
    prob, theta, v, exact = cleaning_case
    est = make_method(name, options)
    hs = [est.hypergradient(prob, theta, v, k).h for k in range(calls)]
    h = torch.stack(hs).mean(0) if name == "ttsa" else hs[-1]
    assert _cos(h, exact) >= 0.9, f"{name}: cos {_cos(h, exact):.3f}"


def _has(dataset: str) -> bool:
    try:
        data.find_file(dataset, "train-images-idx3-ubyte")
        return True
    except PinnctlError:
        return False


needs_mnist = pytest.mark.skipif(not _has("mnist"), reason="MNIST IDX files not found (set $PINNCTL_DATA to the folder "
                                 "holding mnist/ and fashion-mnist/; the project keeps them in ../shared/data)")
needs_fashion = pytest.mark.skipif(not _has("fashion-mnist"), reason="Fashion-MNIST IDX files not found (set $PINNCTL_DATA)")


def _cleaning(out, *sets: str) -> dict:
    args = ["solve", "data_cleaning", "--quiet", "--out", str(out), "--set", "params.n_train=3000", "--set", "params.n_val=1000",
            "--set", "outer.steps=150", *[a for s in sets for a in ("--set", s)]]
    assert main(args) == 0
    return json.loads((out / "summary.json").read_text())


@needs_mnist
def test_short_cleaning_run_beats_uncleaned_baseline(tmp_path):
    """Same inner budget; the baseline keeps the uniform weights (outer lr 0)."""
    base = _cleaning(tmp_path / "base", "outer.lr=0")
    cleaned = _cleaning(tmp_path / "nhgd")
    acc_base = base["metrics_last50_mean"]["val_accuracy"]
    acc = cleaned["metrics_last50_mean"]["val_accuracy"]
    assert cleaned["config"]["method"]["options"]["curvature"] == "efim"  # the problem's own defaults
    assert acc > acc_base + 0.01, (acc, acc_base)  # measured 0.835 against 0.810
    assert cleaned["metrics_last50_mean"]["test_loss"] < 0.8 * base["metrics_last50_mean"]["test_loss"]  # 0.88 vs 1.28


@needs_mnist
def test_problem_defaults_yield_to_user_settings(tmp_path):
    summary = _cleaning(tmp_path / "run", "inner.steps=3", "outer.steps=2", "method.options.M=2")
    cfg = summary["config"]
    assert cfg["inner"]["steps"] == 3 and cfg["inner"]["optimizer"] == "sgd" and cfg["method"]["options"]["M"] == 2


@needs_fashion
def test_distillation_smoke_writes_images_and_plots(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["solve", "distillation", "--preset", "smoke", "--quiet", "--out", str(out), "--method", "stocbio"]) == 0
    from pinnctl import runs

    arrays = runs.read(out)["arrays"]
    assert arrays["control/images"].shape == (10, 5, 28, 28)
    assert main(["plot", str(out)]) == 0
    assert "distilled_images.png" in capsys.readouterr().out and (out / "accuracy.png").exists()


# ---- issue 19: aligned GN subsample, the paper's TTSA / stocBiO schedules, NHGD β = 0, presets ----

from pinnctl.hypergrad import StepInfo  # noqa: E402
from pinnctl.hypergrad.base import batch_id  # noqa: E402
from pinnctl.hypergrad.curvature import _subsample  # noqa: E402
from pinnctl.hypergrad.stochastic import SIZED_PARTS, stocbio_batch_size, ttsa_terms  # noqa: E402


def _dense(prob, theta, v, batch):
    """Dense Hessian ∂²g/∂θ² and cross matrix ∂²g/∂θ∂v of the inner loss on one batch (autograd)."""
    H = torch.autograd.functional.hessian(lambda t: prob.inner_loss(t, v, batch), theta)
    C = torch.autograd.functional.jacobian(lambda vv: torch.func.grad(lambda t: prob.inner_loss(t, vv, batch))(theta), v)
    return H, C


def test_gn_subsample_keeps_rows_aligned_and_matches_the_hessian():
    """The defect: x, y and idx were subsampled by separate permutations, so the GN rows paired
    images with other samples' weights (and with jacrev took gigabytes on MNIST)."""
    prob = logistic_cleaning(n_train=200, n_val=50, batch_size=64, lam=1e-2)
    batch = prob.sample(3)
    sub = _subsample(batch, 20, seed=1, aligned=prob.aligned_batch)
    full = prob.full_batch()
    assert sub["x"].shape[0] == 20
    torch.testing.assert_close(sub["x"], full["x"][sub["idx"]])
    torch.testing.assert_close(sub["y"], full["y"][sub["idx"]])
    v = torch.linspace(0.0, 1.0, 200, dtype=torch.float64)
    theta = torch.randn(prob.theta0.numel(), dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    J = prob.jacobian_rows(theta, v, sub)
    H, _ = _dense(prob, theta, v, sub)
    torch.testing.assert_close(J.T @ J, H, rtol=1e-10, atol=1e-12)
    with pytest.raises(PinnctlError, match="one leading size"):
        _subsample({"x": batch["x"], "y": batch["y"][:5]}, 4, 0, aligned=True)


def test_ttsa_runs_sqrt_schedule_neumann_series():
    """Outer step e: ⌊Q√(1+e)⌋ Neumann terms, against the series built from the dense Hessian."""
    prob = logistic_cleaning(n_train=60, n_val=30, batch_size=None, lam=5e-2)
    v = torch.linspace(0.2, 0.8, 60, dtype=torch.float64)
    theta = converged_theta(prob, v)
    H, C = _dense(prob, theta, v, prob.full_batch())
    b = torch.func.grad(lambda t: prob.outer_loss(t, v))(theta)
    eta = 0.5 / float(torch.linalg.eigvalsh(H).max())
    est = make_method("ttsa", {"terms": 3, "eta": eta})
    for e in range(4):
        res = est.hypergradient(prob, theta, v, e)
        q = int(3 * (1 + e) ** 0.5)
        assert res.diagnostics["hvp_count"] == q == ttsa_terms(3, e)
        M = torch.eye(H.shape[0], dtype=H.dtype) - eta * H
        w = eta * sum(torch.linalg.matrix_power(M, k) @ b for k in range(q + 1))
        torch.testing.assert_close(res.h, -C.T @ w, rtol=1e-8, atol=1e-12)


def test_stocbio_batch_schedule_against_dense_series():
    """H_k on B·Q·(1 − ημ)^k samples: the rows seen, and the series rebuilt from dense Hessians of those batches."""
    prob = logistic_cleaning(n_train=200, n_val=50, batch_size=64, lam=5e-2)
    v = torch.linspace(0.2, 0.8, 200, dtype=torch.float64)
    theta = converged_theta(prob, v)
    B, Q, eta, mu, step = 5, 6, 0.05, 2.0, 7
    sizes = [stocbio_batch_size(B, Q, eta, mu, k) for k in range(Q)]
    assert sizes == [round(30 * 0.9**k) for k in range(Q)] == [30, 27, 24, 22, 20, 18]
    est = make_method("stocbio", {"terms": Q, "eta": eta, "batch": B, "mu": mu})
    res = est.hypergradient(prob, theta, v, step)
    assert res.diagnostics["hvp_rows"] == sum(sizes)
    b = torch.func.grad(lambda t: prob.outer_loss(t, v))(theta)
    p, acc = b.clone(), b.clone()
    for k in range(Q):  # every size ≤ the inner minibatch (64): the first rows of one sample
        part = prob.sample(batch_id("stocbio.sized", step, (k + 1) * SIZED_PARTS))
        Hk, _ = _dense(prob, theta, v, {key: x[: sizes[k]] for key, x in part.items()})
        p = p - eta * Hk @ p
        acc = acc + p
    cross = prob.sample(batch_id("stochastic", step, 1 << 11))
    _, C = _dense(prob, theta, v, cross)
    torch.testing.assert_close(res.h, -C.T @ (eta * acc), rtol=1e-8, atol=1e-12)


def test_nhgd_beta_zero_keeps_the_last_gradient_over_the_floor():
    """β = 0 (the paper's n = 5 distillation): A = (g gᵀ + floor·I)⁻¹ of the last gradient only."""
    prob = logistic_cleaning(n_train=60, n_val=30, lam=1e-2)
    v = torch.full((60,), 0.5, dtype=torch.float64)
    est = make_method("nhgd", {"curvature": "efim", "beta": 0.0, "efim_floor": 0.3, "M": 1})
    gen = torch.Generator().manual_seed(1)
    gs = [torch.randn(prob.theta0.numel(), dtype=torch.float64, generator=gen) for _ in range(3)]
    for g in gs:
        est.observe({"g": g})
    b = torch.randn(g.numel(), dtype=torch.float64, generator=gen)
    A = torch.linalg.inv(torch.outer(gs[-1], gs[-1]) + 0.3 * torch.eye(g.numel(), dtype=torch.float64))
    torch.testing.assert_close(est.curvature.solve(b), A @ b, rtol=1e-10, atol=1e-12)
    one = make_method("nhgd", {"curvature": "efim", "beta": 1.0, "efim_floor": 0.3, "efim_lambda0": 2.0})
    for g in gs:  # β = 1: no gradient weighs in, A = I/λ₀ (the bench's nhgd-identity row)
        one.observe({"g": g})
    torch.testing.assert_close(one.curvature.solve(b), b / 2.0)
    with pytest.raises(PinnctlError, match="efim_floor > 0"):
        make_method("nhgd", {"curvature": "efim", "beta": 0.0})


def test_paper_rows_and_label_noise():
    from pinnctl.classification import corrupt_labels, standardise
    from pinnctl.discovery import discover

    clean = discover().get("data_cleaning").build()
    cfg = clean.config_defaults("paper", "neumann")  # the first neumann row: Neumann10
    assert cfg["inner.lr"] == 0.005 and cfg["outer.lr"] == 1.0 and cfg["method.options.terms"] == 10
    assert clean.config_defaults("paper", "cg", row="cg40")["outer.lr"] == 0.1
    with pytest.raises(PinnctlError, match="is for method cg"):
        clean.config_defaults("paper", "nhgd", row="cg40")
    assert clean.config_defaults("quick", "neumann").get("inner.lr") == 0.01  # quick keeps the problem's own setup
    y = np.arange(1000) % 10
    noisy, flip = corrupt_labels(y, 0.5, seed=0, exact=True)
    assert flip.sum() == 500 and (noisy[~flip] == y[~flip]).all()
    assert 0.40 < (noisy != y).mean() < 0.50  # a replaced label keeps its class with probability 1/10
    x = np.random.default_rng(0).random((50, 784)).astype(np.float32)
    xs, = standardise(x, reference=x)
    assert abs(xs.mean()) < 1e-5 and abs(xs.std() - 1) < 1e-3


def test_efim_row_cap_keeps_the_newest_rows():
    """efim_max_rows = r: A = (max(β^t λ₀, floor)·I + Σ over the newest r of (1−β) β^{t−1−i} g_i g_iᵀ)⁻¹,
    checked against the dense inverse of that sum; without a cap every row counts."""
    p, beta, floor = 12, 0.9, 0.05
    gen = torch.Generator().manual_seed(3)
    gs = [torch.randn(p, dtype=torch.float64, generator=gen) for _ in range(9)]
    b = torch.randn(p, dtype=torch.float64, generator=gen)

    def dense(newest: int) -> torch.Tensor:
        t = len(gs)
        F = max(beta**t, floor) * torch.eye(p, dtype=torch.float64)
        for i in range(t - newest, t):
            F = F + (1 - beta) * beta ** (t - 1 - i) * torch.outer(gs[i], gs[i])
        return torch.linalg.solve(F, b)

    for cap, newest in ((4, 4), (0, len(gs))):
        est = make_method("nhgd", {"curvature": "efim", "beta": beta, "efim_floor": floor, "efim_max_rows": cap})
        for g in gs:
            est.observe({"g": g})
        assert len(est.curvature.rows) == newest
        torch.testing.assert_close(est.curvature.solve(b), dense(newest), rtol=1e-10, atol=1e-12)
    with pytest.raises(PinnctlError, match="efim_max_rows"):
        make_method("nhgd", {"curvature": "efim", "efim_max_rows": -1})


def test_metrics_every_and_tail():
    """Metrics on steps 0, every 4th, and each of the last 3; the run's numbers do not depend on it."""
    from pinnctl.bilevel import run
    from pinnctl.config import InnerCfg, OuterCfg, PretrainCfg

    prob = logistic_cleaning(n_train=60, n_val=30, lam=1e-2)
    prob.metrics = lambda theta, v: {"test_accuracy": float(theta.sum())}

    def go(every: int, tail: int):
        est = make_method("nhgd", {"curvature": "efim", "beta": 0.8, "efim_floor": 0.02, "M": 1})
        return run(prob, est, pretrain=PretrainCfg(steps=0), inner=InnerCfg(steps=3, lr=0.1, optimizer="sgd"),
                   outer=OuterCfg(steps=10, lr=0.1, optimizer="sgd", clip=0.0), certify_every=0,
                   metrics_every=every, metrics_tail=tail).history

    sparse, dense = go(4, 3), go(1, 0)
    assert [r.step for r in sparse if r.metrics] == [0, 3, 7, 8, 9]
    assert [r.outer_loss for r in sparse] == [r.outer_loss for r in dense]
    assert [r.metrics for r in sparse if r.metrics] == [dense[k].metrics for k in (0, 3, 7, 8, 9)]


def test_cleaning_weights_project_clamps_v_after_the_outer_step():
    """``project``: after one outer step v is the clamp to [0, 1] of the free step (same hypergradient)."""
    from pinnctl.bilevel import run
    from pinnctl.classification import cleaning_problem
    from pinnctl.config import InnerCfg, OuterCfg, PretrainCfg

    base = logistic_cleaning(n_train=60, n_val=30, lam=1e-2)
    b = base.full_batch()
    val_x, val_y = torch.randn(30, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(2)), b["y"][:30]

    def one_step(project: bool) -> torch.Tensor:
        prob = cleaning_problem(b["x"], b["y"], val_x, val_y, lam=1e-2, batch_size=None, project=project, classes=3)
        est = make_method("nhgd", {"curvature": "efim", "beta": 0.8, "efim_floor": 0.02, "M": 1})
        return run(prob, est, pretrain=PretrainCfg(steps=0), inner=InnerCfg(steps=3, lr=0.5, optimizer="sgd"),
                   outer=OuterCfg(steps=1, lr=50.0, optimizer="sgd", clip=0.0), certify_every=0).v

    free, projected = one_step(False), one_step(True)
    assert ((free < 0) | (free > 1)).sum() >= 5  # the step leaves [0, 1] somewhere
    torch.testing.assert_close(projected, free.clamp(0.0, 1.0), rtol=0, atol=0)
    from pinnctl.discovery import discover

    with pytest.raises(PinnctlError, match="unknown weights"):
        discover().get("data_cleaning").build(weights="clamp")


def test_closed_form_hessian_operator_matches_autograd():
    """The problems' own H·x, ∇_θ ℓ and ℓ (two matmuls per product) against double backward of the
    inner loss: weighted cleaning with weights clipped on both sides, and distillation, whose images are v."""
    import dataclasses

    from pinnctl.classification import distillation_problem
    from pinnctl.hypergrad.autodiff import curvature_operator

    g = torch.Generator().manual_seed(0)
    cleaning = logistic_cleaning(n_train=80, n_val=20, batch_size=32, lam=1e-2)
    x_real = torch.rand(60, 12, generator=g, dtype=torch.float64)
    y_real = torch.arange(60) % 4
    distill = distillation_problem(x_real, y_real, x_real[:10], y_real[:10], per_class=3, lam=1e-3, batch_size=5,
                                   image_shape=(3, 4))
    for prob, v in ((cleaning, torch.linspace(-0.5, 1.5, 80, dtype=torch.float64)), (distill, distill.v0 * 1.3)):
        theta = torch.randn(prob.theta0.numel(), generator=g, dtype=torch.float64)
        batch = prob.sample(2)
        own = curvature_operator(prob, theta, v, batch)
        auto = curvature_operator(dataclasses.replace(prob, hessian_operator=None), theta, v, batch)
        for _ in range(3):
            x = torch.randn(theta.numel(), generator=g, dtype=torch.float64)
            torch.testing.assert_close(own.matvec(x), auto.matvec(x), rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(own.grad, auto.grad, rtol=1e-12, atol=1e-14)
        assert own.loss == pytest.approx(auto.loss, rel=1e-13)
        assert own.counter["hvp"] == 3


def test_distillation_init_noise_and_unknown_init():
    """init=noise starts the images at N(0, 1)/pixels (jaxopt's example); a wrong name is a one-line error at make."""
    from pinnctl.classification import distillation_problem
    from pinnctl.discovery import discover

    x = torch.rand(40, 16, dtype=torch.float64)
    y = torch.arange(40) % 4
    prob = distillation_problem(x, y, x[:8], y[:8], per_class=2, lam=1e-3, init="noise", image_shape=(4, 4))
    assert prob.v0.shape == (4 * 2 * 16,) and 0 < float(prob.v0.std()) * 16 < 2  # std ≈ 1/16
    with pytest.raises(PinnctlError, match="unknown distillation init 'zero'; known: real, noise"):
        discover().get("distillation").build(init="zero")
