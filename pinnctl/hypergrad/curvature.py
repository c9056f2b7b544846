"""Curvature estimators behind one interface: ≈ H⁻¹ b from inner-loop quantities.

- ``efim``: the paper's empirical Fisher E[g gᵀ] of minibatch gradients, inverted by
  smoothed Sherman–Morrison (dense, float64) — faithful, including its flaw on
  squared-residual losses: E[g gᵀ] ∝ residual² vanishes as the PINN converges.
- ``gn``: Gauss–Newton G = Jᵀ J from residual-Jacobian rows subsampled each step, a
  window of recent steps averaged, constant damping, applied by Woodbury.
- ``kfac``: K-FAC for PINN losses (Dangel et al., 2024): per-layer Kronecker factors
  from the Taylor-mode forward, EMA with β, constant damping, eigen-inverses.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

from .. import PinnctlError
from ..core import BilevelProblem
from .autodiff import jacobian_rows
from .base import StepInfo
from .linalg import LowRankPlusDamping, kron_eig, kron_eig_apply, sherman_morrison_smoothed


class Curvature(Protocol):
    auto_refine: int  # NHGD's default CG refinement steps on top of this curvature

    def collect(self, problem: BilevelProblem, step: StepInfo) -> dict[str, Tensor]: ...

    def observe(self, stats: dict[str, Tensor]) -> None: ...

    def solve(self, b: Tensor) -> Tensor: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


CURVATURES: dict[str, type] = {}


def register_curvature(name: str):
    """Class decorator: a curvature estimator NHGD can use as ``curvature=<name>``."""

    def deco(cls: type) -> type:
        if name in CURVATURES:
            raise PinnctlError(f"curvature '{name}' registered twice")
        CURVATURES[name] = cls
        return cls

    return deco


@dataclass
class CurvatureOptions:
    beta: float = 0.95
    damping: float = 1e-3
    efim_lambda0: float = 1.0
    # floor under EFIM's decaying β^t·λ₀ I (0 = the paper: it decays, and A blows up along
    # directions no recent gradient spans); e.g. 2λ, the exact Hessian of a λ‖θ‖² regulariser
    efim_floor: float = 0.0
    efim_dense_max: int = 2048  # above this dim θ the (identical) low-rank form is cheaper than p² memory
    # low-rank form: keep at most this many (the newest) gradient rows; 0 = every row whose weight is above
    # 1e-12 of the newest. β = 0.99 keeps ~2 750 rows, and each solve then forms a 2 750² Gram from
    # 7 850-long rows (seconds per outer step); docs/classification.md measures the cap's effect
    efim_max_rows: int = 0
    gn_rows: int = 256
    gn_window: int = 8


@register_curvature("efim")
class EFIM:
    """Inverse empirical Fisher A ≈ (β I_old + (1−β) g gᵀ)⁻¹, A₀ = I/λ₀, warm-started.

    Dense while dim θ ≤ efim_dense_max (p² float64 entries); above that the same matrix
    β^t λ₀ I + Σ (1−β) β^{t−1−i} g_i g_iᵀ is kept as weighted rows and applied by Woodbury
    (mathematically identical; the caller is told which form is in use via ``form``).
    """

    auto_refine = 0  # the paper's method, kept faithful

    def __init__(self, opts: CurvatureOptions) -> None:
        self.opts = opts
        self.A: Tensor | None = None
        self.rows: list[Tensor] = []
        self.row_weights: list[float] = []
        self.scale = opts.efim_lambda0  # multiplier of I in the low-rank form
        self.form = "dense"

    def collect(self, problem: BilevelProblem, step: StepInfo) -> dict[str, Tensor]:
        return {"g": step.grad.detach().double()}

    def observe(self, stats: dict[str, Tensor]) -> None:
        g, beta = stats["g"], self.opts.beta
        p = g.numel()
        if p > self.opts.efim_dense_max or self.opts.efim_floor > 0:  # the floor needs the low-rank form
            self.form = "low-rank"
            self.scale *= beta
            self.row_weights = [w * beta for w in self.row_weights] + [1.0 - beta]
            self.rows.append(g)
            cut = 1e-12 * max(self.row_weights)  # once, not per row: β = 0.99 keeps thousands of rows
            keep = [i for i, w in enumerate(self.row_weights) if w > cut > 0]
            if self.opts.efim_max_rows > 0:
                keep = keep[-self.opts.efim_max_rows:]
            self.rows = [self.rows[i] for i in keep]
            self.row_weights = [self.row_weights[i] for i in keep]
            return
        if self.A is None:
            self.A = torch.eye(p, dtype=torch.float64, device=g.device) / self.opts.efim_lambda0
        self.A = sherman_morrison_smoothed(self.A, g, beta)

    def solve(self, b: Tensor) -> Tensor:
        b = b.double()
        if self.form == "dense":
            if self.A is None:
                return b / self.opts.efim_lambda0
            return self.A @ b
        if not self.rows:  # β = 1: no gradient ever weighs in, A = I / max(λ₀, floor)
            return b / max(self.scale, self.opts.efim_floor)
        rows = torch.stack(self.rows) * torch.tensor(self.row_weights, dtype=torch.float64, device=b.device).sqrt()[:, None]
        return LowRankPlusDamping(rows=rows, damping=max(self.scale, self.opts.efim_floor)).solve(b)

    def state_dict(self) -> dict[str, Any]:
        return {"A": self.A, "rows": list(self.rows), "row_weights": list(self.row_weights), "scale": self.scale, "form": self.form}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.A, self.rows, self.row_weights = state["A"], list(state["rows"]), list(state["row_weights"])
        self.scale, self.form = state["scale"], state["form"]


def _subsample(batch: dict[str, Tensor], rows: int, seed: int, aligned: bool = False) -> dict[str, Tensor]:
    """A random subset of each condition's points, proportional to its size (≥ 1 each); the
    permutations are drawn on the CPU, so every device picks the same points.

    ``aligned``: the tensors are columns of one sample set (x, y, idx of the same samples), so
    one subset of ``rows`` samples is taken, the same rows of each; split by key, the rows of x
    would no longer belong to the labels and weights kept."""
    g = torch.Generator().manual_seed(seed)
    if aligned:
        n = {x.shape[0] for x in batch.values()}
        if len(n) != 1:
            raise PinnctlError(f"an aligned batch needs one leading size for all its tensors, got {sorted(n)}")
        size = n.pop()
        keep = torch.randperm(size, generator=g, device=g.device)[: min(rows, size)]
        return {name: x[keep.to(x.device)] for name, x in batch.items()}
    total = sum(x.shape[0] for x in batch.values())
    out = {}
    for name, x in batch.items():
        m = max(1, min(x.shape[0], round(rows * x.shape[0] / total)))
        out[name] = x[torch.randperm(x.shape[0], generator=g, device=g.device)[:m].to(x.device)]
    return out


@register_curvature("gn")
class GaussNewton:
    """G ≈ mean over the last ``gn_window`` steps of (subsampled) Jᵀ J, plus λ I, via Woodbury."""

    auto_refine = 10

    def __init__(self, opts: CurvatureOptions) -> None:
        self.opts = opts
        self.blocks: deque[Tensor] = deque(maxlen=opts.gn_window)

    def collect(self, problem: BilevelProblem, step: StepInfo) -> dict[str, Tensor]:
        sub = _subsample(step.batch, self.opts.gn_rows, seed=step.step, aligned=problem.aligned_batch)
        return {"rows": jacobian_rows(problem, step.theta, step.v, sub).double()}

    def observe(self, stats: dict[str, Tensor]) -> None:
        self.blocks.append(stats["rows"])

    def solve(self, b: Tensor) -> Tensor:
        if not self.blocks:
            return b.double() / self.opts.damping
        rows = torch.cat(list(self.blocks)) / len(self.blocks) ** 0.5
        return LowRankPlusDamping(rows=rows, damping=self.opts.damping).solve(b.double())

    def state_dict(self) -> dict[str, Any]:
        return {"blocks": list(self.blocks)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.blocks = deque(state["blocks"], maxlen=self.opts.gn_window)


@register_curvature("kfac")
class KFAC:
    """Per-layer A ⊗ B factors, EMA-smoothed with β, inverted with constant damping."""

    auto_refine = 10  # K-FAC misjudges the Gauss–Newton scale along ∇_θ f by several× (nhgd._ihvp)

    def __init__(self, opts: CurvatureOptions) -> None:
        self.opts = opts
        self.factors: list[tuple[Tensor, Tensor]] | None = None
        self.shapes: list[tuple[int, int]] = []
        self._eig: list | None = None

    def collect(self, problem: BilevelProblem, step: StepInfo) -> dict[str, Tensor]:
        if "kfac_stats" in step.extras:  # the natural-gradient inner step computed them already
            return step.extras["kfac_stats"]
        if problem.kfac_factors is None:
            raise PinnctlError(f"problem '{problem.name}' provides no K-FAC factors; use curvature=gn or efim")
        theta = step.theta.detach().requires_grad_(True)
        pairs = problem.kfac_factors(theta, step.v.detach(), step.batch)
        out = {}
        for k, (A, B) in enumerate(pairs):
            out[f"A{k}"], out[f"B{k}"] = A.detach(), B.detach()
        out["shapes"] = torch.tensor(problem.layer_shapes, device="cpu")  # metadata: read with .tolist()
        return out

    def observe(self, stats: dict[str, Tensor]) -> None:
        self.shapes = [tuple(s) for s in stats["shapes"].tolist()]
        new = [(stats[f"A{k}"], stats[f"B{k}"]) for k in range(len(self.shapes))]
        beta = self.opts.beta
        if self.factors is None:
            self.factors = new
        else:
            self.factors = [(beta * A + (1 - beta) * An, beta * B + (1 - beta) * Bn) for (A, B), (An, Bn) in zip(self.factors, new)]
        self._eig = None

    def solve(self, b: Tensor) -> Tensor:
        b = b.double()
        if self.factors is None:
            return b / self.opts.damping
        if self._eig is None:
            self._eig = [kron_eig(A, B) for A, B in self.factors]
        out, k = [], 0
        for (o, i), eig in zip(self.shapes, self._eig):
            W = b[k : k + o * i].view(o, i)
            bias = b[k + o * i : k + o * i + o]
            k += o * i + o
            V = kron_eig_apply(eig, torch.cat([W, bias[:, None]], dim=1), self.opts.damping)
            out += [V[:, :i].reshape(-1), V[:, i]]
        return torch.cat(out)

    def state_dict(self) -> dict[str, Any]:
        return {"factors": self.factors, "shapes": self.shapes}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.factors, self.shapes, self._eig = state["factors"], state["shapes"], None


class Placed:
    """A curvature kept on another device than the inner loop (inline runs with
    curvature_device ≠ device): each step's statistics move there, solves move b there and
    the result back. ``collect`` stays where the inner loop's tensors are."""

    def __init__(self, inner: Curvature, device: torch.device | str) -> None:
        self.inner, self.device = inner, torch.device(device)
        self.auto_refine = inner.auto_refine

    def collect(self, problem: BilevelProblem, step: StepInfo) -> dict[str, Tensor]:
        return self.inner.collect(problem, step)

    def observe(self, stats: dict[str, Tensor]) -> None:
        self.inner.observe({k: x.to(self.device) for k, x in stats.items()})

    def solve(self, b: Tensor) -> Tensor:
        return self.inner.solve(b.to(self.device)).to(b.device)

    def state_dict(self) -> dict[str, Any]:
        return self.inner.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        from ..devices import to_device

        self.inner.load_state_dict(to_device(state, self.device))



def make_curvature(name: str, opts: CurvatureOptions) -> Curvature:
    if name not in CURVATURES:
        raise PinnctlError(f"unknown curvature '{name}'; known: {', '.join(sorted(CURVATURES))}")
    return CURVATURES[name](opts)
