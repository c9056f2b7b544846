"""Outer optimisers: how v moves from the hypergradient (``outer.optimizer``, options in ``outer.options``).

- ``adam`` / ``sgd``: torch's, on the hypergradient clipped to ±``outer.clip`` (BPN: Adam, lr
  0.01, clip 0.1), with an optional cosine decay of the learning rate (``schedule``).
- ``lbfgs``: the L-BFGS two-loop direction from past (Δv, Δh) pairs, inside a trust radius.
- ``gn``: Levenberg–Marquardt for least-squares outer objectives f = ‖r(θ*(v), v)‖²: solve
  (2JᵀJ + μI) d = −h by a few CG steps, with J w = ∂_θr·(−H⁻¹Lᵀw) + ∂_vr·w applied
  matrix-free through the estimator's own IHVP solver; μ follows the ratio of actual to
  predicted decrease.

``lbfgs`` and ``gn`` are guarded: a step is a *trial*. After the next inner loop the PINN's
outer loss at the trial is compared with the model's prediction; a trial that does not
decrease f is undone (v, θ and the inner optimiser state go back) and halved, so a bad
inner state or a bad model cannot throw v away. Each trial costs one inner loop, which is
the unit of cost of the whole method anyway.

Any optimiser can also move θ with v by the implicit first-order prediction
dθ = −H⁻¹Lᵀ Δv (``outer.predict``): the next inner loop then starts near θ*(v + Δv).
Every optimiser's state (its trial included) is plain tensors and numbers, so it goes
into the checkpoint and a resumed run continues bit-identically.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Callable, Protocol

import torch
from torch import Tensor

from . import PinnctlError
from .core import BilevelProblem
from .hypergrad.autodiff import cross_jvp, cross_vjp
from .hypergrad.linalg import cg


@dataclass
class OuterContext:
    """What one outer step may use: the inner state (θ after the inner loop, its optimiser), the v
    it was trained at, h and f there, and the IHVP solver b ↦ H⁻¹b of the estimator."""

    problem: BilevelProblem
    inner: Any  # bilevel.InnerState: .theta (a leaf, moved in place by the prediction) and .optimizer
    v: Tensor  # v at which θ was trained (detached)
    h: Tensor
    f: float
    ihvp: Callable[[Tensor], Tensor]
    predict: bool = False

    @property
    def theta(self) -> Tensor:
        return self.inner.theta

    def dtheta(self, d: Tensor) -> Tensor:
        """dθ*/dv · d = −H⁻¹ Lᵀ d on the full batch."""
        th = self.theta.detach()
        b = cross_jvp(self.problem, th, self.v, self.problem.full_batch(), d.to(self.v.dtype))
        return -self.ihvp(b).to(th.dtype)

    def move_theta(self, d: Tensor) -> Tensor | None:
        """Apply the θ prediction for a step d of v (when ``predict``); returns dθ."""
        if not self.predict:
            return None
        dt = self.dtheta(d)
        with torch.no_grad():
            self.theta.add_(dt)
        return dt


# Damping of the fallback IHVP (estimators without their own solver): NHGD's default λ.
FALLBACK_DAMPING = 1e-3
FALLBACK_STEPS = 10


IHVP_KINDS = ("method", "woodbury")


def check_ihvp(kind: str, damping: float, polish: int = 0) -> None:
    """One-line errors for ``outer.ihvp`` / ``outer.ihvp_damping`` / ``inner.polish`` before the run starts."""
    if kind not in IHVP_KINDS:
        raise PinnctlError(f"unknown outer.ihvp '{kind}'; known: {', '.join(IHVP_KINDS)}")
    if kind == "woodbury" and not damping > 0:
        raise PinnctlError(f"outer.ihvp_damping must be > 0 for outer.ihvp=woodbury; got {damping}")
    if polish < 0:
        raise PinnctlError(f"inner.polish must be ≥ 0 (0 disables); got {polish}")
    if polish > 0 and kind != "woodbury":
        raise PinnctlError("inner.polish reuses the outer step's Woodbury factorisation: set outer.ihvp=woodbury "
                           "(and outer.optimizer=gn), or inner.polish=0")


def require_residuals(problem: BilevelProblem) -> None:
    """The Woodbury factorisation is built from the inner loss's residual rows: a one-line error without them."""
    if problem.residuals is None:
        raise PinnctlError(f"outer.ihvp=woodbury needs a least-squares inner loss; problem '{problem.name}' has none "
                           "(use outer.ihvp=method)")


class Factorisation:
    """The Woodbury factorisation of the full-batch inner Gauss–Newton at an anchor (θ, v), built on
    first use and kept until ``reset``: the gn step's IHVPs and the inner loop's Gauss–Newton polish
    (``inner.polish``) share it, so one outer step factors G once. The anchor is plain tensors
    (``state``/``load``): a resumed run rebuilds the same factorisation bit for bit."""

    def __init__(self, damping: float) -> None:
        self.damping = float(damping)
        self.theta: Tensor | None = None
        self.v: Tensor | None = None
        self._inverse: Any = None

    def reset(self, theta: Tensor, v: Tensor) -> None:
        """Anchor at (θ, v); a no-op when it is anchored there already (the factorisation is kept)."""
        if self.theta is not None and torch.equal(self.theta, theta.detach()) and torch.equal(self.v, v.detach()):
            return
        self.theta, self.v, self._inverse = theta.detach().clone(), v.detach().clone(), None

    def inverse(self, problem: BilevelProblem) -> Any:
        if self.theta is None:
            raise RuntimeError("Factorisation.inverse before reset")
        if self._inverse is None:
            require_residuals(problem)
            from .hypergrad.autodiff import jacobian_rows
            from .hypergrad.linalg import WoodburyInverse

            self._inverse = WoodburyInverse(jacobian_rows(problem, self.theta, self.v, problem.full_batch()), self.damping)
        return self._inverse

    def solver(self, problem: BilevelProblem) -> Callable[[Tensor], Tensor]:
        return lambda b: self.inverse(problem).solve(b)

    def state(self) -> dict[str, Tensor] | None:
        return None if self.theta is None else {"theta": self.theta.clone(), "v": self.v.clone()}

    def load(self, state: dict[str, Tensor] | None) -> None:
        if state is None:
            self.theta = self.v = self._inverse = None
        else:
            self.reset(state["theta"], state["v"])


def woodbury_ihvp(problem: BilevelProblem, theta: Tensor, v: Tensor, damping: float) -> Callable[[Tensor], Tensor]:
    """b ↦ (G + λI)⁻¹b with G the full-batch Gauss–Newton at (θ, v), factored on first use (a
    rejected trial never pays for it): a linear, symmetric IHVP, so J and Jᵀ of gn are adjoint."""
    require_residuals(problem)
    factors = Factorisation(damping)
    factors.reset(theta, v)
    return factors.solver(problem)


def ihvp_solver(problem: BilevelProblem, estimator: Any, theta: Tensor, v: Tensor, step: int,
                steps: int = -1, kind: str = "method", damping: float = FALLBACK_DAMPING,
                factors: Factorisation | None = None) -> Callable[[Tensor], Tensor]:
    """b ↦ H⁻¹b at (θ, v): ``woodbury`` (see woodbury_ihvp; with ``factors``, that factorisation as it
    is anchored), or the estimator's own solver (nhgd: curvature-preconditioned CG on the Gauss–Newton;
    exact), else plain CG on the full-batch Gauss–Newton (or Hessian) + λI."""
    if kind == "woodbury":
        return factors.solver(problem) if factors is not None else woodbury_ihvp(problem, theta, v, damping)
    n = None if steps < 0 else steps
    if hasattr(estimator, "ihvp"):
        return lambda b: estimator.ihvp(problem, theta, v, b, step, n)
    from .hypergrad.exact import exact_ihvp

    matrix = "gn" if problem.residuals is not None else "hessian"
    return lambda b: exact_ihvp(problem, theta, v, b, matrix=matrix, solver="cg", damping=FALLBACK_DAMPING,
                                tol=1e-8, maxiter=FALLBACK_STEPS if n is None else n)[0]


class Outer(Protocol):
    def step(self, v: Tensor, ctx: OuterContext) -> dict[str, float]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


_REGISTRY: dict[str, type] = {}


def register(name: str) -> Callable[[type], type]:
    def deco(cls: type) -> type:
        _REGISTRY[name] = cls
        cls.optimizer_name = name
        return cls

    return deco


def known() -> list[str]:
    return sorted(_REGISTRY)


def make_outer(name: str, v: Tensor, lr: float, clip: float, steps: int, options: dict[str, Any] | None = None) -> Outer:
    """The outer optimiser ``name`` for the leaf tensor v; unknown names/options are one-line errors."""
    if name not in _REGISTRY:
        raise PinnctlError(f"unknown outer optimizer '{name}'; known: {', '.join(known())}")
    cls = _REGISTRY[name]
    fields = {f.name for f in dataclasses.fields(cls.Options)}
    unknown = set(options or {}) - fields
    if unknown:
        raise PinnctlError(f"outer optimizer '{name}' has no option(s) {', '.join(sorted(unknown))}; "
                           f"known: {', '.join(sorted(fields)) or 'none'}")
    opts = cls.Options(**(options or {}))
    for f in dataclasses.fields(opts):
        value = getattr(opts, f.name)
        if isinstance(f.default, float) and isinstance(value, int) and not isinstance(value, bool):
            setattr(opts, f.name, float(value))
        elif not isinstance(value, type(f.default)):
            raise PinnctlError(f"outer option '{f.name}' expects {type(f.default).__name__}, got {value!r}")
    opts.validate()
    return cls(v, lr, clip, steps, opts)


# ----------------------------------------------------------------------------- first-order


class _Torch:
    """A torch optimiser on the clipped hypergradient; its state_dict is torch's (old checkpoints load)."""

    make: Callable[[list[Tensor], float], torch.optim.Optimizer]

    @dataclass
    class Options:
        schedule: str = "constant"  # "constant" or "cosine" (lr → lr_min over outer.steps)
        lr_min: float = 0.0

        def validate(self) -> None:
            if self.schedule not in ("constant", "cosine"):
                raise PinnctlError(f"unknown outer schedule '{self.schedule}'; known: constant, cosine")

    def __init__(self, v: Tensor, lr: float, clip: float, steps: int, opts: Any) -> None:
        self.v, self.lr, self.clip, self.steps, self.opts = v, lr, clip, steps, opts
        self.opt = type(self).make([v], lr)
        self.k = 0

    def step(self, v: Tensor, ctx: OuterContext) -> dict[str, float]:
        h = ctx.h.clamp(-self.clip, self.clip) if self.clip > 0 else ctx.h
        lr = self.lr
        if self.opts.schedule == "cosine":
            frac = min(self.k / max(self.steps - 1, 1), 1.0)
            lr = self.opts.lr_min + 0.5 * (self.lr - self.opts.lr_min) * (1 + math.cos(math.pi * frac))
        for group in self.opt.param_groups:
            group["lr"] = lr
        before = v.detach().clone()
        self.opt.zero_grad(set_to_none=True)
        v.grad = h.to(v.dtype)
        self.opt.step()
        self.k += 1
        ctx.move_theta(v.detach() - before)
        return {"outer_lr": lr}

    def state_dict(self) -> dict[str, Any]:
        return self.opt.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.opt.load_state_dict(state)
        self.k = max((int(s["step"]) for s in self.opt.state.values() if "step" in s), default=0)


@register("adam")
class Adam(_Torch):
    make = staticmethod(lambda params, lr: torch.optim.Adam(params, lr=lr))


@register("sgd")
class SGD(_Torch):
    make = staticmethod(lambda params, lr: torch.optim.SGD(params, lr=lr))

    def load_state_dict(self, state: dict[str, Any]) -> None:  # SGD keeps no step count: count outer steps
        self.opt.load_state_dict(state.get("torch", state))
        self.k = int(state.get("k", 0))

    def state_dict(self) -> dict[str, Any]:
        return {"torch": self.opt.state_dict(), "k": self.k}


# ----------------------------------------------------------------------------- guarded second-order


@dataclass
class GuardOptions:
    radius: float = 1.0  # initial trust radius on ‖Δv‖
    max_radius: float = 10.0
    backtracks: int = 4  # halvings of a rejected trial before v stays where it was
    c1: float = 1e-4  # sufficient decrease: f_new ≤ f_old − c1·(predicted decrease) + slack·f_old
    # tolerated relative increase of the PINN's f: after a large step θ is still catching up and
    # f fluctuates by a few % (measured on heat2d: ±2 % after 20 inner steps); only a clear increase
    # is a bad step. The trust radius / damping still react to the ratio actual/predicted.
    slack: float = 0.0

    def validate(self) -> None:
        if self.radius <= 0 or self.max_radius < self.radius or self.backtracks < 0 or not 0 <= self.c1 < 1 or self.slack < 0:
            raise PinnctlError("outer radius must be > 0 and ≤ max_radius, backtracks ≥ 0, 0 ≤ c1 < 1, slack ≥ 0")


class _Guarded:
    """A step is a trial checked after the next inner loop (see the module docstring).

    The predicted decrease of a step s·d is −(s·hᵀd + ½s²·dᵀGd) (G = 0 for lbfgs's linear
    model, the Gauss–Newton matrix for gn)."""

    def __init__(self, v: Tensor, lr: float, clip: float, steps: int, opts: Any) -> None:
        self.opts = opts
        self.radius = opts.radius
        self.trial: dict[str, Any] | None = None
        self.rejected = 0

    def _predicted(self, s: float) -> float:
        t = self.trial
        return -(s * t["hd"] + 0.5 * s * s * t["dGd"])

    def _start(self, v: Tensor, ctx: OuterContext, d: Tensor, hd: float, dGd: float) -> None:
        self.trial = {"v": v.detach().clone(), "theta": ctx.theta.detach().clone(),
                      "inner_opt": copy.deepcopy(ctx.inner.optimizer.state_dict()), "f": ctx.f, "h": ctx.h.detach().clone(),
                      "d": d.detach().clone(), "hd": hd, "dGd": dGd, "scale": 1.0, "tries": 0, "dtheta": None}
        with torch.no_grad():
            v.add_(d.to(v.dtype))
        dt = ctx.move_theta(d)
        self.trial["dtheta"] = None if dt is None else dt.detach().clone()

    def check(self, f_new: float, v: Tensor, inner: Any) -> bool:
        """Called by the loop after the inner loop at a trial: accept it (True), or undo it and
        start the halved trial, or, after ``backtracks`` halvings, stay at the old v (False)."""
        t = self.trial
        assert t is not None
        s = t["scale"]
        pred = self._predicted(s)
        actual = t["f"] - f_new
        if math.isfinite(f_new) and actual + self.opts.slack * abs(t["f"]) >= self.opts.c1 * max(pred, 0.0) and (
                actual > 0 or self.opts.slack > 0):
            self._accepted(actual / pred if pred > 0 else 1.0, s)
            return True
        self.rejected += 1
        with torch.no_grad():
            v.copy_(t["v"])
            inner.theta.copy_(t["theta"])
        inner.optimizer.load_state_dict(copy.deepcopy(t["inner_opt"]))
        self._rejected_once()
        if t["tries"] >= self.opts.backtracks:  # stay at the old v, with a smaller radius
            self.radius = max(0.25 * min(self.radius, float(t["d"].norm())), 1e-8)
            self.trial = None
            return False
        t["tries"] += 1
        t["scale"] = s * 0.5
        with torch.no_grad():
            v.add_((t["scale"] * t["d"]).to(v.dtype))
            if t["dtheta"] is not None:
                inner.theta.add_(t["scale"] * t["dtheta"])
        return False

    def _accepted(self, rho: float, s: float) -> None:
        t = self.trial
        step_norm = s * float(t["d"].norm())
        if s == 1.0 and rho > 0.75 and step_norm >= 0.99 * self.radius:
            self.radius = min(2 * self.radius, self.opts.max_radius)
        elif rho < 0.25 or s < 1.0:
            self.radius = max(0.5 * step_norm, 1e-8)
        self.trial = None

    def _rejected_once(self) -> None:
        pass

    def _cap(self, d: Tensor) -> Tensor:
        n = float(d.norm())
        return d * (self.radius / n) if n > self.radius else d

    def _guard_state(self) -> dict[str, Any]:
        return {"radius": self.radius, "trial": self.trial, "rejected": self.rejected}

    def _load_guard(self, state: dict[str, Any]) -> None:
        self.radius, self.trial, self.rejected = float(state["radius"]), state["trial"], int(state["rejected"])


@register("lbfgs")
class LBFGS(_Guarded):
    """L-BFGS on the hypergradient: pairs (Δv, Δh) of accepted steps, direction by the two-loop
    recursion, scaled by γ = sᵀy / yᵀy, capped at the trust radius; pairs with sᵀy ≤ 0 are skipped."""

    @dataclass
    class Options(GuardOptions):
        memory: int = 10

        def validate(self) -> None:
            GuardOptions.validate(self)
            if self.memory < 1:
                raise PinnctlError("outer lbfgs memory must be ≥ 1")

    def __init__(self, v: Tensor, lr: float, clip: float, steps: int, opts: Any) -> None:
        super().__init__(v, lr, clip, steps, opts)
        self.s: list[Tensor] = []
        self.y: list[Tensor] = []
        self.prev: dict[str, Tensor] | None = None  # (v, h) of the last accepted point

    def direction(self, h: Tensor) -> Tensor:
        q = h.double().clone()
        alphas = []
        for s, y in reversed(list(zip(self.s, self.y))):
            a = (s @ q) / (y @ s)
            alphas.append(a)
            q = q - a * y
        if self.s:
            q = q * (self.s[-1] @ self.y[-1]) / (self.y[-1] @ self.y[-1])
        else:
            q = q * (self.radius / max(float(q.norm()), 1e-300))
        for (s, y), a in zip(zip(self.s, self.y), reversed(alphas)):
            b = (y @ q) / (y @ s)
            q = q + (a - b) * s
        return -q

    def step(self, v: Tensor, ctx: OuterContext) -> dict[str, float]:
        h = ctx.h.double()
        if self.prev is not None:
            s, y = v.detach().double() - self.prev["v"], h - self.prev["h"]
            if float(s @ y) > 1e-12 * float(s.norm() * y.norm()):
                self.s, self.y = (self.s + [s])[-self.opts.memory :], (self.y + [y])[-self.opts.memory :]
        self.prev = {"v": v.detach().double().clone(), "h": h.clone()}
        d = self._cap(self.direction(h))
        hd = float(h @ d)
        if hd >= 0:  # not a descent direction (noisy pairs): restart from steepest descent
            self.s, self.y = [], []
            d = self._cap(self.direction(h))
            hd = float(h @ d)
        self._start(v, ctx, d, hd, 0.0)
        return {"outer_radius": self.radius, "outer_step_norm": float(d.norm()), "outer_pairs": float(len(self.s)),
                "outer_predicted": self._predicted(1.0)}

    def state_dict(self) -> dict[str, Any]:
        return {**self._guard_state(), "s": list(self.s), "y": list(self.y), "prev": self.prev}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._load_guard(state)
        self.s, self.y, self.prev = list(state["s"]), list(state["y"]), state["prev"]


def outer_jacobian(ctx: OuterContext) -> tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]]:
    """(w ↦ J w, y ↦ Jᵀ y) for J = dr/dv of the outer residual vector along θ*(v):
    J w = ∂_θ r·(−H⁻¹Lᵀw) + ∂_v r·w, Jᵀ y = ∂_v rᵀy − L H⁻¹ ∂_θ rᵀy (two IHVPs per JᵀJ product)."""
    problem = ctx.problem
    if problem.outer_residuals is None:
        raise PinnctlError(f"outer optimizer 'gn' needs a least-squares outer objective; problem '{problem.name}' "
                           "has none (use outer.optimizer=lbfgs or adam)")
    theta, v = ctx.theta.detach(), ctx.v.detach()
    batch = problem.full_batch()
    r_fn = problem.outer_residuals
    _, vjp = torch.func.vjp(r_fn, theta, v)

    def jv(w: Tensor) -> Tensor:
        dt = -ctx.ihvp(cross_jvp(problem, theta, v, batch, w.to(v.dtype)))
        return torch.func.jvp(r_fn, (theta, v), (dt.to(theta.dtype), w.to(v.dtype)))[1].double()

    def jtv(y: Tensor) -> Tensor:
        gt, gv = vjp(y.to(theta.dtype))
        u = ctx.ihvp(gt)
        return gv.double() - cross_vjp(problem, theta, v, batch, u.to(theta.dtype)).double()

    return jv, jtv


@register("gn")
class GaussNewton(_Guarded):
    """Levenberg–Marquardt: (G + μI) d = −h, G = 2JᵀJ, by ``cg_steps`` CG steps from 0.
    μ = ``damping`` × (hᵀGh / hᵀh), the Rayleigh quotient of G along h, so that the damping
    is scale-free; ``damping`` follows Nielsen's rule (smaller after good steps, ×ν after bad)."""

    @dataclass
    class Options(GuardOptions):
        cg_steps: int = 5
        damping: float = 1e-3  # μ relative to G's scale along h
        min_damping: float = 1e-8

        def validate(self) -> None:
            GuardOptions.validate(self)
            if self.cg_steps < 1 or self.damping <= 0 or self.min_damping <= 0:
                raise PinnctlError("outer gn cg_steps must be ≥ 1 and damping, min_damping > 0")

    def __init__(self, v: Tensor, lr: float, clip: float, steps: int, opts: Any) -> None:
        super().__init__(v, lr, clip, steps, opts)
        self.damping = opts.damping

    def solve(self, ctx: OuterContext) -> tuple[Tensor, float, dict[str, float]]:
        """d, dᵀGd and diagnostics for the current point (before any trust-radius cap)."""
        jv, jtv = outer_jacobian(ctx)
        h = ctx.h.double()

        def G(w: Tensor) -> Tensor:
            return 2.0 * jtv(jv(w))

        Gh = G(h)
        scale = float(h @ Gh) / max(float(h @ h), 1e-300)
        mu = self.damping * max(scale, 1e-300)
        first = {"x": h, "Ax": Gh}

        def matvec(x: Tensor) -> Tensor:
            if first["x"] is not None and torch.equal(x, first["x"]):
                out, first["x"] = first["Ax"], None
                return out + mu * x
            return G(x) + mu * x

        # CG on (G + μI) d = h, then d → −d: CG's first product is G·h, reused from above
        res = cg(matvec, h, maxiter=self.opts.cg_steps, tol=1e-12)
        d = -res.x
        # dᵀGd from CG's own residual: (G + μI)x = h − r  ⇒  xᵀGx = xᵀh − xᵀr − μ‖x‖²
        x = res.x
        dGd = float(x @ h - x @ res.r - mu * (x @ x))
        return d, max(dGd, 0.0), {"outer_mu": mu, "outer_G_scale": scale, "outer_cg_residual": res.residual_norm}

    def step(self, v: Tensor, ctx: OuterContext) -> dict[str, float]:
        d, dGd, info = self.solve(ctx)
        n = float(d.norm())
        if n > self.radius:
            c = self.radius / n
            d, dGd = d * c, dGd * c * c
        self._start(v, ctx, d, float(ctx.h.double() @ d), dGd)
        return {**info, "outer_radius": self.radius, "outer_step_norm": float(d.norm()), "outer_damping": self.damping,
                "outer_predicted": self._predicted(1.0)}

    def _accepted(self, rho: float, s: float) -> None:
        super()._accepted(rho, s)
        self.damping = max(self.damping * min(2.0, max(1 / 3, 1 - (2 * min(rho, 1.0) - 1) ** 3)), self.opts.min_damping)

    def _rejected_once(self) -> None:  # the halved retry already shortens the step; μ grows once per rejection
        self.damping *= 2.0

    def state_dict(self) -> dict[str, Any]:
        return {**self._guard_state(), "damping": self.damping}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._load_guard(state)
        self.damping = float(state["damping"])
