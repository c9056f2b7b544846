"""The outer/inner loop of Algorithm 1 over a generic BilevelProblem.

Per outer step k: T inner steps on θ (warm-started, optimiser state kept), each step's
already-computed quantities handed to the estimator (``collect`` then ``observe``); at
the end the estimator returns the hypergradient and the outer optimiser steps v.
Inner-training time and curvature time are measured separately so that the cost of the
curvature worker is visible (and, in parallel mode, hidden).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor

from . import PinnctlError, RunError
from .config import InnerCfg, OuterCfg, PretrainCfg
from .hypergrad.base import Estimator, StepInfo
from .natgrad import gauss_newton_polish
from .core import BilevelProblem
from .outer import Factorisation, Outer, OuterContext, check_ihvp, ihvp_solver, make_outer

# A loss this many times its first value is called divergence, not slow progress.
EXPLODE_FACTOR = 1e8

def _natural(kind: str) -> Callable[..., Any]:
    def make(params: list[Tensor], lr: float, damping: float = 1e-3) -> Any:
        from .natgrad import DenseGaussNewton, NaturalGradient

        return {"kfac": NaturalGradient, "engd": DenseGaussNewton}[kind](params, lr, damping)

    return make


OPTIMIZERS: dict[str, Callable[..., Any]] = {
    "adam": lambda params, lr, damping=0.0: torch.optim.Adam(params, lr=lr),
    "sgd": lambda params, lr, damping=0.0: torch.optim.SGD(params, lr=lr),
    "kfac": _natural("kfac"),  # natural gradient with K-FAC for PINNs (pinnctl.natgrad)
    "engd": _natural("engd"),  # natural gradient with the dense Gauss–Newton (small nets)
}


def make_optimizer(name: str, param: Tensor, lr: float, damping: float = 1e-3) -> Any:
    if name not in OPTIMIZERS:
        raise PinnctlError(f"unknown optimizer '{name}'; known: {', '.join(sorted(OPTIMIZERS))}")
    return OPTIMIZERS[name]([param], lr, damping)


class DivergenceError(RunError):
    """The inner or outer loss became NaN/Inf or exploded."""


def check_finite(value: float, what: str, reference: float | None = None) -> None:
    if not math.isfinite(value):
        raise DivergenceError(f"{what} is {value}; the run diverged (lower the learning rate or check the problem)")
    if reference is not None and reference > 0 and value > EXPLODE_FACTOR * reference:
        raise DivergenceError(f"{what} = {value:.3e} exploded (> {EXPLODE_FACTOR:.0e} × its first value {reference:.3e})")


@dataclass
class InnerState:
    """θ as a leaf tensor plus its optimiser (kept across outer steps: warm start)."""

    theta: Tensor
    optimizer: Any  # a torch optimizer, or a natural-gradient one (pinnctl.natgrad)
    step: int = 0
    first_loss: float | None = None

    @classmethod
    def create(cls, theta0: Tensor, cfg: InnerCfg | PretrainCfg, optimizer: str = "adam") -> "InnerState":
        theta = theta0.detach().clone().requires_grad_(True)
        return cls(theta, make_optimizer(optimizer, theta, cfg.lr))


def project_ball(theta: Tensor, radius: float) -> None:
    """The paper's projection onto ‖θ‖ ≤ radius (no-op for radius ≤ 0)."""
    if radius > 0:
        with torch.no_grad():
            norm = theta.norm()
            if norm > radius:
                theta.mul_(radius / norm)


def inner_step(problem: BilevelProblem, state: InnerState, v: Tensor, radius: float = 0.0) -> StepInfo:
    batch = problem.sample(state.step)
    state.optimizer.zero_grad(set_to_none=True)
    loss = problem.inner_loss(state.theta, v, batch)
    (grad,) = torch.autograd.grad(loss, state.theta)
    value = float(loss.detach())
    if state.first_loss is None:
        state.first_loss = value
    check_finite(value, f"inner loss at inner step {state.step}", state.first_loss)
    extras: dict[str, Any] = {}
    if hasattr(state.optimizer, "natural_step"):  # natural gradient: needs the problem, returns its curvature
        extras = state.optimizer.natural_step(problem, state.theta, v, batch, grad.detach(), value)
    else:
        state.theta.grad = grad
        state.optimizer.step()
    project_ball(state.theta, radius)
    info = StepInfo(step=state.step, theta=state.theta.detach().clone(), v=v, batch=batch, loss=value, grad=grad.detach(),
                    extras=extras)
    state.step += 1
    return info


def train_state(problem: BilevelProblem, state: InnerState, v: Tensor, steps: int,
                progress: Callable[[int, float], None] | None = None) -> float:
    """Plain inner training (pretraining, forward solves): returns the last loss."""
    loss = float("nan")
    for k in range(steps):
        loss = inner_step(problem, state, v).loss
        if progress is not None:
            progress(k, loss)
    return loss


@dataclass
class OuterRecord:
    step: int
    outer_loss: float
    certified: dict[str, float]
    inner_terms: dict[str, float]
    hypergrad_norm: float
    inner_time: float
    curvature_time: float
    hypergrad_time: float
    wall_time: float
    info: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    outer_time: float = 0.0  # the outer optimiser's step (gn: its CG); a timing, so not in ``info``


@dataclass
class RunResult:
    theta: Tensor
    v: Tensor
    history: list[OuterRecord]
    pretrain_time: float


def _terms(problem: BilevelProblem, theta: Tensor, v: Tensor, step: int) -> dict[str, float]:
    with torch.no_grad():
        return {k: float(x) for k, x in problem.inner_terms(theta.detach(), v, problem.sample(step)).items()}


def snapshot(k: int, v: Tensor, outer_opt: Outer, state: InnerState, estimator: Estimator,
             elapsed: float, pretrain_time: float, factors: Factorisation | None = None) -> dict[str, Any]:
    """Everything needed to continue after ``k`` completed outer steps (deep copies: the
    optimisers update their state tensors in place)."""
    import copy

    import numpy as np

    np_state = np.random.get_state()
    return {
        "outer_step": k,
        "v": v.detach().clone(),
        "outer_optimizer": copy.deepcopy(outer_opt.state_dict()),
        "theta": state.theta.detach().clone(),
        "inner_optimizer": copy.deepcopy(state.optimizer.state_dict()),
        "inner_step": state.step,
        "inner_first_loss": state.first_loss,
        "estimator": copy.deepcopy(estimator.state_dict()),
        "elapsed": elapsed,
        "pretrain_time": pretrain_time,
        "factors": None if factors is None else factors.state(),  # the anchor of the shared Woodbury factorisation
        "rng": {"torch": torch.get_rng_state(), "numpy": [np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]]},
    }


def _restore_rng(rng: dict[str, Any]) -> None:
    import numpy as np

    torch.set_rng_state(rng["torch"])
    name, key, *rest = rng["numpy"]
    np.random.set_state((name, key.numpy(), *rest))


def run(problem: BilevelProblem, estimator: Estimator, *, pretrain: PretrainCfg, inner: InnerCfg, outer: OuterCfg,
        certify_every: int = 1, callback: Callable[[OuterRecord], None] | None = None,
        pretrain_progress: Callable[[int, float], None] | None = None,
        resume: dict[str, Any] | None = None, checkpoint: Callable[[dict[str, Any]], None] | None = None,
        checkpoint_every: int = 0, metrics_every: int = 1, metrics_tail: int = 0) -> RunResult:
    """Algorithm 1. ``callback`` receives one record per outer step (logging, run files).

    ``checkpoint`` receives a snapshot (see ``snapshot``) after pretraining, every
    ``checkpoint_every`` outer steps, after the last one, and, when the run is interrupted
    (Ctrl-C), diverges or loses its curvature worker, the snapshot of the last completed step, which is still good.
    ``resume`` is such a snapshot: the run continues from it to the same numbers as an
    uninterrupted run (the returned history then holds only the new steps).
    ``problem.metrics`` is evaluated every ``metrics_every`` outer steps, at the first and the
    last, and at each of the last ``metrics_tail`` (the records in between carry no metrics).
    """
    v = problem.v0.detach().clone().requires_grad_(True)
    outer_opt = make_outer(outer.optimizer, v, outer.lr, outer.clip, outer.steps, outer.options)
    check_ihvp(outer.ihvp, outer.ihvp_damping, inner.polish)
    factors = Factorisation(outer.ihvp_damping) if outer.ihvp == "woodbury" else None
    if factors is not None and hasattr(estimator, "share_factorisation"):  # exact solver=woodbury: one factorisation
        estimator.share_factorisation(factors)
    if resume is None:
        start = time.perf_counter()
        state = InnerState.create(problem.theta0, pretrain)
        train_state(problem, state, v.detach(), pretrain.steps, pretrain_progress)
        pretrain_time = time.perf_counter() - start
        state.optimizer = make_optimizer(inner.optimizer, state.theta, inner.lr, inner.damping)
        first = 0
    else:
        from .devices import to_device

        # checkpoints load onto the CPU; the run's state goes back where the problem lives (the RNG states stay)
        resume = {**to_device({k: x for k, x in resume.items() if k != "rng"}, problem.theta0.device), "rng": resume["rng"]}
        with torch.no_grad():
            v.copy_(resume["v"])
        outer_opt.load_state_dict(resume["outer_optimizer"])
        theta = resume["theta"].detach().clone().requires_grad_(True)
        state = InnerState(theta, make_optimizer(inner.optimizer, theta, inner.lr, inner.damping))
        state.optimizer.load_state_dict(resume["inner_optimizer"])
        state.step, state.first_loss = int(resume["inner_step"]), resume["inner_first_loss"]
        estimator.load_state_dict(resume["estimator"])
        if factors is not None:
            factors.load(resume.get("factors"))
        _restore_rng(resume["rng"])
        pretrain_time, first = float(resume["pretrain_time"]), int(resume["outer_step"])
        start = time.perf_counter() - float(resume["elapsed"])

    def keep(k: int, elapsed: float) -> dict[str, Any] | None:
        """The snapshot after k outer steps, only when there is somewhere to save it (it
        deep-copies the optimiser states and, in parallel mode, asks the worker)."""
        return snapshot(k, v, outer_opt, state, estimator, elapsed, pretrain_time, factors) if checkpoint is not None else None

    last_good = keep(first, time.perf_counter() - start)
    if checkpoint is not None and resume is None:
        checkpoint(last_good)
    history: list[OuterRecord] = []
    try:
        for k in range(first, outer.steps):
            evaluate = k == 0 or (k + 1) % metrics_every == 0 or k >= outer.steps - max(metrics_tail, 1)
            record = _outer_step(problem, estimator, state, v, outer_opt, k, inner, outer, certify_every, start,
                                 factors, evaluate)
            history.append(record)
            if callback is not None:
                callback(record)
            last_good = keep(k + 1, record.wall_time)
            if checkpoint is not None and ((checkpoint_every > 0 and (k + 1) % checkpoint_every == 0) or k == outer.steps - 1):
                checkpoint(last_good)
    except (KeyboardInterrupt, PinnctlError):  # divergence, a dead curvature worker, ...
        if checkpoint is not None:
            checkpoint(last_good)
        raise
    return RunResult(theta=state.theta.detach(), v=v.detach(), history=history, pretrain_time=pretrain_time)


def _outer_step(problem: BilevelProblem, estimator: Estimator, state: InnerState, v: Tensor,
                outer_opt: Outer, k: int, inner: InnerCfg, outer: OuterCfg, certify_every: int,
                start: float, factors: Factorisation | None = None, evaluate: bool = True) -> OuterRecord:
    """T inner steps feeding the estimator, the hypergradient, one outer step, the record.

    A guarded outer optimiser (lbfgs, gn) first judges its last trial by the PINN's outer
    loss after the inner loop; a rejected trial ends the step there (no hypergradient is
    computed: ``hypergrad_norm`` is recorded as 0 and ``info['outer_rejected']`` as 1).
    With ``inner.polish`` the inner loop starts (after v moved) with Gauss–Newton steps on θ through
    ``factors``, the Woodbury factorisation the last gn step used. Not at the end of the loop: the gn
    step's IHVP must be factored at the θ its cross products are taken at (a stale factorisation
    amplifies the part of Lᵀw outside its rows' span by 1/λ; measured: G's scale 10⁵× too large)."""
    t_inner = t_curv = 0.0
    v_fixed = v.detach().clone()
    losses: list[float] = []
    polish_info: dict[str, float] = {}
    if inner.polish > 0 and factors is not None and factors.theta is not None:
        t0 = time.perf_counter()
        polish_info = gauss_newton_polish(problem, state.theta, v_fixed, factors.inverse(problem), inner.polish)
        t_inner += time.perf_counter() - t0
    for _ in range(inner_budget(inner, k)):
        t0 = time.perf_counter()
        info = inner_step(problem, state, v_fixed, inner.radius)
        t1 = time.perf_counter()
        estimator.observe(estimator.collect(problem, info))
        t_inner += t1 - t0
        t_curv += time.perf_counter() - t1
        losses.append(info.loss)
        if settled(losses, inner.settle, inner.settle_window):
            break
    t0 = time.perf_counter()
    if getattr(outer_opt, "trial", None) is not None:
        with torch.no_grad():
            f_trial = float(problem.outer_loss(state.theta.detach(), v_fixed))
        if not outer_opt.check(f_trial, v, state):
            return _record(problem, state, v, v_fixed, k, outer, certify_every, start, f_trial, 0.0,
                           t_inner, t_curv, time.perf_counter() - t0,
                           {"outer_rejected": 1.0, "inner_steps": float(len(losses)), **polish_info}, evaluate=evaluate)
    result = estimator.hypergradient(problem, state.theta.detach(), v_fixed, state.step)
    if result.theta_step is not None:  # a method that also moves θ (nbo/nsbo: the shared Newton step)
        with torch.no_grad():
            state.theta.add_(result.theta_step.to(state.theta.dtype))
        project_ball(state.theta, inner.radius)
    t_hyper = time.perf_counter() - t0
    h, outer_loss = result.h, result.outer_loss
    hnorm = float(h.norm())
    check_finite(hnorm, f"hypergradient norm at outer step {k}")
    check_finite(outer_loss, f"outer loss at outer step {k}")
    t0 = time.perf_counter()
    if factors is not None:  # this step's factorisation (built on first use: a rejected trial never pays)
        factors.reset(state.theta, v_fixed)
    ihvp = ihvp_solver(problem, estimator, state.theta.detach(), v_fixed, state.step, outer.ihvp_steps, outer.ihvp,
                       outer.ihvp_damping, factors)
    ctx = OuterContext(problem, state, v_fixed, h.detach(), outer_loss, ihvp, predict=outer.predict)
    hinfo = dict(result.diagnostics)
    hinfo.update(outer_opt.step(v, ctx))
    if problem.project_v is not None:
        with torch.no_grad():
            problem.project_v(v)
    t_outer = time.perf_counter() - t0
    hinfo["inner_steps"] = float(len(losses))
    hinfo.update(polish_info)
    return _record(problem, state, v, v_fixed, k, outer, certify_every, start, outer_loss, hnorm, t_inner, t_curv,
                   t_hyper, hinfo, t_outer, evaluate)


def settled(losses: list[float], tol: float, window: int) -> bool:
    """The adaptive inner stop: the mean of the last ``window`` losses is within ``tol``
    (relative) of the mean of the ``window`` before (Adam's losses oscillate; means do not)."""
    if tol <= 0 or len(losses) < 2 * window:
        return False
    last, before = sum(losses[-window:]) / window, sum(losses[-2 * window : -window]) / window
    return abs(before - last) <= tol * abs(before)


def inner_budget(inner: InnerCfg, k: int) -> int:
    """Inner steps of outer step k: ``steps``, or ``warm_steps`` once the first outer step has
    warm-started θ (0 = always ``steps``)."""
    return inner.warm_steps if inner.warm_steps > 0 and k > 0 else inner.steps


def _record(problem: BilevelProblem, state: InnerState, v: Tensor, v_fixed: Tensor, k: int, outer: OuterCfg,
            certify_every: int, start: float, outer_loss: float, hnorm: float, t_inner: float, t_curv: float,
            t_hyper: float, info: dict[str, Any], t_outer: float = 0.0, evaluate: bool = True) -> OuterRecord:
    certified = {}
    if problem.certify is not None and certify_every > 0 and ((k + 1) % certify_every == 0 or k == outer.steps - 1):
        certified = problem.certify(v.detach())
    metrics = problem.metrics(state.theta.detach(), v.detach()) if problem.metrics is not None and evaluate else {}
    return OuterRecord(
        step=k,
        outer_loss=outer_loss,
        certified=certified,
        inner_terms=_terms(problem, state.theta, v_fixed, state.step - 1),
        hypergrad_norm=hnorm,
        inner_time=t_inner,
        curvature_time=t_curv,
        hypergrad_time=t_hyper,
        wall_time=time.perf_counter() - start,
        info=info,
        metrics=metrics,
        outer_time=t_outer,
    )
