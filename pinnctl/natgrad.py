"""Natural-gradient inner optimisers for PDE problems: the curvature NHGD keeps, used to train.

For a squared-residual PINN loss the Gauss–Newton matrix G = JᵀJ is the Fisher of the
Gaussian residual model. Preconditioning the inner gradient with it is energy natural
gradient descent (ENGD, Müller & Zeinhofer 2023); with its Kronecker-factored form it is
K-FAC for PINNs (Dangel et al., 2024):

- ``kfac``: θ ← θ − η (Ĝ + λI)⁻¹ g with Ĝ the K-FAC factors of the current batch (EMA ``beta``
  over steps), damped per layer by λ (``inner.damping``).
- ``engd``: the same with the dense Gauss–Newton of the batch, (JᵀJ + λI)⁻¹ g, computed as
  Jᵀ(JJᵀ + λI)⁻¹ r̃ (rows = all residuals of the batch; for small nets).

η comes from a line search on a logarithmic grid lr·2^-k, k = 0…``LINE_SEARCH``−1, on the
batch loss (as ENGD does); a step that improves nothing is not taken. The K-FAC statistics
of each step are handed on in ``StepInfo.extras["kfac_stats"]``, where NHGD's K-FAC
curvature takes them instead of computing them again: one curvature object serves both
levels.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .hypergrad.curvature import KFAC, CurvatureOptions

LINE_SEARCH = 30  # halvings tried at most; the search stops once the loss rises again


def line_search(problem: Any, theta: Tensor, v: Tensor, batch: Any, direction: Tensor, lr: float,
                loss: float) -> tuple[float, float]:
    """(η, loss at θ − η·direction) for the best η on the grid lr·2^-k that lowers the batch loss
    below ``loss``; (0, loss) when none does (the step is then not taken)."""
    best_eta, best = 0.0, loss
    base = theta.detach().clone()
    for k in range(LINE_SEARCH):
        eta = lr * 2.0**-k
        trial = float(problem.inner_loss(base - eta * direction, v, batch).detach())
        if trial < best:
            best_eta, best = eta, trial
        elif best_eta > 0:
            break  # past the minimum along the grid
    return best_eta, best


def gauss_newton_polish(problem: Any, theta: Tensor, v: Tensor, inverse: Any, steps: int, lr: float = 1.0) -> dict[str, float]:
    """``steps`` damped Gauss–Newton (ENGD) steps on θ in place at v on the full batch, all with one given
    factorisation ``inverse`` (a ``WoodburyInverse`` of the rows at some nearby θ): a chord method.

    Why: after the outer step moves v, Adam needs many steps to bring the PINN back to its PDE; the outer
    step has already factored the inner Gauss–Newton, so each of these steps costs a residual evaluation,
    two matmuls and a line search. Returns the full-batch inner loss before and after, and the last η."""
    from .hypergrad.autodiff import scaled_residuals

    batch = problem.full_batch()
    before = loss = float(problem.inner_loss(theta.detach(), v, batch).detach())
    eta = 0.0
    for _ in range(steps):
        r = scaled_residuals(problem, theta.detach(), v, batch).detach()
        direction = inverse.least_squares_step(r).to(theta.dtype)
        eta, loss = line_search(problem, theta, v, batch, direction, lr, loss)
        if eta == 0.0:
            break
        with torch.no_grad():
            theta.sub_(eta * direction)
    return {"polish_loss_before": before, "polish_loss_after": loss, "polish_eta": eta}


class NaturalGradient:
    """An inner optimiser that needs the problem at each step (``natural_step``), not just ∇θ."""

    kind = "kfac"

    def __init__(self, params: list[Tensor], lr: float, damping: float = 1e-3, beta: float = 0.0) -> None:
        self.theta = params[0]
        self.lr, self.damping = lr, damping
        self.curvature = KFAC(CurvatureOptions(beta=beta, damping=damping))  # beta 0: this batch's factors only
        self.last_eta = 0.0

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.theta.grad = None

    def _direction(self, problem: Any, theta: Tensor, v: Tensor, batch: Any, grad: Tensor) -> tuple[Tensor, dict]:
        from .hypergrad.base import StepInfo

        info = StepInfo(step=-1, theta=theta.detach(), v=v, batch=batch, loss=0.0, grad=grad)
        stats = self.curvature.collect(problem, info)
        self.curvature.observe(stats)
        return self.curvature.solve(grad).to(theta.dtype), {"kfac_stats": stats}

    def natural_step(self, problem: Any, theta: Tensor, v: Tensor, batch: Any, grad: Tensor, loss: float) -> dict:
        direction, extras = self._direction(problem, theta, v, batch, grad)
        best_eta, _ = line_search(problem, theta, v, batch, direction, self.lr, loss)
        with torch.no_grad():
            theta.sub_(best_eta * direction)
        self.last_eta = best_eta
        return extras

    def state_dict(self) -> dict[str, Any]:
        return {"curvature": self.curvature.state_dict(), "last_eta": self.last_eta}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.curvature.load_state_dict(state["curvature"])
        self.last_eta = state["last_eta"]


class DenseGaussNewton(NaturalGradient):
    """ENGD: the exact Gauss–Newton of the batch, (JᵀJ + λI)⁻¹ g by Woodbury."""

    kind = "engd"

    def _direction(self, problem: Any, theta: Tensor, v: Tensor, batch: Any, grad: Tensor) -> tuple[Tensor, dict]:
        """d = Jᵀ (J Jᵀ + λI)⁻¹ r̃ with g = Jᵀ r̃ (rows and residuals both scaled by √(2w/N)): the
        same vector as (JᵀJ + λI)⁻¹ g, without Woodbury's cancellation at small λ."""
        J = problem.jacobian_rows(theta.detach(), v, batch).double()
        with torch.no_grad():
            r = torch.cat([res.detach().double() * (2.0 * w / res.numel()) ** 0.5
                           for res, w in problem.residuals(theta.detach(), v, batch).values()])
        gram = J @ J.T + self.damping * torch.eye(J.shape[0], dtype=torch.float64, device=J.device)
        return (J.T @ torch.linalg.solve(gram, r)).to(theta.dtype), {}

    def state_dict(self) -> dict[str, Any]:
        return {"last_eta": self.last_eta}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.last_eta = state["last_eta"]
