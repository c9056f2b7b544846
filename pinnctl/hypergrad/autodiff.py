"""Derivative products every method shares: outer gradients, L·w, H·w, G·w, Jacobian rows.

All are matrix-free: cross derivatives are reverse-over-reverse products and the
Gauss–Newton product is a JVP followed by a VJP, so no matrix larger than needed is
formed (DESIGN.md §1). ``curvature_operator`` is the one place that builds the Hessian
graph or the Gauss–Newton product; ``hvp`` and ``gn_matvec`` are its one-off forms.
"""

from __future__ import annotations

import functools
import math
from typing import Callable

import torch
from torch import Tensor

from .. import PinnctlError
from ..core import Batch, BilevelProblem


def outer_grads(problem: BilevelProblem, theta: Tensor, v: Tensor) -> tuple[Tensor, Tensor, float]:
    """(∇_v f, ∇_θ f, f) at (θ, v)."""
    theta = theta.detach().requires_grad_(True)
    v = v.detach().requires_grad_(True)
    f = problem.outer_loss(theta, v)
    gv, gt = torch.autograd.grad(f, (v, theta), allow_unused=True)
    gv = torch.zeros_like(v) if gv is None else gv
    gt = torch.zeros_like(theta) if gt is None else gt
    return gv.detach(), gt.detach(), float(f.detach())


def inner_grad(problem: BilevelProblem, theta: Tensor, v: Tensor, batch: Batch) -> Tensor:
    theta = theta.detach().requires_grad_(True)
    return torch.autograd.grad(problem.inner_loss(theta, v.detach(), batch), theta)[0].detach()


def cross_vjp(problem: BilevelProblem, theta: Tensor, v: Tensor, batch: Batch, w: Tensor) -> Tensor:
    """L·w = ∇_v (∇_θ ℓ(θ, v) · w), shape of v."""
    theta = theta.detach().requires_grad_(True)
    v = v.detach().requires_grad_(True)
    g = torch.autograd.grad(problem.inner_loss(theta, v, batch), theta, create_graph=True)[0]
    (lw,) = torch.autograd.grad(g, v, grad_outputs=w.to(g.dtype), allow_unused=True)
    return torch.zeros_like(v) if lw is None else lw.detach()


def cross_jvp(problem: BilevelProblem, theta: Tensor, v: Tensor, batch: Batch, w: Tensor) -> Tensor:
    """Lᵀ·w = ∇_θ (∇_v ℓ(θ, v) · w), shape of θ (w has the shape of v): how ∇_θ ℓ moves along w."""
    theta = theta.detach().requires_grad_(True)
    v = v.detach().requires_grad_(True)
    gv = torch.autograd.grad(problem.inner_loss(theta, v, batch), v, create_graph=True)[0]
    (lw,) = torch.autograd.grad(gv, theta, grad_outputs=w.to(gv.dtype), allow_unused=True)
    return torch.zeros_like(theta) if lw is None else lw.detach()


MATRICES = ("hessian", "gn")


class CurvatureOperator:
    """x ↦ C x (float64 in and out) for C = H = ∇²_θθ ℓ or the Gauss–Newton G = JᵀJ on one
    batch, every product against the graph built once; with ∇_θ ℓ (float64, formed on first use:
    the stochastic baselines take one product per fresh batch and never ask) and ℓ of that batch.
    ``counter["hvp"]`` counts products, ``counter["backward"]`` backward passes."""

    def __init__(self, matvec: Callable[[Tensor], Tensor], gradient: Callable[[], Tensor], loss: float,
                 counter: dict[str, int]) -> None:
        self.matvec, self._gradient, self.loss, self.counter = matvec, gradient, loss, counter

    @functools.cached_property
    def grad(self) -> Tensor:
        return self._gradient().detach().double()


def curvature_operator(problem: BilevelProblem, theta: Tensor, v: Tensor, batch: Batch, matrix: str = "hessian",
                       tensor_sizes: list[int] | None = None) -> CurvatureOperator:
    """The curvature of ℓ on ``batch`` at (θ, v) as a matvec.

    ``tensor_sizes`` (Hessian only) reproduces codes that differentiate per parameter tensor
    (BPN): one backward pass per tensor, each keeping only its own block. Same numbers, more passes.
    """
    counter = {"hvp": 0, "backward": 0}
    v = v.detach()
    if matrix == "hessian" and tensor_sizes is None and problem.hessian_operator is not None:
        own = problem.hessian_operator(theta.detach(), v, batch)  # the problem's closed form

        def matvec_own(x: Tensor) -> Tensor:
            counter["hvp"] += 1
            return own.matvec(x).detach().double()

        return CurvatureOperator(matvec_own, own.gradient, own.loss, counter)
    if matrix == "gn":
        def fn(t: Tensor) -> Tensor:
            return scaled_residuals(problem, t, v, batch)

        th = theta.detach()
        loss = float(problem.inner_loss(th, v, batch).detach())  # the residual rows need not be ℓ's
        r, vjp = torch.func.vjp(fn, th)
        grad = vjp(r)[0]  # Jᵀ r̃ = ∇_θ ℓ for ℓ = Σ w·mean(r²)

        def product(x: Tensor) -> Tensor:
            counter["backward"] += 1
            return vjp(torch.func.jvp(fn, (th,), (x.to(th.dtype),))[1])[0]
    elif matrix == "hessian":
        th = theta.detach().requires_grad_(True)
        value = problem.inner_loss(th, v, batch)
        loss = float(value.detach())
        grad = torch.autograd.grad(value, th, create_graph=True)[0]

        def product(x: Tensor) -> Tensor:
            x = x.to(grad.dtype)
            if tensor_sizes is None:
                counter["backward"] += 1
                return torch.autograd.grad(grad, th, grad_outputs=x, retain_graph=True)[0]
            energy = (grad * x).sum()
            blocks, start = [], 0
            for size in tensor_sizes:
                counter["backward"] += 1
                blocks.append(torch.autograd.grad(energy, th, retain_graph=True)[0][start:start + size])
                start += size
            return torch.cat(blocks)
    else:
        raise PinnctlError(f"unknown matrix '{matrix}'; known: {', '.join(MATRICES)}")

    def matvec(x: Tensor) -> Tensor:
        counter["hvp"] += 1
        return product(x).detach().double()

    return CurvatureOperator(matvec, lambda: grad, loss, counter)


def hvp(problem: BilevelProblem, theta: Tensor, v: Tensor, batch: Batch, w: Tensor) -> Tensor:
    """H·w with H = ∇²_θθ ℓ (double backward), in θ's dtype."""
    return curvature_operator(problem, theta, v, batch).matvec(w).to(theta.dtype)


def _require_lsq(problem: BilevelProblem) -> None:
    if problem.residuals is None:
        raise PinnctlError(f"problem '{problem.name}' has no least-squares structure; Gauss–Newton needs residuals")


def scaled_residuals(problem: BilevelProblem, theta: Tensor, v: Tensor, batch: Batch) -> Tensor:
    """Residuals scaled by √(2w/N) per term, so that G = Jᵀ J of this vector is the Gauss–Newton matrix."""
    _require_lsq(problem)
    parts = [r * math.sqrt(2.0 * w / r.numel()) for r, w in problem.residuals(theta, v, batch).values()]
    return torch.cat(parts)


def gn_matvec(problem: BilevelProblem, theta: Tensor, v: Tensor, batch: Batch, w: Tensor) -> Tensor:
    """G·w = Jᵀ(J w): one forward-mode JVP and one VJP, in θ's dtype."""
    _require_lsq(problem)
    return curvature_operator(problem, theta, v, batch, "gn").matvec(w).to(theta.dtype)


def jacobian_rows(problem: BilevelProblem, theta: Tensor, v: Tensor, batch: Batch) -> Tensor:
    """Rows of J for the scaled residual vector (n, p): the problem's own (vmap over points)
    when it has one, else torch.func.jacrev of the whole residual vector."""
    if problem.jacobian_rows is not None:
        return problem.jacobian_rows(theta, v.detach(), batch)
    v = v.detach()
    return torch.func.jacrev(lambda t: scaled_residuals(problem, t, v, batch))(theta.detach()).detach()
