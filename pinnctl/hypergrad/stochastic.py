"""Stochastic baselines for the classification extras: stocBiO, TTSA, AmIGO, SOBA.

All four approximate w ≈ H⁻¹ ∇_θ f with Hessian–vector products on *fresh minibatches*
(``problem.sample`` of the ``stochastic`` batch stream, see ``base.batch_id``) and differ in how:

- ``stocbio`` (Ji et al., 2021): truncated Neumann series, w = η Σ_{k=0}^{Q} Π_{i≤k}(I − ηH_i) b.
  With ``batch`` = B > 0 (the NHGD paper's setup) H_k is taken on B·Q·(1 − ημ)^k samples
  (``mu`` = μ) instead of the inner loop's minibatch: large batches first, where the product
  of the remaining factors weighs most.
- ``ttsa`` (Hong et al., 2023, as the NHGD paper runs it): at outer step e (from 0) the truncated
  Neumann series with ⌊Q·√(1 + e)⌋ terms, each HVP on a fresh minibatch: the Hessian-inverse
  estimate is made more accurate as the outer iterates settle. ``schedule=random`` keeps the
  original random truncation q ~ U{0..Q−1}, w = Qη Π_{i≤q}(I − ηH_i) b.
- ``amigo`` (Arbel & Mairal, 2022): ``steps`` SGD steps on ½wᵀHw − bᵀw, warm-started from the
  previous outer step's w.
- ``soba`` (Dagréou et al., 2022): one such step per outer step, warm-started; single loop
  with ``inner.steps=1`` like TTSA.

η (``eta``) must be below 2/λ_max(H); ``eta = 0`` (default) takes 1/λ̂_max from power
iteration on the first minibatch Hessian, once per run (kept in the state). The cross
term L·w is taken on ``cross_batches`` fresh minibatches.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .. import PinnctlError
from ..core import Batch, BilevelProblem, HyperResult
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
        batch: int = 0  # stocbio: B of the B·Q·(1 − ημ)^k batch schedule; 0 = the inner loop's minibatch
        mu: float = 0.0  # stocbio: μ of that schedule
        schedule: str = "sqrt"  # ttsa: "sqrt" (⌊Q√(1+e)⌋ terms at outer step e) or "random" (q ~ U{0..Q−1})

        def validate(self) -> None:
            if self.terms < 1 or self.eta < 0 or self.cross_batches < 1 or self.power_iterations < 1:
                raise PinnctlError("stochastic methods need terms ≥ 1, eta ≥ 0 (0 = automatic), cross_batches ≥ 1")
            if self.batch < 0 or self.mu < 0:
                raise PinnctlError(f"stocbio needs batch ≥ 0 and mu ≥ 0, got batch={self.batch}, mu={self.mu}")
            if self.schedule not in ("sqrt", "random"):
                raise PinnctlError(f"unknown ttsa schedule '{self.schedule}'; known: sqrt, random")

    def __init__(self, opts: Any) -> None:
        self.opts = opts
        self.eta: float | None = opts.eta or None
        self.w: Tensor | None = None
        self.calls = 0  # outer steps seen (TTSA's epoch)

    def collect(self, problem: BilevelProblem, step: StepInfo) -> dict[str, Tensor]:
        return {}

    def observe(self, stats: dict[str, Tensor]) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {"eta": self.eta, "w": self.w, "calls": self.calls}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.eta, self.w, self.calls = state["eta"], state["w"], state.get("calls", 0)

    def _batch(self, problem: BilevelProblem, step: int, k: int):
        return problem.sample(batch_id("stochastic", step, k))

    def hvp_batch(self, problem: BilevelProblem, step: int, k: int) -> Batch:
        """The minibatch of the k-th HVP (k ≥ 1) of this outer step."""
        return self._batch(problem, step, k)

    def hypergradient(self, problem: BilevelProblem, theta: Tensor, v: Tensor, step: int) -> HyperResult:
        gv, gt, f = outer_grads(problem, theta, v)
        b = gt.double()
        counter = {"k": 0, "rows": 0}

        def H(x: Tensor) -> Tensor:  # a fresh minibatch per product
            counter["k"] += 1
            batch = self.hvp_batch(problem, step, counter["k"])
            counter["rows"] += next(iter(batch.values())).shape[0] if batch else 0
            return curvature_operator(problem, theta, v, batch).matvec(x)

        if self.eta is None:
            op = curvature_operator(problem, theta, v, self._batch(problem, step, 0))
            lam = power_iteration(op.matvec, random_start(b, step), self.opts.power_iterations)[0]
            self.eta = 1.0 / lam if lam > 0 else 1.0
        w = self.solve(H, b, step)
        self.calls += 1
        lw = sum(cross_vjp(problem, theta, v, self._batch(problem, step, CROSS_K0 + m), w.to(theta.dtype))
                 for m in range(self.opts.cross_batches)) / self.opts.cross_batches
        return HyperResult((gv - lw).detach(), f, diagnostics={"ihvp_norm": float(w.norm()), "hvp_count": counter["k"],
                                                               "hvp_rows": counter["rows"], "eta": self.eta})

    def solve(self, H: Any, b: Tensor, step: int) -> Tensor:
        raise NotImplementedError


def stocbio_batch_size(B: int, Q: int, eta: float, mu: float, k: int) -> int:
    """The NHGD paper's stocBiO batch at Neumann step k (from 0): B·Q·(1 − ημ)^k, at least 1."""
    return max(1, round(B * Q * (1.0 - eta * mu) ** k))


def sized_batch(problem: BilevelProblem, ids: list[int], size: int) -> Batch:
    """A batch of ``size`` samples of an aligned-batch problem: the rows of ``problem.sample(i)``
    for i in ``ids`` concatenated and cut (stocBiO's batch sizes differ from the inner loop's
    D); the full batch when ``size`` reaches it."""
    if not problem.aligned_batch:
        raise PinnctlError(f"stocbio batch > 0 needs a problem whose batches are rows of one sample set; "
                           f"'{problem.name}' has separate point sets (use batch=0)")
    full = problem.full_batch()
    if size >= next(iter(full.values())).shape[0]:
        return full
    parts: list[Batch] = []
    rows = 0
    for i in ids:
        parts.append(problem.sample(i))
        rows += next(iter(parts[-1].values())).shape[0]
        if rows >= size:
            return {k: torch.cat([p[k] for p in parts])[:size] for k in parts[0]}
    raise PinnctlError(f"stocbio: a batch of {size} samples needs more than {len(ids)} inner minibatches; lower batch")


SIZED_PARTS = 8  # inner minibatches a stocBiO HVP batch may combine


@register("stocbio")
class StocBiO(_HVPMethod):
    def hvp_batch(self, problem: BilevelProblem, step: int, k: int) -> Batch:
        o = self.opts
        if o.batch == 0:
            return self._batch(problem, step, k)
        size = stocbio_batch_size(o.batch, o.terms, self.eta, o.mu, k - 1)
        return sized_batch(problem, [batch_id("stocbio.sized", step, k * SIZED_PARTS + j) for j in range(SIZED_PARTS)], size)

    def solve(self, H: Any, b: Tensor, step: int) -> Tensor:
        return neumann_series(H, b, self.opts.terms, self.eta)


def ttsa_terms(Q: int, epoch: int) -> int:
    """The NHGD paper's TTSA: ⌊Q·√(1 + epoch)⌋ Neumann iterations at outer step ``epoch`` (from 0)."""
    return int(Q * math.sqrt(1 + epoch))


@register("ttsa")
class TTSA(_HVPMethod):
    def solve(self, H: Any, b: Tensor, step: int) -> Tensor:
        if self.opts.schedule == "sqrt":
            return neumann_series(H, b, ttsa_terms(self.opts.terms, self.calls), self.eta)
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
