"""Neumann-series baseline: H⁻¹ b ≈ φ Σ_{k=0}^{K} (I − φH)^k b.

Converges only when φ < 2/λ_max(H); ``phi = 0`` (default) picks φ = 1/λ̂_max from a few
power iterations on H (each one HVP), so the default never diverges on an SPD H.
"""

from __future__ import annotations

from dataclasses import dataclass
from torch import Tensor

from .. import PinnctlError
from ..core import BilevelProblem, HyperResult
from .base import register
from .implicit import LastBatch, Matvec, implicit_hypergradient
from .linalg import neumann_series, power_iteration, random_start


@register("neumann")
class Neumann(LastBatch):
    @dataclass
    class Options:
        terms: int = 20  # K: H⁻¹ ≈ φ Σ_{k=0}^{K} (I − φH)^k
        phi: float = 0.0  # scaling; 0 = 1/λ_max estimated by power iteration
        power_iterations: int = 10

        def validate(self) -> None:
            if self.terms < 0 or self.phi < 0 or self.power_iterations < 1:
                raise PinnctlError("neumann needs terms ≥ 0, phi ≥ 0 (0 = automatic) and power_iterations ≥ 1")

    def hypergradient(self, problem: BilevelProblem, theta: Tensor, v: Tensor, step: int) -> HyperResult:
        o = self.opts

        def solve(matvec: Matvec, b: Tensor) -> tuple[Tensor, dict[str, float]]:
            phi = o.phi
            info: dict[str, float] = {}
            if phi == 0.0:
                lam = power_iteration(matvec, random_start(b, step), o.power_iterations)[0]
                phi = 1.0 / lam if lam > 0 else 1.0
                info["lambda_max"] = lam
            w = neumann_series(matvec, b, o.terms, phi)
            info.update(phi=phi, residual=float((matvec(w) - b).norm() / b.norm().clamp_min(1e-300)))
            return w, info

        return implicit_hypergradient(problem, theta, v, self.batch_for(problem, step), solve)
