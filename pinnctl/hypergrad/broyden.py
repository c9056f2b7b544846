"""Broyden baseline (Bi-level PINN, Hao et al., ICLR 2023): solve H w = ∇_θ f by Broyden's method.

As in BPN's code (read for facts, not copied): the right-hand side is normalised,
b̂ = b/‖b‖, the iteration starts at x₀ = b̂, and the root of F(x) = H x − b̂ is sought
with "good" Broyden updates of a low-rank inverse-Jacobian estimate
B⁻¹ = −α₀ I + U Vᵀ, α₀ = ½ max(‖x₀‖, 1)/‖F(x₀)‖, at most ``threshold`` (BPN: 30)
iterations = rank, an Armijo backtracking line search on ‖F‖², tolerance
eps·√dim, and the iterate with the lowest residual is returned (times ‖b‖).

Two variants of the same mathematics:
- ``bpn``: every F evaluation is a fresh HVP computed per parameter tensor (one
  backward pass per weight/bias tensor, as BPN differentiates a list of tensors), and
  every line-search trial costs one evaluation; BPN's memory reset after the first
  update is kept.
- ``fast``: F is affine, so F(x + s d) = F(x) + s·H d: one batched HVP per iteration
  serves every line-search trial.
The lowest residual norm of each solve is reported (``residual``; ``broyden_solve`` returns the trace).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor

from .. import PinnctlError
from ..core import BilevelProblem, HyperResult
from .base import register
from .implicit import LastBatch, Matvec, implicit_hypergradient, parameter_tensor_sizes

VARIANTS = ("bpn", "fast")


@dataclass
class BroydenResult:
    x: Tensor
    residual: float  # lowest ‖F‖ reached (normalised system)
    steps: int
    evaluations: int
    trace: list[float] = field(default_factory=list)


def armijo_step(phi: Callable[[float], float], phi0: float, c1: float = 1e-4, smin: float = 1e-2) -> float | None:
    """Backtracking on φ(s) = ‖F(x + s d)‖² with the model slope −φ0 (a Newton-like direction).

    s = 1 first, then the minimiser of the quadratic interpolant, halving at least;
    None when s falls below ``smin`` without sufficient decrease.
    """
    s = 1.0
    while s >= smin:
        val = phi(s)
        if val <= phi0 * (1.0 - c1 * s):
            return s
        denom = 2.0 * (val - phi0 + phi0 * s)
        s_new = phi0 * s * s / denom if denom > 0 else 0.5 * s
        s = min(max(s_new, 0.1 * s), 0.5 * s)
    return None


def broyden_solve(matvec: Matvec, b: Tensor, *, threshold: int = 30, eps: float = 1e-6, line_search: bool = True,
                  affine: bool = False, reset_after_first: bool = False) -> BroydenResult:
    """Root of F(x) = H x − b̂ by Broyden's method, BPN's setting (module docstring); returns w ≈ H⁻¹ b."""
    bnorm = float(b.norm())
    if bnorm == 0.0:
        return BroydenResult(torch.zeros_like(b), 0.0, 0, 0)
    bhat = b / bnorm
    n = b.numel()
    tol = eps * math.sqrt(n)
    evals = 0

    def F(x: Tensor) -> Tensor:
        nonlocal evals
        evals += 1
        return matvec(x) - bhat

    x = bhat.clone()
    fx = F(x)
    alpha = 0.5 * max(float(x.norm()), 1.0) / max(float(fx.norm()), 1e-300)
    U = b.new_zeros(n, threshold)
    V = b.new_zeros(threshold, n)
    rank = 0

    def inv_apply(y: Tensor) -> Tensor:  # B⁻¹ y
        return -alpha * y + U[:, :rank] @ (V[:rank] @ y)

    def inv_apply_t(y: Tensor) -> Tensor:  # yᵀ B⁻¹
        return -alpha * y + (y @ U[:, :rank]) @ V[:rank]

    res0 = float(fx.norm())
    trace = [res0]
    best_x, best = x, res0
    steps = 0
    d = -inv_apply(fx)
    while best >= tol and steps < threshold:
        if affine:
            hd = matvec(d)
            evals += 1
            trial = lambda s: fx + s * hd  # noqa: E731 - F(x + s d) exactly
        else:
            trial = lambda s: F(x + s * d)  # noqa: E731
        s = 1.0
        if line_search:
            cache: dict[float, Tensor] = {}

            def phi(s_: float) -> float:
                cache[s_] = trial(s_)
                val = float(cache[s_].norm()) ** 2
                return val if math.isfinite(val) else math.inf

            found = armijo_step(phi, float(fx.norm()) ** 2)
            s = 1.0 if found is None else found
            fnew = cache[s] if s in cache else trial(s)
        else:
            fnew = trial(s)
        dx, df = s * d, fnew - fx
        x, fx = x + dx, fnew
        steps += 1
        res = float(fx.norm())
        trace.append(res)
        if not math.isfinite(res) or res > 1e6 * res0:
            break  # protective break, as BPN
        if res < best:
            best_x, best = x.clone(), res
        if res < tol:
            break
        vt = inv_apply_t(dx)
        denom = float(vt @ df)
        if rank < threshold and denom != 0.0 and math.isfinite(denom):
            U[:, rank] = dx - inv_apply(df)
            V[rank] = vt / denom
            rank += 1
        if reset_after_first and steps == 1:
            U.zero_()
            V.zero_()
            rank = 0
        d = -inv_apply(fx)
    return BroydenResult(best_x * bnorm, best, steps, evals, trace)


@register("broyden")
class Broyden(LastBatch):
    @dataclass
    class Options:
        variant: str = "bpn"  # "bpn" (BPN's per-tensor HVP cost) or "fast" (one batched HVP per iteration)
        threshold: int = 30  # max iterations = max rank of the inverse update (BPN: 30)
        eps: float = 1e-6  # stop when ‖F‖ < eps·√dim on the normalised system
        line_search: bool = True

        def validate(self) -> None:
            if self.variant not in VARIANTS:
                raise PinnctlError(f"unknown broyden variant '{self.variant}'; known: {', '.join(VARIANTS)}")
            if self.threshold < 1 or self.eps <= 0:
                raise PinnctlError("broyden needs threshold ≥ 1 and eps > 0")

    def hypergradient(self, problem: BilevelProblem, theta: Tensor, v: Tensor, step: int) -> HyperResult:
        o = self.opts
        bpn = o.variant == "bpn"

        def solve(matvec: Matvec, b: Tensor) -> tuple[Tensor, dict[str, float]]:
            r = broyden_solve(matvec, b, threshold=o.threshold, eps=o.eps, line_search=o.line_search,
                              affine=not bpn, reset_after_first=bpn)
            # the per-iteration trace stays in BroydenResult: diagnostics are one number each
            return r.x, {"residual": r.residual, "broyden_steps": r.steps, "broyden_evaluations": r.evaluations}

        sizes = parameter_tensor_sizes(problem) if bpn else None
        return implicit_hypergradient(problem, theta, v, self.batch_for(problem, step), solve, tensor_sizes=sizes)
