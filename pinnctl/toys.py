"""Small bilevel problems with known answers, for verification tests and benchmarks.

- ``quadratic``: θ*(v) = A⁻¹ B v in closed form, so Φ and ∇Φ are exact.
- ``logistic_cleaning``: L2-regularised multinomial logistic regression with per-sample
  weights clip(v, 0, 1) on noisy synthetic labels, validation NLL outside. Strongly
  convex inside: the setting in which the paper's empirical Fisher is a sound Hessian
  estimate at the optimum.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .classification import ClassificationProblem, cleaning_problem
from .core import Batch, BilevelProblem


def quadratic(p: int = 6, q: int = 3, alpha: float = 0.1, seed: int = 0, dtype=torch.float64,
              indefinite: bool = False, device: torch.device | str = "cpu") -> tuple[BilevelProblem, dict]:
    """ℓ = ½θᵀAθ − θᵀBv, f = ½‖θ − c‖² + ½α‖v‖². Returns the problem and the closed forms
    (θ*(v), Φ, ∇Φ and the outer optimum v* = (BᵀA⁻²B + αI)⁻¹BᵀA⁻¹c).

    ``indefinite`` flips A's curvature along one eigenvector (θ* is then a saddle): for
    checking that solvers report non-SPD curvature instead of returning NaN. The data are
    drawn and built on the CPU (the same numbers on every device), then moved to ``device``.
    """
    g = torch.Generator().manual_seed(seed)
    cpu = g.device
    Q = torch.randn(p, p, generator=g, dtype=dtype, device=cpu)
    A = Q @ Q.T / p + torch.eye(p, dtype=dtype, device=cpu)
    if indefinite:
        evals, evecs = torch.linalg.eigh(A)
        evals[0] = -evals[0]
        A = evecs @ torch.diag(evals) @ evecs.T
    B = torch.randn(p, q, generator=g, dtype=dtype, device=cpu)
    c = torch.randn(p, generator=g, dtype=dtype, device=cpu)
    v0 = torch.randn(q, generator=g, dtype=dtype, device=cpu)
    A, B, c, v0 = (x.to(device) for x in (A, B, c, v0))
    batch: Batch = {}

    def inner_terms(theta: Tensor, v: Tensor, batch: Batch) -> dict[str, Tensor]:
        return {"quadratic": 0.5 * theta @ A @ theta - theta @ (B @ v)}

    def outer_loss(theta: Tensor, v: Tensor) -> Tensor:
        return 0.5 * ((theta - c) ** 2).sum() + 0.5 * alpha * (v**2).sum()

    def outer_residuals(theta: Tensor, v: Tensor) -> Tensor:
        return torch.cat([(theta - c) / 2**0.5, (0.5 * alpha) ** 0.5 * v])

    def theta_star(v: Tensor) -> Tensor:
        return torch.linalg.solve(A, B @ v)

    def phi(v: Tensor) -> Tensor:
        return outer_loss(theta_star(v), v)

    def grad_phi(v: Tensor) -> Tensor:
        return B.T @ torch.linalg.solve(A, theta_star(v) - c) + alpha * v

    Ainv_B = torch.linalg.solve(A, B)
    v_star = torch.linalg.solve(Ainv_B.T @ Ainv_B + alpha * torch.eye(q, dtype=dtype, device=c.device), Ainv_B.T @ c)

    prob = BilevelProblem(
        name="quadratic", theta0=c.new_zeros(p), v0=v0,
        inner_terms=inner_terms, outer_loss=outer_loss, sample=lambda step: batch, full_batch=lambda: batch,
        outer_residuals=outer_residuals,
    )
    return prob, {"theta_star": theta_star, "phi": phi, "grad_phi": grad_phi, "A": A, "B": B, "c": c, "v_star": v_star}


def logistic_cleaning(n_train: int = 200, n_val: int = 100, dim: int = 5, classes: int = 3, noise: float = 0.3,
                      lam: float = 1e-2, batch_size: int | None = None, seed: int = 0,
                      dtype=torch.float64, device: torch.device | str = "cpu") -> BilevelProblem:
    """Synthetic Gaussian data for ``classification.cleaning_problem``: weighted NLL + λ‖θ‖²
    inside, clean validation NLL outside (θ laid out like one linear layer, for K-FAC).
    Drawn on the CPU, then moved to ``device``."""
    g = torch.Generator().manual_seed(seed)
    cpu = g.device
    W_true = torch.randn(classes, dim, generator=g, dtype=dtype, device=cpu) * 2

    def make(n: int, corrupt: float) -> tuple[Tensor, Tensor]:
        x = torch.randn(n, dim, generator=g, dtype=dtype, device=cpu)
        y = (x @ W_true.T).argmax(1)
        flip = torch.rand(n, generator=g, dtype=dtype, device=cpu) < corrupt
        y = torch.where(flip, torch.randint(0, classes, (n,), generator=g, device=cpu), y)
        return x.to(device), y.to(device)

    x_tr, y_tr = make(n_train, noise)
    x_val, y_val = make(n_val, 0.0)
    return cleaning_problem(x_tr, y_tr, x_val, y_val, lam=lam, batch_size=batch_size, seed=seed,
                            name="logistic_cleaning", classes=classes)


def converged_theta(prob: BilevelProblem, v: Tensor, max_iter: int = 500) -> Tensor:
    """θ*(v) of a full-batch problem by L-BFGS with a strong-Wolfe line search, to the tolerance
    tests of exact hypergradients need (the reference point of their error measurements)."""
    theta = prob.theta0.clone().requires_grad_(True)
    opt = torch.optim.LBFGS([theta], max_iter=max_iter, tolerance_grad=1e-14, tolerance_change=1e-16,
                            line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        loss = prob.inner_loss(theta, v, prob.full_batch())
        loss.backward()
        return loss

    opt.step(closure)
    return theta.detach()


def toy_cleaning(n_train: int = 40, n_val: int = 20, batch_size: int = 10) -> ClassificationProblem:
    """``logistic_cleaning`` as a problem file would define it (``make = toy_cleaning``): a
    bilevel run of every method in well under a second, for API and worker tests."""

    return ClassificationProblem(
        name="toy_cleaning", description="synthetic logistic data cleaning (tests)",
        build=lambda seed, device="cpu": logistic_cleaning(n_train=n_train, n_val=n_val, dim=3, classes=3,
                                                           batch_size=batch_size, seed=seed, device=device),
        params={"n_train": n_train, "n_val": n_val, "batch_size": batch_size},
        defaults={"pretrain.steps": 5, "inner.steps": 3, "inner.lr": 0.1, "inner.optimizer": "sgd", "outer.lr": 0.1,
                  "outer.optimizer": "sgd", "outer.clip": 0.0, "outer.steps": 3, "certify_every": 0},
    )
