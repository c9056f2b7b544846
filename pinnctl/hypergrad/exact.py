"""Ground-truth hypergradient: H (or G) on the full batch, solved by CG to tight tolerance or densely.

Used to verify every estimator. Work in float64 (pass float64 θ, v) for tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .. import PinnctlError
from ..core import BilevelProblem, HyperResult
from .autodiff import MATRICES, cross_vjp, curvature_operator, jacobian_rows, outer_grads
from .base import StepInfo, register
from .linalg import cg

SOLVERS = ("auto", "cg", "dense", "woodbury")


def exact_ihvp(problem: BilevelProblem, theta: Tensor, v: Tensor, b: Tensor, *, matrix: str = "hessian",
               solver: str = "auto", damping: float = 0.0, tol: float = 1e-10, maxiter: int = 2000,
               dense_max: int = 4000) -> tuple[Tensor, dict[str, float]]:
    """(M + λI)⁻¹ b with M the full-batch Hessian or Gauss–Newton matrix of the inner loss."""
    batch = problem.full_batch()
    p = theta.numel()
    if solver == "woodbury":  # (G + λI)⁻¹ by the Gram of the rows: exact for the damped Gauss–Newton
        if matrix != "gn" or not damping > 0:
            raise PinnctlError("exact solver 'woodbury' needs matrix=gn and damping > 0")
        from .linalg import WoodburyInverse

        return WoodburyInverse(jacobian_rows(problem, theta, v, batch), damping).solve(b), {"dense": 0.0}
    if solver == "dense" or (solver == "auto" and p <= dense_max):
        if matrix == "hessian":
            M = torch.func.hessian(lambda t: problem.inner_loss(t, v.detach(), batch))(theta.detach()).double()
        else:
            J = jacobian_rows(problem, theta, v, batch).double()
            M = J.T @ J
        M = M + damping * torch.eye(p, dtype=torch.float64, device=M.device)
        return torch.linalg.solve(M, b.double()), {"dense": 1.0}
    op = curvature_operator(problem, theta, v, batch, matrix)

    def matvec(x: Tensor) -> Tensor:
        return op.matvec(x) + damping * x

    res = cg(matvec, b.double(), maxiter=maxiter, tol=tol)
    return res.x, {"dense": 0.0, "cg_iterations": res.iterations, "cg_residual": res.residual_norm,
                   "cg_breakdown": float(res.breakdown is not None)}


@register("exact")
class Exact:
    @dataclass
    class Options:
        matrix: str = "hessian"
        solver: str = "auto"
        damping: float = 0.0
        tol: float = 1e-10
        maxiter: int = 2000
        dense_max: int = 4000

        def validate(self) -> None:
            if self.matrix not in MATRICES:
                raise PinnctlError(f"unknown exact matrix '{self.matrix}'; known: {', '.join(MATRICES)}")
            if self.solver not in SOLVERS:
                raise PinnctlError(f"unknown exact solver '{self.solver}'; known: {', '.join(SOLVERS)}")

    def __init__(self, opts: "Exact.Options") -> None:
        self.opts = opts
        self.factors: Any = None  # with solver=woodbury: the loop's Factorisation (outer.ihvp=woodbury), shared

    def share_factorisation(self, factors: Any) -> None:
        """Called by the loop when it keeps a Woodbury factorisation: with solver=woodbury (and the same
        damping) the hypergradient's IHVP is then the gn step's, factored once per outer step."""
        o = self.opts
        if o.solver == "woodbury" and o.matrix == "gn" and factors is not None and factors.damping == o.damping:
            self.factors = factors

    def _ihvp(self, problem: BilevelProblem, theta: Tensor, v: Tensor, b: Tensor) -> tuple[Tensor, dict[str, float]]:
        o = self.opts
        if self.factors is not None:
            self.factors.reset(theta, v)
            return self.factors.inverse(problem).solve(b), {"dense": 0.0, "shared_factorisation": 1.0}
        return exact_ihvp(problem, theta, v, b, matrix=o.matrix, solver=o.solver, damping=o.damping, tol=o.tol,
                          maxiter=o.maxiter, dense_max=o.dense_max)

    def collect(self, problem: BilevelProblem, step: StepInfo) -> dict[str, Tensor]:
        return {}

    def observe(self, stats: dict[str, Tensor]) -> None:
        pass

    def hypergradient(self, problem: BilevelProblem, theta: Tensor, v: Tensor, step: int) -> HyperResult:
        gv, gt, f = outer_grads(problem, theta, v)
        w, info = self._ihvp(problem, theta, v, gt)
        lw = cross_vjp(problem, theta, v, problem.full_batch(), w.to(theta.dtype))
        info["ihvp_norm"] = float(w.norm())
        return HyperResult((gv - lw).detach(), f, diagnostics=info)

    def ihvp(self, problem: BilevelProblem, theta: Tensor, v: Tensor, b: Tensor, step: int,
             steps: int | None = None) -> Tensor:
        """The exact H⁻¹b (``steps`` is ignored: exact means converged)."""
        return self._ihvp(problem, theta, v, b)[0]

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass
