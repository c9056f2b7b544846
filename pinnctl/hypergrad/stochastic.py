"""Stochastic baselines for the classification extras: stocBiO, TTSA, AmIGO, SOBA.

All four approximate w ≈ H⁻¹ ∇_θ f with Hessian–vector products on *fresh minibatches*
(``problem.sample`` of the ``stochastic`` batch stream, see ``base.batch_id``) and differ in how:

- ``stocbio`` (Ji et al., 2021): truncated Neumann series, w = η Σ_{k=0}^{Q} Π_{i≤k}(I − ηH_i) b.
- ``ttsa`` (Hong et al., 2023): one random truncation q ~ U{0..Q−1}, w = Qη Π_{i≤q}(I − ηH_i) b,
  an unbiased estimate of the Q-term series at the cost of q HVPs. Single loop: run it with
  ``inner.steps=1`` (the inner variable then takes one SGD step per outer step, the two
  step sizes giving the two time scales).
- ``amigo`` (Arbel & Mairal, 2022): ``steps`` SGD steps on ½wᵀHw − bᵀw, warm-started from the
  previous outer step's w.
- ``soba`` (Dagréou et al., 2022): one such step per outer step, warm-started; single loop
  with ``inner.steps=1`` like TTSA.

η (``eta``) must be below 2/λ_max(H); ``eta = 0`` (default) takes 1/λ̂_max from power
iteration on the first minibatch Hessian, once per run (kept in the state). The cross
term L·w is taken on ``cross_batches`` fresh minibatches.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .. import PinnctlError
from ..core import BilevelProblem, HyperResult
from .autodiff import cross_vjp, curvature_operator, outer_grads
from .base import StepInfo, batch_id, register
from .linalg import neumann_series, power_iteration, random_start

CROSS_K0 = 1 << 11  # the cross-term batches' k (after the HVP batches' k < 2048)


class _HVPMethod:
    """Shared: no inner-loop statistics, minibatch HVPs, automatic η, warm-startable w."""

    @dataclass
    class Options:
        terms: int = 10  # Q (stocbio, ttsa) or SGD steps (amigo); soba always takes one
        eta: float = 0.0  # step of the series / SGD on the linear system; 0 = 1/λ̂_max
        power_iterations: int = 10
        cross_batches: int = 1

        def validate(self) -> None:
            if self.terms < 1 or self.eta < 0 or self.cross_batches < 1 or self.power_iterations < 1:
                raise PinnctlError("stochastic methods need terms ≥ 1, eta ≥ 0 (0 = automatic), cross_batches ≥ 1")

    def __init__(self, opts: Any) -> None:
        self.opts = opts
        self.eta: float | None = opts.eta or None
        self.w: Tensor | None = None

    def collect(self, problem: BilevelProblem, step: StepInfo) -> dict[str, Tensor]:
        return {}

    def observe(self, stats: dict[str, Tensor]) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {"eta": self.eta, "w": self.w}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.eta, self.w = state["eta"], state["w"]

    def _batch(self, problem: BilevelProblem, step: int, k: int):
        return problem.sample(batch_id("stochastic", step, k))

    def hypergradient(self, problem: BilevelProblem, theta: Tensor, v: Tensor, step: int) -> HyperResult:
        gv, gt, f = outer_grads(problem, theta, v)
        b = gt.double()
        counter = {"k": 0}

        def H(x: Tensor) -> Tensor:  # a fresh minibatch per product
            counter["k"] += 1
            return curvature_operator(problem, theta, v, self._batch(problem, step, counter["k"])).matvec(x)

        if self.eta is None:
            op = curvature_operator(problem, theta, v, self._batch(problem, step, 0))
            lam = power_iteration(op.matvec, random_start(b, step), self.opts.power_iterations)[0]
            self.eta = 1.0 / lam if lam > 0 else 1.0
        w = self.solve(H, b, step)
        lw = sum(cross_vjp(problem, theta, v, self._batch(problem, step, CROSS_K0 + m), w.to(theta.dtype))
                 for m in range(self.opts.cross_batches)) / self.opts.cross_batches
        return HyperResult((gv - lw).detach(), f, diagnostics={"ihvp_norm": float(w.norm()), "hvp_count": counter["k"],
                                                               "eta": self.eta})

    def solve(self, H: Any, b: Tensor, step: int) -> Tensor:
        raise NotImplementedError


@register("stocbio")
class StocBiO(_HVPMethod):
    def solve(self, H: Any, b: Tensor, step: int) -> Tensor:
        return neumann_series(H, b, self.opts.terms, self.eta)


@register("ttsa")
class TTSA(_HVPMethod):
    def solve(self, H: Any, b: Tensor, step: int) -> Tensor:
        q = int(torch.randint(0, self.opts.terms, (1,), generator=torch.Generator().manual_seed(step), device="cpu"))
        p = b.clone()
        for _ in range(q):
            p = p - self.eta * H(p)
        return self.opts.terms * self.eta * p


@register("amigo")
class AmIGO(_HVPMethod):
    def solve(self, H: Any, b: Tensor, step: int) -> Tensor:
        w = torch.zeros_like(b) if self.w is None else self.w
        for _ in range(self.opts.terms):
            w = w - self.eta * (H(w) - b)
        self.w = w.detach()
        return w


@register("soba")
class SOBA(_HVPMethod):
    def solve(self, H: Any, b: Tensor, step: int) -> Tensor:
        w = torch.zeros_like(b) if self.w is None else self.w
        w = w - self.eta * (H(w) - b)
        self.w = w.detach()
        return w
