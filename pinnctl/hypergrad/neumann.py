"""Neumann-series baseline: H⁻¹ b ≈ φ Σ_{k=0}^{K} (I − φH)^k b.

Converges only when φ < 2/λ_max(H); ``phi = 0`` (default) picks φ = 1/λ̂_max from a few
power iterations on H (each one HVP), so the default never diverges on an SPD H.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .. import PinnctlError
from ..core import BilevelProblem
from .base import register
from .implicit import LastBatch, Matvec, implicit_hypergradient


def power_lambda_max(matvec: Matvec, dim: int, iterations: int, seed: int = 0,
                     device: torch.device | str = "cpu") -> float:
    """|λ|_max of a symmetric operator by power iteration (Rayleigh quotient of the last iterate);
    the start vector is drawn on the CPU (the same on every device), then moved to ``device``."""
    x = torch.randn(dim, dtype=torch.float64, generator=torch.Generator().manual_seed(seed), device="cpu").to(device)
    x = x / x.norm()
    lam = 0.0
    for _ in range(iterations):
        y = matvec(x)
        lam = float(x @ y)
        n = float(y.norm())
        if n == 0.0:
            return 0.0
        x = y / n
    return abs(lam) if iterations else 0.0


def neumann_series(matvec: Matvec, b: Tensor, terms: int, phi: float) -> Tensor:
    p = b.clone()
    acc = b.clone()
    for _ in range(terms):
        p = p - phi * matvec(p)
        acc = acc + p
    return phi * acc


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

    def hypergradient(self, problem: BilevelProblem, theta: Tensor, v: Tensor, step: int) -> tuple[Tensor, dict[str, Any]]:
        o = self.opts

        def solve(matvec: Matvec, b: Tensor) -> tuple[Tensor, dict[str, Any]]:
            phi = o.phi
            info: dict[str, Any] = {}
            if phi == 0.0:
                lam = power_lambda_max(matvec, b.numel(), o.power_iterations, seed=step, device=b.device)
                phi = 1.0 / lam if lam > 0 else 1.0
                info["lambda_max"] = lam
            w = neumann_series(matvec, b, o.terms, phi)
            info.update(phi=phi, residual=float((matvec(w) - b).norm() / b.norm().clamp_min(1e-300)))
            return w, info

        return implicit_hypergradient(problem, theta, v, self.batch_for(problem, step), solve)
