"""Device guard: every bundled problem and every registered method runs with
``torch.set_default_device("meta")`` in force while the run is told ``device=cpu``.

A tensor created without a device (``torch.zeros(n)``, ``torch.eye(p)``, ``torch.as_tensor(a)``)
lands on ``meta`` and the run fails as soon as a number is read from it, so this is the test
that keeps GPU support from rotting on a machine without a GPU. Also: the device checks'
one-line errors, and a curvature placed on another device than the state (inline).
"""

import json
import math

import pytest
import torch

from pinnctl import PinnctlError
from pinnctl.cli import main
from pinnctl.hypergrad import known_methods

# the classification problems at a size that runs in about a second per method
CLEANING = ["params.n_train=200", "params.n_val=100", "params.batch_size=64", "inner.steps=3"]
DISTILLATION = ["params.per_class=1", "params.outer_batch=200", "inner.steps=3"]
# per method: options that keep its budget tiny (the rest run as registered)
BUDGET = {"neumann": ["method.options.terms=3"], "cg": ["method.options.maxiter=3"],
          "exact": ["method.options.maxiter=10", "method.options.solver=cg"], "nbo": ["method.options.steps=2"],
          "nsbo": ["method.options.steps=2"], "broyden": ["method.options.threshold=3"],
          "stocbio": ["method.options.terms=2"], "ttsa": ["method.options.terms=2"],
          "amigo": ["method.options.terms=2"], "soba": ["method.options.terms=2"]}
# curvature and inner-optimiser variants whose code paths differ from the defaults (curvature=gn
# subsamples per condition, which only PDE batches have: it runs on the PDE problems)
VARIANTS = {
    "nhgd-kfac": ("nhgd", ["method.options.curvature=kfac"]),
    "nhgd-efim-trajectory": ("nhgd", ["method.options.curvature=efim", "method.options.cross=trajectory"]),
    "nhgd-kfac-inner": ("nhgd", ["method.options.curvature=kfac", "inner.optimizer=kfac"]),
    "broyden-fast": ("broyden", ["method.options.variant=fast", "method.options.threshold=3"]),
}


@pytest.fixture
def meta_default():
    torch.set_default_device("meta")
    try:
        yield
    finally:
        torch.set_default_device(None)


@pytest.fixture
def data(monkeypatch):
    from pinnctl.data import find_file

    try:
        find_file("mnist", "t10k-labels-idx1-ubyte")
        find_file("fashion-mnist", "t10k-labels-idx1-ubyte")
    except PinnctlError as e:
        pytest.skip(f"MNIST data not available: {e}")


def _solve(tmp_path, problem: str, method: str, sets: list[str]) -> dict:
    out = tmp_path / f"{problem}-{method}"
    args = ["solve", problem, "--method", method, "--preset", "smoke", "--quiet", "--out", str(out),
            "--set", "device=cpu", *[a for s in sets for a in ("--set", s)]]
    assert main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "done" and summary["outer_steps"] == 2
    return summary


@pytest.mark.parametrize("method", known_methods())
def test_every_method_is_device_clean(tmp_path, data, meta_default, method):
    summary = _solve(tmp_path, "data_cleaning", method, CLEANING + BUDGET.get(method, []))
    assert 0 < summary["final_outer_loss"] < 10 and 0 <= summary["metrics_last50_mean"]["val_accuracy"] <= 1


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_curvature_and_optimiser_variants_are_device_clean(tmp_path, data, meta_default, variant):
    method, sets = VARIANTS[variant]
    summary = _solve(tmp_path, "data_cleaning", method, CLEANING + sets)
    assert 0 < summary["final_outer_loss"] < 10


def test_distillation_is_device_clean(tmp_path, data):
    """Also: the meta default changes no number (the same run without it, bit for bit)."""
    plain = _solve(tmp_path / "plain", "distillation", "nhgd", DISTILLATION)
    torch.set_default_device("meta")
    try:
        guarded = _solve(tmp_path / "meta", "distillation", "nhgd", DISTILLATION)
    finally:
        torch.set_default_device(None)
    assert math.isfinite(plain["final_outer_loss"]) and guarded["final_outer_loss"] == plain["final_outer_loss"]
    assert guarded["metrics_last50_mean"] == plain["metrics_last50_mean"]


# Every bundled PDE problem once; across them every curvature, both natural-gradient inner
# optimisers and the PDE-specific method paths (Gauss–Newton products, Newton steps, BPN's per-tensor HVPs).
PDE_SMOKE = ["pretrain.steps=2", "inner.steps=2", "certify_every=2"]
PDE_CASES = {
    "heat2d-nhgd-kfac": ("heat2d", "nhgd", []),
    "laplace_bc-nhgd-gn": ("laplace_bc", "nhgd", ["method.options.curvature=gn", "method.options.gn_rows=16"]),
    "heat2d_field-nhgd-efim-kfac": ("heat2d_field", "nhgd", ["method.options.curvature=efim", "inner.optimizer=kfac"]),
    "burgers1d-broyden": ("burgers1d", "broyden", ["method.options.variant=fast", "method.options.threshold=2"]),
    "poisson2d-nbo-gn": ("poisson2d", "nbo", ["method.options.steps=2", "method.options.matrix=gn"]),
    "laplace_bc-exact": ("laplace_bc", "exact", ["method.options.maxiter=5", "method.options.solver=cg"]),
    "laplace_flux-cg-engd": ("laplace_flux", "cg", ["method.options.maxiter=3", "inner.optimizer=engd"]),
}


@pytest.mark.parametrize("case", sorted(PDE_CASES))
def test_every_pde_problem_is_device_clean(tmp_path, meta_default, case):
    problem, method, sets = PDE_CASES[case]
    summary = _solve(tmp_path, problem, method, PDE_SMOKE + sets)
    assert math.isfinite(summary["final_outer_loss"]) and summary["certified"]["grid"] >= summary["J_star"] >= 0


def test_forward_solve_is_device_clean(tmp_path, meta_default):
    out = tmp_path / "forward"
    assert main(["solve", "laplace_bc", "--method", "forward", "--preset", "smoke", "--quiet", "--out", str(out),
                 "--set", "device=cpu", "--set", "pretrain.steps=2"]) == 0
    assert math.isfinite(json.loads((out / "summary.json").read_text())["rel_l2_error"])


def test_guard_catches_a_constructor_without_device(meta_default):
    """The guard itself: what the meta default does to a device-less constructor."""
    from pinnctl.hypergrad.linalg import LowRankPlusDamping

    x = torch.ones(3, device="cpu")
    assert torch.zeros(3).device.type == "meta" and (x + 1).device.type == "cpu"
    solved = LowRankPlusDamping(rows=torch.ones(2, 3, dtype=torch.float64, device="cpu"), damping=1.0).solve(x)
    assert solved.device.type == "cpu" and torch.isfinite(solved).all()


def test_toys_and_methods_on_cpu_under_meta(meta_default):
    """The closed-form toy: the exact method's hypergradient matches ∇Φ with meta as the default device."""
    from pinnctl.hypergrad import make_method
    from pinnctl.toys import converged_theta, quadratic

    prob, truth = quadratic(device="cpu")
    theta = converged_theta(prob, prob.v0)
    h = make_method("exact").hypergradient(prob, theta, prob.v0, 0).h
    assert h.device.type == "cpu"
    torch.testing.assert_close(h, truth["grad_phi"](prob.v0), rtol=1e-8, atol=1e-10)


# ----------------------------------------------------------------------------- device checks


@pytest.mark.parametrize("key", ["device", "curvature_device"])
def test_cuda_without_cuda_is_one_line_error(tmp_path, capsys, monkeypatch, key):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    assert main(["solve", "data_cleaning", "--preset", "smoke", "--quiet", "--out", str(tmp_path / "r"),
                 "--set", f"{key}=cuda:0"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{key} 'cuda:0'" in err and "torch.cuda.device_count() = 0" in err


def test_cuda_index_that_does_not_exist(monkeypatch):
    from pinnctl.devices import check

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert check("device", "cuda:1") == torch.device("cuda:1")
    with pytest.raises(PinnctlError, match=r"device 'cuda:2' does not exist: torch.cuda.device_count\(\) = 2"):
        check("device", "cuda:2")
    with pytest.raises(PinnctlError, match="not a device name"):
        check("device", "gpu0")
    with pytest.raises(PinnctlError, match="cpu or cuda"):
        check("device", "mps")


def test_curvature_on_another_device_gives_the_same_numbers(monkeypatch):
    """Inline with curvature_device ≠ device, the curvature is ``Placed`` there; device "meta"
    for the state is impossible, so place the curvature on a second CPU "device" name and check
    the wrapper moves nothing it should not and changes no number."""
    from pinnctl.bilevel import run
    from pinnctl.config import InnerCfg, OuterCfg, PretrainCfg
    from pinnctl.hypergrad import make_method
    from pinnctl.hypergrad.curvature import Placed
    from pinnctl.toys import logistic_cleaning

    results = []
    for placed in (False, True):
        prob = logistic_cleaning(n_train=60, n_val=30, batch_size=20)
        est = make_method("nhgd", {"curvature": "kfac"})
        if placed:
            est.curvature = Placed(est.curvature, "cpu")
        res = run(prob, est, pretrain=PretrainCfg(steps=0), inner=InnerCfg(steps=3, lr=0.1, optimizer="sgd"),
                  outer=OuterCfg(steps=3, lr=0.5, optimizer="sgd", clip=0.0), certify_every=0)
        results.append(res.v)
    assert torch.equal(results[0], results[1])


def test_build_places_the_curvature_inline_only(monkeypatch):
    """curvature_device ≠ device: inline, NHGD's curvature is wrapped to live there; with
    --parallel the worker builds its own problem on that device, so nothing is wrapped."""
    from pinnctl import config
    from pinnctl.classification import ClassificationProblem
    from pinnctl.hypergrad.curvature import Placed
    from pinnctl.solve_setup import build
    from pinnctl.toys import logistic_cleaning

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    toy = ClassificationProblem("toy", "", build=lambda seed, device: logistic_cleaning(n_train=20, n_val=10, device=device))
    cfg = config.resolve("smoke", sets={"curvature_device": "cuda:1", "method.options.curvature": "kfac"})
    setup = build(cfg, toy)
    assert isinstance(setup.estimator.curvature, Placed) and setup.estimator.curvature.device == torch.device("cuda:1")
    assert setup.problem.theta0.device.type == "cpu"
    cfg.parallel.enabled = True
    assert not isinstance(build(cfg, toy).estimator.curvature, Placed)
    cfg.curvature_device = ""  # the default: the curvature follows the state
    cfg.parallel.enabled = False
    assert not isinstance(build(cfg, toy).estimator.curvature, Placed)
