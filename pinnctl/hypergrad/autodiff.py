"""Derivative products every method shares: outer gradients, L·w, H·w, G·w, Jacobian rows.

All are matrix-free: cross derivatives are reverse-over-reverse products and the
Gauss–Newton product is a JVP followed by a VJP, so no matrix larger than needed is
formed (DESIGN.md §1).
"""

from __future__ import annotations

import math

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


def hvp(problem: BilevelProblem, theta: Tensor, v: Tensor, batch: Batch, w: Tensor) -> Tensor:
    """H·w with H = ∇²_θθ ℓ (double backward)."""
    theta = theta.detach().requires_grad_(True)
    g = torch.autograd.grad(problem.inner_loss(theta, v.detach(), batch), theta, create_graph=True)[0]
    return torch.autograd.grad(g, theta, grad_outputs=w.to(g.dtype))[0].detach()


def _require_lsq(problem: BilevelProblem) -> None:
    if problem.residuals is None:
        raise PinnctlError(f"problem '{problem.name}' has no least-squares structure; Gauss–Newton needs residuals")


def scaled_residuals(problem: BilevelProblem, theta: Tensor, v: Tensor, batch: Batch) -> Tensor:
    """Residuals scaled by √(2w/N) per term, so that G = Jᵀ J of this vector is the Gauss–Newton matrix."""
    _require_lsq(problem)
    parts = [r * math.sqrt(2.0 * w / r.numel()) for r, w in problem.residuals(theta, v, batch).values()]
    return torch.cat(parts)


def gn_matvec(problem: BilevelProblem, theta: Tensor, v: Tensor, batch: Batch, w: Tensor) -> Tensor:
    """G·w = Jᵀ(J w): one forward-mode JVP and one VJP."""
    v = v.detach()

    def fn(t: Tensor) -> Tensor:
        return scaled_residuals(problem, t, v, batch)

    _, jw = torch.func.jvp(fn, (theta.detach(),), (w.to(theta.dtype),))
    _, vjp = torch.func.vjp(fn, theta.detach())
    return vjp(jw)[0].detach()


def jacobian_rows(problem: BilevelProblem, theta: Tensor, v: Tensor, batch: Batch) -> Tensor:
    """Rows of J for the scaled residual vector (n, p): the problem's own (vmap over points)
    when it has one, else torch.func.jacrev of the whole residual vector."""
    if problem.jacobian_rows is not None:
        return problem.jacobian_rows(theta, v.detach(), batch)
    v = v.detach()
    return torch.func.jacrev(lambda t: scaled_residuals(problem, t, v, batch))(theta.detach()).detach()
