"""Conjugate-gradient baseline: K CG iterations on (H + λI) w = ∇_θ f from w = 0.

Documented edge cases (no silent NaN):
- ``maxiter = 0``: w = 0, so h = ∇_v f (the implicit term is dropped); reported as
  ``cg_iterations = 0``.
- H not positive definite along a search direction (PINN Hessians can be indefinite):
  CG stops at the last iterate before the breakdown and reports
  ``cg_breakdown = 1``; add ``damping`` to make H + λI SPD.
"""

from __future__ import annotations

from dataclasses import dataclass
from torch import Tensor

from .. import PinnctlError
from ..core import BilevelProblem, HyperResult
from .base import register
from .implicit import LastBatch, Matvec, implicit_hypergradient
from .linalg import cg


@register("cg")
class CG(LastBatch):
    @dataclass
    class Options:
        maxiter: int = 20
        tol: float = 1e-8
        damping: float = 0.0

        def validate(self) -> None:
            if self.maxiter < 0 or self.tol <= 0 or self.damping < 0:
                raise PinnctlError("cg needs maxiter ≥ 0, tol > 0 and damping ≥ 0")

    def hypergradient(self, problem: BilevelProblem, theta: Tensor, v: Tensor, step: int) -> HyperResult:
        o = self.opts

        def solve(matvec: Matvec, b: Tensor) -> tuple[Tensor, dict[str, float]]:
            res = cg(lambda x: matvec(x) + o.damping * x, b, maxiter=o.maxiter, tol=o.tol)
            return res.x, {"cg_iterations": res.iterations, "residual": res.residual_norm,
                           "cg_breakdown": float(res.breakdown is not None)}

        return implicit_hypergradient(problem, theta, v, self.batch_for(problem, step), solve)
