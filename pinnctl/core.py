"""What hypergradient methods see and return: the generic bilevel problem, its minibatches, the result.

Nothing here knows about PDEs; ``pinnctl.problem`` compiles a PDE problem into a
:class:`BilevelProblem`, and ``pinnctl.classification``/``pinnctl.toys`` build one directly.
Methods in ``pinnctl.hypergrad`` import only this module (DESIGN.md §2).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
from torch import Tensor

Batch = dict[str, Tensor]


@dataclass
class BilevelProblem:
    """The generic bilevel problem every hypergradient method works on.

    inner_loss(θ, v, batch) and outer_loss(θ, v) are differentiable scalars;
    ``sample(step)`` returns the inner minibatch for a global inner step counter.
    ``residuals`` (least-squares problems only) returns, per named term, the residual
    vector r and the weight w such that the term equals w·mean(r²): this is what
    Gauss–Newton needs; ``jacobian_rows`` (optional, faster) returns the rows of J for
    the residuals scaled by √(2w/N), so that G = JᵀJ. ``kfac_factors`` returns per-layer Kronecker factors (A, B) of
    the Gauss–Newton matrix of one batch.
    """

    name: str
    theta0: Tensor
    v0: Tensor
    inner_terms: Callable[[Tensor, Tensor, Batch], dict[str, Tensor]]
    outer_loss: Callable[[Tensor, Tensor], Tensor]
    sample: Callable[[int], Batch]
    full_batch: Callable[[], Batch]
    residuals: Callable[[Tensor, Tensor, Batch], dict[str, tuple[Tensor, float]]] | None = None
    jacobian_rows: Callable[[Tensor, Tensor, Batch], Tensor] | None = None
    kfac_factors: Callable[[Tensor, Tensor, Batch], list[tuple[Tensor, Tensor]]] | None = None
    # least-squares outer objectives only: r(θ, v) with outer_loss = ‖r‖² (the Gauss–Newton outer step)
    outer_residuals: Callable[[Tensor, Tensor], Tensor] | None = None
    layer_shapes: list[tuple[int, int]] = field(default_factory=list)
    certify: Callable[[Tensor], dict[str, float]] | None = None
    control_samples: Callable[[Tensor], tuple[np.ndarray, np.ndarray]] | None = None
    metrics: Callable[[Tensor, Tensor], dict[str, float]] | None = None  # per outer step, e.g. test accuracy
    info: dict[str, Any] = field(default_factory=dict)
    # True when every tensor of a batch is a row of one sample set (classification: x, y, idx of the
    # same samples), so a subset must take the same rows of each; False: separate point sets (PDE conditions)
    aligned_batch: bool = False
    # in-place projection of v onto its feasible set after each outer step (None: v is unconstrained);
    # data cleaning's ``weights=project`` keeps v in [0, 1] as BOME does, so no weight leaves the range
    # where the clip σ(v) = clip(v, 0, 1) passes a gradient
    project_v: Callable[[Tensor], None] | None = None

    # optional closed form of ∇²_θθ ℓ on a batch (classification: two matmuls per product instead of a
    # double-backward pass); ``hypergrad.autodiff.curvature_operator`` uses it when present
    hessian_operator: Callable[[Tensor, Tensor, Batch], "HessianOperator"] | None = None

    def inner_loss(self, theta: Tensor, v: Tensor, batch: Batch) -> Tensor:
        return sum(self.inner_terms(theta, v, batch).values())


@dataclass
class HessianOperator:
    """A problem's own Hessian of ℓ on one batch: x ↦ H x, ∇_θ ℓ (formed on first call) and ℓ, in θ's dtype."""

    matvec: Callable[[Tensor], Tensor]
    gradient: Callable[[], Tensor]
    loss: float


@dataclass
class HyperResult:
    """What a hypergradient method returns for one outer step.

    ``theta_step`` is a move of θ the loop applies before the outer step (NBO/NSBO's shared
    Newton step), None for methods that leave θ alone; ``outer_loss`` is f at the θ the
    hypergradient belongs to; ``diagnostics`` are numbers only (solver residuals, norms,
    flags as 0/1), so they can be stored per step in the run file and sent between processes.
    """

    h: Tensor
    outer_loss: float
    theta_step: Tensor | None = None
    diagnostics: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.outer_loss = float(self.outer_loss)
        for key, value in self.diagnostics.items():
            if not isinstance(value, (int, float)):  # bools are ints: flags become 0.0/1.0
                raise TypeError(f"diagnostic '{key}' must be a number, got {type(value).__name__}")
            self.diagnostics[key] = float(value)
