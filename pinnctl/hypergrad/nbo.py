"""NBO and NSBO (Dong et al., ICML 2025): one inexact Newton solve serves both levels.

The inner Newton step and the inverse-Hessian-vector product share H = ∇²_θθ ℓ:

    H [d, u] = [∇_θ ℓ, ∇_θ f]        (one curvature graph, two right-hand sides)

then θ ← θ − s·d (an inexact Newton step on the inner problem; s from a backtracking
search on the batch loss, 1 when the step helps outright) and

    h = ∇_v f(θ − s d, v) − ∇²_vθ ℓ(θ − s d, v) u.

Evaluating the partial derivatives after the Newton step makes their error O(‖θ − θ*‖²),
but u is solved at θ, so the hypergradient error stays first order (measured: 0.78× that
of CG at the same θ, halving with ‖θ − θ*‖). ``resolve=K`` spends K more iterations on u at
θ − s·d (a second graph), which makes the whole error second order (tested). u is
warm-started from the previous outer step (the paper writes u = u_prev − w and solves for
w from 0: the same iterates); nbo drops a warm start whose residual is worse than zero's.

- ``nbo`` (deterministic): T iterations of gradient descent (``solver=gd``, NBO-GD, step
  η = 1/λ̂_max by warm-started power iteration) or of CG (``solver=cg``, NBO-CG) on the
  full batch, both columns against the same graph.
- ``nsbo`` (stochastic, NSBO-SGD): T SGD steps on both quadratics, each step on a fresh
  minibatch whose graph gives both products.

``matrix=gn`` replaces H by the Gauss–Newton G = JᵀJ of a least-squares (PINN) loss: the
curvature of the natural-gradient inner optimisers and of NHGD, positive semi-definite,
so CG never breaks down on it. For PINNs H is indefinite away from the optimum.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor

from .. import PinnctlError
from ..core import Batch, BilevelProblem
from .autodiff import cross_vjp, outer_grads, scaled_residuals
from .base import register
from .implicit import LastBatch
from .linalg import cg

MATRICES = ("hessian", "gn")
SOLVERS = ("gd", "cg")
SEARCH_HALVINGS = 10  # the Newton step is tried at 1, 1/2, …, 2^-10, then skipped
# Sample ids of NSBO's own minibatches, away from the inner loop's and the other methods'.
NSBO_SAMPLE_OFFSET = 3 * 10**7
NSBO_PER_STEP = 1000


@dataclass
class SharedCurvature:
    """∇_θ ℓ on one batch and X ↦ (C + λI) X for the columns of X (p, k), C = H or G,
    all products against the graph built once here."""

    grad: Tensor  # float64
    matmat: Callable[[Tensor], Tensor]
    counter: dict[str, int]
    loss: float  # ℓ on the batch (the Newton step's search starts from it)


def shared_curvature(problem: BilevelProblem, theta: Tensor, v: Tensor, batch: Batch, matrix: str,
                     damping: float) -> SharedCurvature:
    counter = {"hvp": 0}
    v = v.detach()
    if matrix == "hessian":
        th = theta.detach().requires_grad_(True)
        value = problem.inner_loss(th, v, batch)
        loss = float(value.detach())
        g = torch.autograd.grad(value, th, create_graph=True)[0]

        def product(x: Tensor) -> Tensor:
            return torch.autograd.grad(g, th, grad_outputs=x.to(g.dtype), retain_graph=True)[0]
    else:
        if problem.residuals is None:
            raise PinnctlError(f"matrix=gn needs a least-squares problem; '{problem.name}' has no residuals")

        def fn(t: Tensor) -> Tensor:
            return scaled_residuals(problem, t, v, batch)

        loss = float(problem.inner_loss(theta.detach(), v, batch).detach())  # the residual rows need not be ℓ's
        r, vjp = torch.func.vjp(fn, theta.detach())
        g = vjp(r)[0]  # Jᵀ r̃ = ∇_θ ℓ for ℓ = Σ w·mean(r²)

        def product(x: Tensor) -> Tensor:
            return vjp(torch.func.jvp(fn, (theta.detach(),), (x.to(theta.dtype),))[1])[0]

    def matmat(X: Tensor) -> Tensor:
        counter["hvp"] += X.shape[1]
        return torch.stack([product(x).detach().double() for x in X.T], 1) + damping * X

    return SharedCurvature(g.detach().double(), matmat, counter, loss)


def newton_scale(problem: BilevelProblem, theta: Tensor, v: Tensor, batch: Batch, d: Tensor, loss: float) -> float:
    """The largest s in 1, 1/2, … with ℓ(θ − s d) < ℓ(θ) on the batch; 0 if none (the step is skipped)."""
    for k in range(SEARCH_HALVINGS + 1):  # not under no_grad: PDE losses differentiate in x
        s = 2.0**-k
        if float(problem.inner_loss(theta.detach() - s * d.to(theta.dtype), v.detach(), batch).detach()) < loss:
            return s
    return 0.0


@dataclass
class NewtonOptions:
    """Options both methods share."""

    steps: int = 10  # T: iterations of the joint solve (GD/CG) or SGD steps (nsbo)
    eta: float = 0.0  # GD/SGD step on the quadratics; 0 = 1/λ̂_max (power iteration)
    power_iterations: int = 3  # per outer step, warm-started from the last estimate's vector
    matrix: str = "hessian"  # "hessian", or "gn" (Gauss–Newton, for least-squares / PINN losses)
    damping: float = 0.0  # λ in (C + λI)
    newton: bool = True  # take the inner step θ ← θ − s·d (off: u only, the hypergradient at θ)
    search: bool = True  # backtrack s on the batch loss (off: s = 1 always)
    # start u from the previous outer step's (the paper). Off: from 0 every step. On an
    # indefinite H (PINNs) the warm-started u can grow without bound; nbo therefore drops a
    # warm start whose residual is worse than zero's (reported as warm_restart)
    warm_start: bool = True

    def validate(self) -> None:
        if self.matrix not in MATRICES:
            raise PinnctlError(f"unknown matrix '{self.matrix}'; known: {', '.join(MATRICES)}")
        if self.steps < 1 or self.eta < 0 or self.damping < 0 or self.power_iterations < 1:
            raise PinnctlError("nbo/nsbo need steps ≥ 1, eta ≥ 0 (0 = automatic), damping ≥ 0, power_iterations ≥ 1")


class _Newton:
    """Warm-started u, the step size estimate, the Newton step and the final hypergradient."""

    def __init__(self, opts: Any) -> None:
        self.opts = opts
        self.u: Tensor | None = None
        self.power_vector: Tensor | None = None
        self.lambda_max = 0.0

    def state_dict(self) -> dict[str, Any]:
        return {"u": self.u, "power_vector": self.power_vector, "lambda_max": self.lambda_max}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.u, self.power_vector, self.lambda_max = state["u"], state["power_vector"], state["lambda_max"]

    def _u0(self, like: Tensor) -> Tensor:
        return self.u if self.u is not None and self.opts.warm_start else torch.zeros_like(like)

    def step_size(self, curv: SharedCurvature, step: int) -> float:
        """η = 1/λ̂_max of C + λI; the power iteration restarts from last step's vector, so a
        few products per outer step track a slowly changing curvature."""
        if self.opts.eta > 0:
            return self.opts.eta
        matvec = lambda x: curv.matmat(x[:, None])[:, 0]  # noqa: E731
        n = curv.grad.numel()
        x = self.power_vector if self.power_vector is not None else torch.randn(
            n, dtype=torch.float64, generator=torch.Generator().manual_seed(step), device="cpu").to(curv.grad.device)
        for _ in range(self.opts.power_iterations):
            y = matvec(x / x.norm())
            self.lambda_max = float(y.norm())
            x = y
        self.power_vector = x / x.norm()
        return 1.0 / self.lambda_max if self.lambda_max > 0 else 1.0

    def finish(self, problem: BilevelProblem, theta: Tensor, v: Tensor, d: Tensor, u: Tensor, batch: Batch,
               loss: float, cross_batches: list[Batch], info: dict[str, Any],
               refine: Callable[[Tensor, Tensor], Tensor] | None = None) -> tuple[Tensor, dict[str, Any]]:
        """Newton step (searched), optionally u re-solved there (``refine(θ_new, u)``), then
        h = ∇_v f − L u at the new θ."""
        s = 0.0
        if self.opts.newton and torch.isfinite(d).all():
            s = newton_scale(problem, theta, v, batch, d, loss) if self.opts.search else 1.0
        step = (-s * d).to(theta.dtype)
        new_theta = (theta + step).detach()
        if refine is not None and s > 0:
            u = refine(new_theta, u)
        self.u = u.detach()
        gv, _, f = outer_grads(problem, new_theta, v)
        lw = sum(cross_vjp(problem, new_theta, v, b, u.to(theta.dtype)) for b in cross_batches) / len(cross_batches)
        info.update(outer_loss=f, newton_scale=s, newton_norm=float(s * d.norm()), ihvp_norm=float(u.norm()))
        if s > 0:
            info["theta_step"] = step  # the loop moves θ by this (see bilevel._outer_step)
        return (gv - lw).detach(), info


@register("nbo")
class NBO(_Newton, LastBatch):
    @dataclass
    class Options(NewtonOptions):
        solver: str = "gd"  # "gd" (NBO-GD) or "cg" (NBO-CG)
        # solver iterations for u again at θ − s·d, from the joint u (a second graph); 0 = the
        # paper's joint form, whose u is solved at θ and keeps the error first order in ‖θ − θ*‖
        resolve: int = 0
        # the batch of the Newton system: "full" (deterministic NBO; the PDE problems train on it
        # anyway) or "last" (the last inner minibatch: a Newton step fitted to one minibatch
        # over-fits it, measured on data cleaning: test accuracy 0.45 against 0.883 on the full batch)
        batch: str = "full"

        def validate(self) -> None:
            super().validate()
            if self.resolve < 0:
                raise PinnctlError("nbo resolve must be ≥ 0")
            if self.batch not in ("full", "last"):
                raise PinnctlError(f"unknown nbo batch '{self.batch}'; known: full, last")
            if self.solver not in SOLVERS:
                raise PinnctlError(f"unknown nbo solver '{self.solver}'; known: {', '.join(SOLVERS)}")

    def __init__(self, opts: "NBO.Options") -> None:
        LastBatch.__init__(self, opts)
        _Newton.__init__(self, opts)

    def hypergradient(self, problem: BilevelProblem, theta: Tensor, v: Tensor, step: int) -> tuple[Tensor, dict[str, Any]]:
        o = self.opts
        batch = problem.full_batch() if o.batch == "full" else self.batch_for(problem, step)
        curv = shared_curvature(problem, theta, v, batch, o.matrix, o.damping)
        gt = outer_grads(problem, theta, v)[1].double()
        B = torch.stack([curv.grad, gt], 1)
        X0 = torch.stack([torch.zeros_like(gt), self._u0(gt)], 1)
        info: dict[str, Any] = {}
        if self.u is not None and o.warm_start:  # a warm start worse than zero is dropped
            info["warm_restart"] = float((curv.matmat(X0[:, 1:]) - B[:, 1:]).norm() >= B[:, 1].norm())
            if info["warm_restart"]:
                X0[:, 1] = 0.0
        X = self._solve(curv, B, X0, o.steps, step, info)
        residual = (curv.matmat(X) - B).norm(dim=0) / B.norm(dim=0).clamp_min(1e-300)
        info.update(newton_residual=float(residual[0]), ihvp_residual=float(residual[1]), hvp_count=curv.counter["hvp"])

        def refine(new_theta: Tensor, u: Tensor) -> Tensor:
            again = shared_curvature(problem, new_theta, v, batch, o.matrix, o.damping)
            b = outer_grads(problem, new_theta, v)[1].double()[:, None]
            u = self._solve(again, b, u[:, None], o.resolve, step, info)[:, 0]
            info["hvp_count"] += again.counter["hvp"]
            return u

        return self.finish(problem, theta, v, X[:, 0], X[:, 1], batch, curv.loss, [batch], info,
                           refine if o.resolve > 0 else None)

    def _solve(self, curv: SharedCurvature, B: Tensor, X0: Tensor, iterations: int, step: int,
               info: dict[str, Any]) -> Tensor:
        """``iterations`` of GD or CG on (C + λI) X = B from X0, column by column against one graph."""
        if self.opts.solver == "gd":
            eta = info["eta"] = self.step_size(curv, step)
            X = X0
            for _ in range(iterations):
                X = X - eta * (curv.matmat(X) - B)
            return X
        cols = [cg(lambda x: curv.matmat(x[:, None])[:, 0], B[:, j], x0=X0[:, j], maxiter=iterations, tol=1e-10)
                for j in range(B.shape[1])]
        info["cg_breakdown"] = max(info.get("cg_breakdown", 0.0), float(any(c.breakdown is not None for c in cols)))
        return torch.stack([c.x for c in cols], 1)


@register("nsbo")
class NSBO(_Newton):
    """NSBO-SGD: T SGD steps on both quadratics, one fresh minibatch per step."""

    @dataclass
    class Options(NewtonOptions):
        cross_batches: int = 1  # fresh minibatches averaged for L·u

        def validate(self) -> None:
            super().validate()
            if self.cross_batches < 1:
                raise PinnctlError("nsbo needs cross_batches ≥ 1")

    def collect(self, problem: BilevelProblem, step: Any) -> dict[str, Tensor]:
        return {}

    def observe(self, stats: dict[str, Tensor]) -> None:
        pass

    def _batch(self, problem: BilevelProblem, step: int, k: int) -> Batch:
        return problem.sample(NSBO_SAMPLE_OFFSET + step * NSBO_PER_STEP + k)

    def hypergradient(self, problem: BilevelProblem, theta: Tensor, v: Tensor, step: int) -> tuple[Tensor, dict[str, Any]]:
        o = self.opts
        gt = outer_grads(problem, theta, v)[1].double()
        d = torch.zeros_like(gt)
        u = self._u0(gt)
        hvps, eta = 0, 0.0
        for k in range(o.steps):
            curv = shared_curvature(problem, theta, v, self._batch(problem, step, k), o.matrix, o.damping)
            if k == 0:
                eta = self.step_size(curv, step)
            HX = curv.matmat(torch.stack([d, u], 1))
            d = d - eta * (HX[:, 0] - curv.grad)
            u = u - eta * (HX[:, 1] - gt)
            hvps += curv.counter["hvp"]
        search_batch = self._batch(problem, step, NSBO_PER_STEP - 1)
        loss = float(problem.inner_loss(theta.detach(), v.detach(), search_batch).detach())
        cross = [self._batch(problem, step, NSBO_PER_STEP - 2 - m) for m in range(o.cross_batches)]
        return self.finish(problem, theta, v, d, u, search_batch, loss, cross, {"eta": eta, "hvp_count": hvps})
