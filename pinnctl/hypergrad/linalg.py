"""Linear algebra for curvature: smoothed Sherman–Morrison, CG on a matvec, Woodbury, Kronecker inverses.

Everything that inverts curvature works in float64 (DESIGN.md §4): the systems are
ill-conditioned and float32 round-off would dominate the hypergradient error.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor


def sherman_morrison_smoothed(A: Tensor, g: Tensor, beta: float) -> Tensor:
    """Exact inverse of β·M + (1−β)·g gᵀ given A = M⁻¹ (the paper's smoothed EFIM update)."""
    if beta >= 1.0:
        return A
    g = g.to(torch.float64).reshape(-1)
    Ag = A @ g
    c = (1.0 - beta) / beta
    out = A / beta - (c / beta) * torch.outer(Ag, Ag) / (1.0 + c * (g @ Ag))
    return 0.5 * (out + out.T)


@dataclass(frozen=True)
class CGResult:
    x: Tensor
    iterations: int
    residual_norm: float  # relative: ‖b − A x‖ / ‖b‖
    converged: bool
    breakdown: str | None = None
    r: Tensor | None = None  # the residual b − A x itself (callers that need A x = b − r)


def cg(matvec: Callable[[Tensor], Tensor], b: Tensor, *, x0: Tensor | None = None, maxiter: int = 100,
       tol: float = 1e-10, precond: Callable[[Tensor], Tensor] | None = None) -> CGResult:
    """(Preconditioned) conjugate gradients for SPD operators, relative residual tolerance.

    ``precond`` applies an SPD approximation of the inverse (e.g. K-FAC). maxiter = 0
    returns x0 (or zeros) with its true residual. If a search direction has pᵀAp ≤ 0 the
    operator is not SPD there: stop, return the current iterate and say so
    (``breakdown``) rather than divide by ~0.
    """
    bnorm = float(b.norm())
    x = torch.zeros_like(b) if x0 is None else x0.clone()
    if bnorm == 0.0:
        return CGResult(torch.zeros_like(b), 0, 0.0, True, r=torch.zeros_like(b))
    r = b - matvec(x) if x0 is not None else b.clone()
    rel = float(r.norm()) / bnorm
    if rel <= tol or maxiter <= 0:
        return CGResult(x, 0, rel, rel <= tol, r=r)
    apply_m = precond or (lambda y: y)
    z = apply_m(r)
    p = z.clone()
    rr = r @ z
    for k in range(1, maxiter + 1):
        Ap = matvec(p)
        pAp = p @ Ap
        if pAp <= 1e-30 * (p @ p):
            return CGResult(x, k - 1, rel, False, "non-positive curvature", r=r)
        alpha = rr / pAp
        x = x + alpha * p
        r = r - alpha * Ap
        rel = float(r.norm()) / bnorm
        if rel <= tol:
            return CGResult(x, k, rel, True, r=r)
        z = apply_m(r)
        rr_new = r @ z
        p = z + (rr_new / rr) * p
        rr = rr_new
    return CGResult(x, maxiter, rel, rel <= tol, r=r)


@dataclass
class LowRankPlusDamping:
    """G = scale·JᵀJ + λI from rows J (n, p); G⁻¹ by Woodbury with an n×n float64 Gram solve.

    (scale·JᵀJ + λI)⁻¹ b = (b − scale·Jᵀ (λI + scale·J Jᵀ)⁻¹ J b) / λ.
    """

    rows: Tensor
    damping: float
    scale: float = 1.0

    def _J(self) -> Tensor:
        return self.rows.to(torch.float64)

    def matvec(self, v: Tensor) -> Tensor:
        J, v = self._J(), v.to(torch.float64)
        return self.scale * (J.T @ (J @ v)) + self.damping * v

    def solve(self, b: Tensor) -> Tensor:
        J, b = self._J(), b.to(torch.float64)
        n = J.shape[0]
        gram = self.scale * (J @ J.T) + self.damping * torch.eye(n, dtype=torch.float64, device=J.device)
        rhs = J @ b
        chol, info = torch.linalg.cholesky_ex(gram)
        if int(info) == 0:
            y = torch.cholesky_solve(rhs if rhs.dim() == 2 else rhs[:, None], chol)
            y = y if rhs.dim() == 2 else y[:, 0]
        else:  # numerically indefinite Gram (λ tiny): symmetric eigen pseudo-solve
            evals, evecs = torch.linalg.eigh(gram)
            inv = torch.where(evals > evals.max() * 1e-14, 1.0 / evals, torch.zeros_like(evals))
            y = evecs @ (inv[:, None] * (evecs.T @ rhs)) if rhs.dim() == 2 else evecs @ (inv * (evecs.T @ rhs))
        return (b - self.scale * (J.T @ y)) / self.damping


class WoodburyInverse:
    """b ↦ (JᵀJ + λI)⁻¹ b with the n×n Gram λI + JJᵀ Cholesky-factored once.

    Why: an iterative solve stopped after a fixed number of steps is a nonlinear map of b,
    so Jacobian products built from it (the Gauss–Newton outer step) are not adjoint to each
    other; this one is exactly linear and symmetric, and each solve is two matmuls. For
    n ≪ p (a PINN's residual rows against its parameters) it is cheap: heat2d, n = 2304,
    p = 12 801. The Gram is formed in the rows' dtype (float32 rows: half the time of
    float64) and factored in float64; the operator stays symmetric either way.
    """

    def __init__(self, rows: Tensor, damping: float) -> None:
        if damping <= 0:
            raise ValueError("WoodburyInverse needs damping > 0")
        self.damping = float(damping)
        gram = (rows @ rows.T).double()
        gram = 0.5 * (gram + gram.T) + self.damping * torch.eye(rows.shape[0], dtype=torch.float64, device=rows.device)
        self.chol = torch.linalg.cholesky(gram)
        self.J = rows.double()

    def solve(self, b: Tensor) -> Tensor:
        """(JᵀJ + λI)⁻¹ b for b of shape (p,) or (p, k), float64."""
        b = b.double()
        rhs = self.J @ b
        y = torch.cholesky_solve(rhs[:, None] if rhs.dim() == 1 else rhs, self.chol)
        y = y[:, 0] if rhs.dim() == 1 else y
        return (b - self.J.T @ y) / self.damping

    def least_squares_step(self, r: Tensor) -> Tensor:
        """Jᵀ(JJᵀ + λI)⁻¹ r = (JᵀJ + λI)⁻¹ Jᵀr: the damped Gauss–Newton step for residuals r of
        these rows (the ENGD direction), without Woodbury's cancellation at small λ; float64."""
        y = torch.cholesky_solve(r.double()[:, None], self.chol)[:, 0]
        return self.J.T @ y


@dataclass(frozen=True)
class KronEig:
    """Eigendecompositions of the factors of one layer's A ⊗ B (float64, eigenvalues ≥ 0)."""

    evals_a: Tensor
    evecs_a: Tensor
    evals_b: Tensor
    evecs_b: Tensor


def kron_eig(A: Tensor, B: Tensor) -> KronEig:
    la, qa = torch.linalg.eigh(A.to(torch.float64))
    lb, qb = torch.linalg.eigh(B.to(torch.float64))
    return KronEig(la.clamp(min=0.0), qa, lb.clamp(min=0.0), qb)


def kron_eig_apply(e: KronEig, V: Tensor, damping: float) -> Tensor:
    """(A ⊗ B + λI)⁻¹ vec(V) for V of shape (b, a), where (A ⊗ B) vec(V) = vec(B V A) (column-major vec)."""
    V = V.to(torch.float64)
    inner = e.evecs_b.T @ V @ e.evecs_a
    inner = inner / (e.evals_b[:, None] * e.evals_a[None, :] + damping)
    return e.evecs_b @ inner @ e.evecs_a.T


def kron_inverse_apply(A: Tensor, B: Tensor, V: Tensor, damping: float) -> Tensor:
    return kron_eig_apply(kron_eig(A, B), V, damping)


def random_start(like: Tensor, seed: int) -> Tensor:
    """A power iteration's start vector, shaped and placed like ``like`` (float64): seeded on the
    CPU generator, so runs repeat on any device."""
    x = torch.randn(like.numel(), dtype=torch.float64, generator=torch.Generator().manual_seed(seed), device="cpu")
    return x.to(like.device)


def power_iteration(matvec: Callable[[Tensor], Tensor], x0: Tensor, iterations: int) -> tuple[float, Tensor]:
    """|λ|_max of a symmetric operator: ‖A x‖ for the normalised last iterate x, and that x
    (pass it back as ``x0`` to warm-start the next estimate). 0 when A x = 0."""
    x = x0 / x0.norm()
    lam = 0.0
    for _ in range(iterations):
        y = matvec(x)
        lam = float(y.norm())
        if lam == 0.0:
            return 0.0, x
        x = y / lam
    return lam, x


def neumann_series(matvec: Callable[[Tensor], Tensor], b: Tensor, terms: int, eta: float) -> Tensor:
    """A⁻¹ b ≈ η Σ_{k=0}^{K} (I − ηA)^k b; converges for η < 2/λ_max. ``matvec`` may change
    between calls (stocBiO draws a fresh minibatch per product)."""
    p, acc = b.clone(), b.clone()
    for _ in range(terms):
        p = p - eta * matvec(p)
        acc = acc + p
    return eta * acc
