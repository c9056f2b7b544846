"""What a problem file builds (`PDEProblem`) and what methods see (`BilevelProblem`).

A problem file states the PDE the way a paper does: a domain, a time interval, named
conditions with plain residual functions, a state net, a control and an objective.
`compile_problem` turns that into closures over flat parameter vectors θ (state) and
v (control): inner loss, outer loss, samplers, and the least-squares structure that
Gauss–Newton and K-FAC curvature need. Hypergradient methods only ever see the
`BilevelProblem`, so the same loop also runs non-PDE (classification) problems.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from . import PinnctlError
from .core import Batch, BilevelProblem
from .nets import MLP, Channels, Jet, jet_forward

Value = Union[float, Callable[[Tensor], Tensor]]


# ----------------------------------------------------------------------------- conditions


@dataclass(frozen=True)
class Interior:
    """PDE residual on interior space-time points: residual(x, u, f, ops) -> (N,)."""

    residual: Callable[..., Tensor]
    n: int = 1024
    weight: float = 1.0


# ``value=CONTROL`` makes a Boundary/Initial condition's data the control itself:
# initial-value or boundary control, u = f_v on those points.
CONTROL = "control"


@dataclass(frozen=True)
class Boundary:
    """Dirichlet condition u = value on the spatial boundary (n_per_side points per face)."""

    value: Value = 0.0
    n_per_side: int = 256
    weight: float = 1.0


@dataclass(frozen=True)
class Initial:
    """Initial condition u(x, t0) = value."""

    value: Value = 0.0
    n: int = 256
    weight: float = 1.0


Condition = Union[Interior, Boundary, Initial]


# ----------------------------------------------------------------------------- controls


@dataclass(frozen=True)
class TimeControl:
    """Control f_v(t): a small net of time only (the paper's heat2d control)."""

    net: MLP

    inputs: str = "time"

    def __post_init__(self) -> None:
        if self.net.n_in != 1:
            raise PinnctlError(f"TimeControl net must take 1 input (t), got {self.net.n_in}")


@dataclass(frozen=True)
class FieldControl:
    """Control f_v(x, t): a net of all space-time inputs (distributed space-time control), or
    of space only with ``inputs="space"`` (an initial-value control g_v(x), a steady source)."""

    net: MLP
    inputs: str = "space-time"

    def __post_init__(self) -> None:
        if self.inputs not in ("space-time", "space"):
            raise PinnctlError(f"FieldControl inputs must be 'space-time' or 'space', got '{self.inputs}'")


@dataclass(frozen=True)
class VectorControl:
    """A plain parameter vector v; the residual receives v itself as ``f``."""

    size: int
    init: float = 0.0
    inputs: str = "none"


Control = Union[TimeControl, FieldControl, VectorControl]


def control_params(control: Control, seed: int) -> Tensor:
    if isinstance(control, VectorControl):
        return torch.full((control.size,), float(control.init))
    return control.net.init_params(seed)


def constant_control(control: Control, value: float) -> Tensor:
    """Control parameters that make f ≡ value (zero weights, last bias = value)."""
    if isinstance(control, VectorControl):
        return torch.full((control.size,), float(value))
    v = torch.zeros(control.net.n_params)
    v[-control.net.n_out :] = float(value)
    return v


def control_values(control: Control, v: Tensor, x: Tensor) -> Tensor:
    """f evaluated at the space-time points x (N, d+1) -> (N,), or v itself for VectorControl."""
    if isinstance(control, VectorControl):
        return v
    inp = x[:, -1:] if control.inputs == "time" else x[:, : control.net.n_in] if control.inputs == "space" else x
    return control.net.forward(v, inp.to(v.dtype)).reshape(-1)


# ----------------------------------------------------------------------------- objectives


@dataclass(frozen=True)
class Grid:
    """Tensor grid over space and time with boundaries included (e.g. BPN's 11×11×201)."""

    shape: tuple[int, ...]

    def __init__(self, *shape: int) -> None:
        object.__setattr__(self, "shape", tuple(int(s) for s in shape))


@dataclass(frozen=True)
class Points:
    """Explicit evaluation points (N, d+1)."""

    x: np.ndarray


@dataclass(frozen=True)
class Tracking:
    """Outer objective: mean over the points of (u_θ − target)², plus optional α·mean f²."""

    target: Callable[[Tensor], Tensor]
    points: Union[Grid, Points]
    control_weight: float = 0.0


@dataclass(frozen=True)
class Functional:
    """General outer objective: fn(x, u, f) -> scalar, with u and f evaluated on the points."""

    fn: Callable[[Tensor, Tensor, Tensor], Tensor]
    points: Union[Grid, Points]


Objective = Union[Tracking, Functional]


# ----------------------------------------------------------------------------- the problem


@dataclass
class PDEProblem:
    """A PDE-constrained control problem as a problem file states it.

    ``reference`` names a module in ``pinnctl.reference`` (e.g. "heat2d") whose
    ``certify(control, **params)`` gives the exact objective of a control.
    ``params`` are the problem's physical parameters (e.g. ``{"nu": 0.001}``); they are
    the keyword arguments of the problem file's ``make`` function when it has one.
    """

    name: str
    domain: Any
    time: tuple[float, float] | None
    conditions: Mapping[str, Condition]
    state: MLP
    control: Control
    objective: Objective
    reference: str | None = None
    description: str = ""
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.conditions:
            raise PinnctlError(f"problem '{self.name}' has no conditions")
        n_in = self.domain.dim + (1 if self.time is not None else 0)
        if self.state.n_in != n_in:
            raise PinnctlError(
                f"problem '{self.name}': state net takes {self.state.n_in} inputs, "
                f"the domain has {n_in} (space dims + time)"
            )
        for cname, cond in self.conditions.items():
            if isinstance(cond, Initial) and self.time is None:
                raise PinnctlError(f"problem '{self.name}': condition '{cname}' is Initial but the problem has no time")

    @property
    def time_axis(self) -> int | None:
        return self.domain.dim if self.time is not None else None


# ----------------------------------------------------------------------------- jet ops


class JetOps:
    """The ``ops`` a residual sees when the state is evaluated in Taylor mode.

    Same calls as :class:`pinnctl.ops.AutogradOps` (dt, dx, grad, laplacian), answered
    from the derivative channels the forward pass carried.
    """

    def __init__(self, jet: Jet, time_axis: int | None, space_dims: int) -> None:
        self.jet, self.time_axis, self.space_dims = jet, time_axis, space_dims

    def _require_time(self) -> int:
        if self.time_axis is None:
            raise PinnctlError("ops.dt used in a problem without time")
        return self.time_axis

    def dt(self, u: Tensor, x: Tensor) -> Tensor:
        return self.jet.first(self._require_time())[:, 0]

    def dx(self, u: Tensor, x: Tensor, axis: int, order: int = 1) -> Tensor:
        if order == 1:
            return self.jet.first(axis)[:, 0]
        if order == 2:
            return self.jet.second(axis)[:, 0]
        raise PinnctlError("Taylor-mode ops carry derivatives up to order 2")

    def grad(self, u: Tensor, x: Tensor, space_only: bool = True) -> Tensor:
        axes = range(self.space_dims) if space_only else range(x.shape[1])
        return torch.stack([self.jet.first(a)[:, 0] for a in axes], dim=1)

    def laplacian(self, u: Tensor, x: Tensor, space: Sequence[int] | None = None) -> Tensor:
        axes = range(self.space_dims) if space is None else space
        return sum(self.jet.second(a)[:, 0] for a in axes)


class _ChannelRecorder:
    """Runs a residual once on dummies to learn which derivative channels it reads."""

    def __init__(self, time_axis: int | None, space_dims: int) -> None:
        self.time_axis, self.space_dims = time_axis, space_dims
        self.first: set[int] = set()
        self.second: set[int] = set()

    def dt(self, u: Tensor, x: Tensor) -> Tensor:
        if self.time_axis is None:
            raise PinnctlError("ops.dt used in a problem without time")
        self.first.add(self.time_axis)
        return torch.zeros_like(u)

    def dx(self, u: Tensor, x: Tensor, axis: int, order: int = 1) -> Tensor:
        (self.first if order == 1 else self.second).add(axis)
        return torch.zeros_like(u)

    def grad(self, u: Tensor, x: Tensor, space_only: bool = True) -> Tensor:
        axes = list(range(self.space_dims if space_only else x.shape[1]))
        self.first.update(axes)
        return torch.zeros(u.shape[0], len(axes))

    def laplacian(self, u: Tensor, x: Tensor, space: Sequence[int] | None = None) -> Tensor:
        self.second.update(range(self.space_dims) if space is None else space)
        return torch.zeros_like(u)


def residual_channels(residual: Callable[..., Tensor], n_in: int, time_axis: int | None, space_dims: int) -> Channels:
    rec = _ChannelRecorder(time_axis, space_dims)
    x = torch.full((4, n_in), 0.5)
    residual(x, torch.zeros(4), torch.zeros(4), rec)
    return Channels(first=tuple(rec.first), second=tuple(rec.second))


# ----------------------------------------------------------------------------- compile


def _value_at(value: Value, x: Tensor) -> Tensor:
    if callable(value):
        return value(x).reshape(-1).to(x.dtype)
    return torch.full((x.shape[0],), float(value), dtype=x.dtype)


def sample_conditions(problem: PDEProblem, seed: int, scheme: str = "scipy") -> dict[str, np.ndarray]:
    """One point set per named condition, seeds derived per condition so sets are independent."""
    from .geometry import boundary_points, initial_points, interior_points

    out = {}
    for k, (cname, cond) in enumerate(problem.conditions.items()):
        s = seed * 1009 + k
        if isinstance(cond, Interior):
            out[cname] = interior_points(problem.domain, problem.time, cond.n, seed=s, scheme=scheme)
        elif isinstance(cond, Boundary):
            out[cname] = boundary_points(problem.domain, problem.time, cond.n_per_side, seed=s, scheme=scheme)
        elif isinstance(cond, Initial):
            out[cname] = initial_points(problem.domain, problem.time, cond.n, seed=s, scheme=scheme)
        else:
            raise PinnctlError(f"condition '{cname}' has unknown type {type(cond).__name__}")
    return out


def objective_points(problem: PDEProblem) -> np.ndarray:
    from .geometry import grid_points

    pts = problem.objective.points
    if isinstance(pts, Grid):
        return grid_points(problem.domain, problem.time, pts.shape)
    return np.asarray(pts.x, dtype=np.float64)


@dataclass(frozen=True)
class SamplingConfig:
    """How inner batches are drawn: a fixed Sobol set (BPN) or a fresh set every inner step."""

    seed: int = 0
    scheme: str = "scipy"
    resample: bool = False


def compile_problem(problem: PDEProblem, sampling: SamplingConfig = SamplingConfig(), seed: int = 0) -> BilevelProblem:
    """Closures over flat θ, v for the loop and the hypergradient methods."""
    time_axis = problem.time_axis
    space_dims = problem.domain.dim
    n_in = problem.state.n_in
    channels = {
        cname: (
            residual_channels(cond.residual, n_in, time_axis, space_dims)
            if isinstance(cond, Interior)
            else Channels()
        )
        for cname, cond in problem.conditions.items()
    }

    def to_batch(points: dict[str, np.ndarray]) -> Batch:
        return {k: torch.as_tensor(p, dtype=torch.float32) for k, p in points.items()}

    fixed = to_batch(sample_conditions(problem, sampling.seed, sampling.scheme))

    def sample(step: int) -> Batch:
        if not sampling.resample:
            return fixed
        return to_batch(sample_conditions(problem, sampling.seed + 1 + step, sampling.scheme))

    def condition_residual(cname: str, theta: Tensor, v: Tensor, x: Tensor, record: bool = False) -> tuple[Tensor, Jet]:
        cond = problem.conditions[cname]
        x = x.to(theta.dtype)
        jet = jet_forward(problem.state, theta, x, channels[cname], record=record)
        u = jet.value[:, 0]
        if isinstance(cond, Interior):
            f = control_values(problem.control, v, x)
            r = cond.residual(x, u, f, JetOps(jet, time_axis, space_dims))
        elif isinstance(cond.value, str) and cond.value == CONTROL:
            r = u - control_values(problem.control, v, x)
        else:
            r = u - _value_at(cond.value, x)
        return r.reshape(-1), jet

    def residuals(theta: Tensor, v: Tensor, batch: Batch) -> dict[str, tuple[Tensor, float]]:
        return {
            cname: (condition_residual(cname, theta, v, x)[0], float(problem.conditions[cname].weight))
            for cname, x in batch.items()
        }

    def jacobian_rows(theta: Tensor, v: Tensor, batch: Batch) -> Tensor:
        """Per-sample residual gradients by vmap over points: cost ~ one batched backward,
        where jacrev of the whole batch would cost one backward per row."""
        blocks = []
        for cname, x in batch.items():
            def single(t: Tensor, xi: Tensor, cname: str = cname) -> Tensor:
                return condition_residual(cname, t, v, xi[None])[0][0]

            J = torch.func.vmap(torch.func.jacrev(single), in_dims=(None, 0))(theta.detach(), x.to(theta.dtype))
            blocks.append(J * math.sqrt(2.0 * problem.conditions[cname].weight / x.shape[0]))
        return torch.cat(blocks).detach()

    def inner_terms(theta: Tensor, v: Tensor, batch: Batch) -> dict[str, Tensor]:
        return {cname: w * (r**2).mean() for cname, (r, w) in residuals(theta, v, batch).items()}

    def kfac_factors(theta: Tensor, v: Tensor, batch: Batch) -> list[tuple[Tensor, Tensor]]:
        return pde_kfac_factors(problem, condition_residual, theta, v, batch)

    obj_x = torch.as_tensor(objective_points(problem), dtype=torch.float32)
    objective = problem.objective
    target = objective.target(obj_x).reshape(-1) if isinstance(objective, Tracking) else None

    def outer_loss(theta: Tensor, v: Tensor) -> Tensor:
        x = obj_x.to(theta.dtype)
        u = problem.state.forward(theta, x)[:, 0]
        if isinstance(objective, Tracking):
            loss = ((u - target.to(u.dtype)) ** 2).mean()
            if objective.control_weight:
                loss = loss + objective.control_weight * (control_values(problem.control, v, x) ** 2).mean()
            return loss
        return objective.fn(x, u, control_values(problem.control, v, x))

    outer_residuals = None
    if isinstance(objective, Tracking):

        def outer_residuals(theta: Tensor, v: Tensor) -> Tensor:
            """r with ‖r‖² = outer_loss: (u − target)/√N, and √(α/N)·f when the control is penalised."""
            x = obj_x.to(theta.dtype)
            n = x.shape[0]
            r = (problem.state.forward(theta, x)[:, 0] - target.to(theta.dtype)) / math.sqrt(n)
            if objective.control_weight:
                r = torch.cat([r, math.sqrt(objective.control_weight / n) * control_values(problem.control, v, x)])
            return r

    certify = None
    control_samples = None
    if problem.time is not None and isinstance(problem.control, TimeControl):
        t_grid = np.linspace(problem.time[0], problem.time[1], 401)

        def control_samples(v: Tensor) -> tuple[np.ndarray, np.ndarray]:
            x = torch.zeros(len(t_grid), n_in, dtype=v.dtype)
            x[:, -1] = torch.as_tensor(t_grid, dtype=v.dtype)
            with torch.no_grad():
                return t_grid, control_values(problem.control, v, x).double().numpy()

    ref = load_reference(problem.reference) if problem.reference is not None else None
    if ref is not None and control_samples is not None:

        def certify(v: Tensor) -> dict[str, float]:
            return ref.certify(control_samples(v), **problem.params)

    elif ref is not None and hasattr(ref, "control_points"):
        # field controls: the reference says where it needs the control (e.g. its DST nodes)
        ref_pts = torch.as_tensor(ref.control_points(**problem.params), dtype=torch.float32)

        def certify(v: Tensor) -> dict[str, float]:
            with torch.no_grad():
                values = torch.cat([control_values(problem.control, v, chunk) for chunk in ref_pts.split(1 << 16)])
            return ref.certify(values.double().numpy(), **problem.params)

    return BilevelProblem(
        name=problem.name,
        theta0=problem.state.init_params(seed),
        v0=control_params(problem.control, seed + 1),
        inner_terms=inner_terms,
        outer_loss=outer_loss,
        sample=sample,
        full_batch=lambda: fixed,
        residuals=residuals,
        jacobian_rows=jacobian_rows,
        kfac_factors=kfac_factors,
        outer_residuals=outer_residuals,
        layer_shapes=problem.state.shapes,
        certify=certify,
        control_samples=control_samples,
        info={"params": dict(problem.params), "channels": {k: (c.first, c.second) for k, c in channels.items()}},
    )


def load_reference(name: str) -> Any:
    import importlib

    try:
        return importlib.import_module(f"pinnctl.reference.{name}")
    except ModuleNotFoundError as e:
        raise PinnctlError(f"reference solver '{name}' not found (looked for pinnctl.reference.{name}): {e}") from None


def layer_inputs_and_grads(r: Tensor, jet: Jet) -> list[tuple[Tensor, Tensor]]:
    """Per linear layer: inputs z (C, N, in+1) and g = ∂r_n/∂(output) (C, N, out).

    One backward of Σ_n r_n gives every per-sample g at once, because sample n's
    residual depends only on sample n's activations. Σ_s g_{s,n} z_{s,n}ᵀ is then the
    per-sample Jacobian ∂r_n/∂[W | b] of that layer.
    """
    grads = torch.autograd.grad(r.sum(), jet.layer_outputs)
    return [(z, g.detach().view(z.shape[0], z.shape[1], -1)) for z, g in zip(jet.layer_inputs, grads)]


def kfac_expand_factors(zg: list[tuple[Tensor, Tensor]], weight: float) -> list[tuple[Tensor, Tensor]]:
    """K-FAC expand for one term w·mean_n(r_n²): A = mean_{n,s} z zᵀ, B = (2w/N) Σ_{n,s} g gᵀ (float64)."""
    out = []
    for z, g in zg:
        S, n = z.shape[0], z.shape[1]
        zf = z.reshape(-1, z.shape[-1]).double()
        gf = g.reshape(-1, g.shape[-1]).double()
        out.append((zf.T @ zf / (n * S), (2.0 * weight / n) * (gf.T @ gf)))
    return out


def combine_kfac_terms(terms: list[list[tuple[Tensor, Tensor]]]) -> list[tuple[Tensor, Tensor]]:
    """One Kronecker product per layer for a sum of terms Σ_c A_c ⊗ B_c.

    A = Σ_c tr(B_c) A_c / Σ_c tr(B_c), B = Σ_c B_c: exact when the input factors agree
    across terms, and it keeps the Gauss–Newton scale (which the hypergradient needs).
    """
    out = []
    for pieces in zip(*terms):
        traces = torch.stack([torch.trace(B) for _, B in pieces])
        total = traces.sum()
        tw = traces / total if total > 0 else torch.full_like(traces, 1.0 / len(pieces))
        out.append((sum(w * A for w, (A, _) in zip(tw, pieces)), sum(B for _, B in pieces)))
    return out


def pde_kfac_factors(problem: PDEProblem, condition_residual, theta: Tensor, v: Tensor, batch: Batch) -> list[tuple[Tensor, Tensor]]:
    """Per-layer K-FAC factors of the Gauss–Newton matrix of Σ_c w_c·mean(r_c²).

    Each condition's Taylor-mode forward is a weight-shared net over its derivative
    channels (Dangel et al., 2024, "K-FAC expand").
    """
    terms = []
    for cname, cond in problem.conditions.items():
        r, jet = condition_residual(cname, theta, v, batch[cname], record=True)
        terms.append(kfac_expand_factors(layer_inputs_and_grads(r, jet), float(cond.weight)))
    return combine_kfac_terms(terms)
