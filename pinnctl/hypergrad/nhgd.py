"""NHGD (natural hypergradient descent): h = ∇_v f − L·A·∇_θ f with A ≈ H⁻¹ from the inner loop.

A is maintained by a curvature estimator fed at every inner step (see curvature.py);
the cross term L·w is estimated at the end of the inner loop from M samples (the
paper's practical choice), averaged along the stored inner trajectory (eq. 3.3), or
taken on the full batch (``cross=full``: noise-free, for when the full batch is cheap).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from torch import Tensor

from .. import PinnctlError
from ..core import BilevelProblem, HyperResult
from .autodiff import cross_vjp, curvature_operator, outer_grads
from .base import StepInfo, batch_id, register
from .curvature import CURVATURES, CurvatureOptions, make_curvature
from .linalg import cg

CROSS_MODES = ("end", "trajectory", "full")


def _mean_cross(problem: BilevelProblem, points: list[tuple[Tensor, dict]], v: Tensor, w: Tensor) -> Tensor:
    """Mean of L·w over (θ, batch) pairs, each distinct pair computed once: with a fixed point
    set (no resampling) the M end-of-loop samples are one batch, and M products would be M× the work."""
    seen: dict[tuple[int, int], tuple[Tensor, int]] = {}
    for th, b in points:
        key = (id(th), id(b))
        lw, n = seen.get(key, (None, 0))
        seen[key] = (cross_vjp(problem, th, v, b, w) if lw is None else lw, n + 1)
    return sum(lw * n for lw, n in seen.values()) / len(points)


@register("nhgd")
class NHGD:
    @dataclass
    class Options(CurvatureOptions):  # the curvature's options are NHGD's, by inheritance
        curvature: str = "kfac"
        M: int = 5
        cross: str = "end"
        every: int = 1  # update the curvature every `every` inner steps (cost control)
        # CG steps on the exact Gauss–Newton, preconditioned by the curvature;
        # -1 = the curvature's own ``auto_refine`` (10 for gn/kfac, 0 for efim: the paper's method, kept faithful)
        refine: int = -1
        # batch of that Gauss–Newton: "full" (the problem's full batch; the PDE problems train on it
        # anyway) or "last" (the last inner minibatch: cheap, but a tiny batch gives a rank-deficient G)
        refine_batch: str = "full"
        # start the refinement of A·∇_θ f from the previous outer step's solution instead of the
        # curvature's own solve (θ and v move little per outer step, so it is closer)
        warm_start: bool = False

        def validate(self) -> None:
            if self.curvature not in CURVATURES:
                raise PinnctlError(f"unknown curvature '{self.curvature}'; known: {', '.join(sorted(CURVATURES))}")
            if self.cross not in CROSS_MODES:
                raise PinnctlError(f"unknown cross mode '{self.cross}'; known: {', '.join(CROSS_MODES)}")
            if not 0.0 <= self.beta <= 1.0:
                raise PinnctlError(f"nhgd beta must be in [0, 1], got {self.beta}")
            if self.beta == 0.0 and self.curvature == "efim" and self.efim_floor <= 0.0:
                # β = 0 keeps only the last gradient: (g gᵀ)⁻¹ is singular; with a floor it is (g gᵀ + floor·I)⁻¹
                raise PinnctlError("nhgd beta=0 with curvature=efim needs efim_floor > 0 (else A = (g gᵀ)⁻¹ is singular)")
            if self.refine_batch not in ("full", "last"):
                raise PinnctlError(f"unknown refine_batch '{self.refine_batch}'; known: full, last")
            if self.efim_max_rows < 0:
                raise PinnctlError(f"nhgd efim_max_rows must be ≥ 0 (0 = no cap), got {self.efim_max_rows}")
            if self.damping <= 0 or self.M < 1 or self.every < 1:
                raise PinnctlError("nhgd damping must be > 0, M ≥ 1 and every ≥ 1")

    def __init__(self, opts: "NHGD.Options") -> None:
        self.opts = opts
        shared = {f.name: getattr(opts, f.name) for f in fields(CurvatureOptions)}
        self.curvature = make_curvature(opts.curvature, CurvatureOptions(**shared))
        self.trajectory: list[tuple[Tensor, dict]] = []
        self.w_prev: Tensor | None = None

    def wants(self, step: int) -> bool:
        """Whether inner step ``step`` feeds the curvature (the parallel mode sends nothing otherwise)."""
        return step % self.opts.every == 0

    def collect(self, problem: BilevelProblem, step: StepInfo) -> dict[str, Tensor]:
        if not self.wants(step.step):
            return {}
        stats = self.curvature.collect(problem, step)
        if self.opts.cross == "trajectory":
            stats["traj_theta"] = step.theta.detach()
            stats.update({f"traj_batch/{k}": x for k, x in step.batch.items()})
        return stats

    def observe(self, stats: dict[str, Tensor]) -> None:
        if not stats:
            return
        if self.opts.cross == "trajectory":
            batch = {k.split("/", 1)[1]: x for k, x in stats.items() if k.startswith("traj_batch/")}
            self.trajectory.append((stats["traj_theta"], batch))
            stats = {k: x for k, x in stats.items() if not k.startswith("traj_")}
        self.curvature.observe(stats)

    def hypergradient(self, problem: BilevelProblem, theta: Tensor, v: Tensor, step: int) -> HyperResult:
        gv, gt, f = outer_grads(problem, theta, v)
        w, refine_info = self._ihvp(problem, theta, v, gt, step, x0=self.w_prev if self.opts.warm_start else None)
        if self.opts.warm_start:
            self.w_prev = w.detach().clone()
        w = w.to(theta.dtype)
        if self.opts.cross == "trajectory" and self.trajectory:
            points = self.trajectory
            self.trajectory = []
        elif self.opts.cross == "full":
            points = [(theta, problem.full_batch())]
        else:
            points = [(theta, problem.sample(batch_id("nhgd.cross", step, m))) for m in range(self.opts.M)]
        lw = _mean_cross(problem, points, v, w)
        return HyperResult((gv - lw).detach(), f, diagnostics={"ihvp_norm": float(w.norm()),
                                                               "grad_theta_f_norm": float(gt.norm()), **refine_info})

    def ihvp(self, problem: BilevelProblem, theta: Tensor, v: Tensor, b: Tensor, step: int,
             steps: int | None = None) -> Tensor:
        """H⁻¹b as the hypergradient computes it (``steps`` refinement steps, default ``refine``):
        what the Gauss–Newton outer step and the θ prediction apply (pinnctl.outer)."""
        return self._ihvp(problem, theta, v, b, step, steps)[0]

    def _ihvp(self, problem: BilevelProblem, theta: Tensor, v: Tensor, gt: Tensor, step: int,
              steps: int | None = None, x0: Tensor | None = None) -> tuple[Tensor, dict]:
        """A·∇_θ f from the curvature, refined by curvature-preconditioned CG on (G + λI) of the
        last batch. K-FAC alone misjudges the Gauss–Newton scale along ∇_θ f by several×
        (bench/hypergrad_accuracy.py); a few preconditioned CG steps (``refine``, JVP + VJP
        each) remove that error. Skipped (and reported) for problems without residuals."""
        if steps is None:
            steps = self.opts.refine if self.opts.refine >= 0 else self.curvature.auto_refine
        if steps == 0 or problem.residuals is None:
            return self.curvature.solve(gt), {} if steps == 0 else {"refine_skipped": 1.0}
        batch = problem.full_batch() if self.opts.refine_batch == "full" else problem.sample(max(step - 1, 0))
        lam = self.opts.damping
        gn = curvature_operator(problem, theta, v, batch, "gn")

        def matvec(x: Tensor) -> Tensor:
            return gn.matvec(x) + lam * x

        res = cg(matvec, gt.double(), x0=self.curvature.solve(gt) if x0 is None else x0, maxiter=steps, tol=1e-8,
                 precond=self.curvature.solve)
        return res.x, {"refine_residual": res.residual_norm}

    def state_dict(self) -> dict[str, Any]:
        return {"curvature": self.curvature.state_dict(), "w_prev": self.w_prev}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.curvature.load_state_dict(state["curvature"])
        self.w_prev = state.get("w_prev")
