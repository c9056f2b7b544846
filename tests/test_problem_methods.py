"""Every PDE method of the registry runs on every bundled PDE problem (smoke budgets) and
records a certified objective. The fast set covers each method once and each problem once;
the full matrix is marked slow."""

import json

import pytest

from pinnctl.cli import main

PDE_PROBLEMS = ["heat2d", "heat2d_field", "burgers1d", "poisson2d", "laplace_bc", "laplace_flux"]
PDE_METHODS = {
    "nhgd": [], "broyden": ["method.options.variant=fast"], "neumann": ["method.options.terms=5"],
    "cg": ["method.options.maxiter=5"], "exact": ["method.options.maxiter=20"], "nbo": ["method.options.steps=5"],
}
FAST = [("burgers1d", "broyden"), ("poisson2d", "neumann"), ("heat2d_field", "cg"), ("burgers1d", "exact"), ("heat2d", "nbo"),
        ("laplace_bc", "nhgd"), ("laplace_flux", "broyden")]
MATRIX = [(p, m) for p in PDE_PROBLEMS for m in PDE_METHODS if (p, m) not in FAST]


def _smoke(tmp_path, problem: str, method: str) -> dict:
    out = tmp_path / f"{problem}-{method}"
    sets = [a for s in PDE_METHODS[method] for a in ("--set", s)]
    assert main(["solve", problem, "--method", method, "--preset", "smoke", "--quiet", "--out", str(out), *sets]) == 0
    return json.loads((out / "summary.json").read_text())


@pytest.mark.parametrize("problem, method", FAST)
def test_method_runs_on_problem(tmp_path, problem, method):
    summary = _smoke(tmp_path, problem, method)
    assert summary["status"] == "done" and summary["certified"]["grid"] >= summary["J_star"] >= 0


@pytest.mark.slow
@pytest.mark.parametrize("problem, method", MATRIX)
def test_method_problem_matrix(tmp_path, problem, method):
    summary = _smoke(tmp_path, problem, method)
    assert summary["status"] == "done" and summary["certified"]["grid"] >= summary["J_star"] >= 0
