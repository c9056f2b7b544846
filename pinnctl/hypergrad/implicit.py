"""What the iterative-solver baselines (Neumann, CG, Broyden) share.

They differ from NHGD only in how w ≈ H⁻¹ ∇_θ f is obtained: by Hessian–vector
products at the end of the inner loop, on the last inner batch, with nothing
accumulated during it. The cross term L·w is taken on the same batch, so that with
the same inner loop and budgets only the H⁻¹ approximation differs (paper, App. E).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor

from ..core import Batch, BilevelProblem, HyperResult
from .autodiff import cross_vjp, curvature_operator, outer_grads
from .base import StepInfo

Matvec = Callable[[Tensor], Tensor]


def parameter_tensor_sizes(problem: BilevelProblem) -> list[int] | None:
    """Sizes of the state net's weight and bias tensors in the flat θ (None if unknown)."""
    if not problem.layer_shapes:
        return None
    sizes = [n for o, i in problem.layer_shapes for n in (o * i, o)]
    return sizes if sum(sizes) == problem.theta0.numel() else None


class LastBatch:
    """Constructor and collect/observe/state_dict for methods that only need the last inner step's batch."""

    def __init__(self, opts: Any) -> None:
        self.opts = opts
        self.batch: Batch | None = None

    def collect(self, problem: BilevelProblem, step: StepInfo) -> dict[str, Tensor]:
        return dict(step.batch)

    def observe(self, stats: dict[str, Tensor]) -> None:
        if stats:
            self.batch = stats

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def batch_for(self, problem: BilevelProblem, step: int) -> Batch:
        return self.batch if self.batch is not None else problem.sample(max(step - 1, 0))


def implicit_hypergradient(problem: BilevelProblem, theta: Tensor, v: Tensor, batch: Batch,
                           solve: Callable[[Matvec, Tensor], tuple[Tensor, dict[str, float]]],
                           tensor_sizes: list[int] | None = None) -> HyperResult:
    """h = ∇_v f − L·w with w = solve(H·, ∇_θ f) on ``batch``."""
    gv, gt, f = outer_grads(problem, theta, v)
    op = curvature_operator(problem, theta, v, batch, tensor_sizes=tensor_sizes)
    w, info = solve(op.matvec, gt.double())
    if not torch.isfinite(w).all():
        info["nonfinite_ihvp"] = 1.0
    lw = cross_vjp(problem, theta, v, batch, w.to(theta.dtype))
    info.update(ihvp_norm=float(w.norm()), hvp_count=op.counter["hvp"], backward_count=op.counter["backward"])
    return HyperResult((gv - lw).detach(), f, diagnostics=info)
