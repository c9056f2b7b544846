"""What a problem file declares: controls (and their profiles), objectives, and :class:`PDEProblem`.

The conditions live in :mod:`pinnctl.pde.conditions`; ``pinnctl.problem`` re-exports both, so a
problem file needs one import line. Nothing here builds tensors: :func:`pinnctl.pde.compile.compile_problem`
does that on a device and dtype.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from .. import PinnctlError
from ..nets import MLP
from .conditions import CONTROL, Condition, ControlRef, Initial


# ----------------------------------------------------------------------------- profiles


@dataclass(frozen=True)
class PiecewiseLinear:
    """Maps a vector to a function of one coordinate: entries are nodal values at ``len(v)``
    equispaced nodes on [lo, hi] along column ``axis`` of the points (e.g. an inlet profile)."""

    axis: int
    lo: float
    hi: float

    def check(self, size: int) -> None:
        if size < 2:
            raise PinnctlError(f"PiecewiseLinear needs at least 2 nodal values; the control has {size}")

    def __call__(self, v: Tensor, x: Tensor) -> Tensor:
        s = (x[:, self.axis] - self.lo) / (self.hi - self.lo) * (v.numel() - 1)
        nodes = torch.arange(v.numel(), dtype=x.dtype, device=x.device)
        hats = torch.clamp(1 - (s[:, None] - nodes[None, :]).abs(), min=0.0)  # (N, n): vmap-safe, linear in v
        return hats @ v.to(x.dtype)


@dataclass(frozen=True)
class Basis:
    """Maps a vector to Σ_i v_i φ_i(x): one callable per entry, each (N, d) -> (N,)."""

    functions: tuple[Callable[[Tensor], Tensor], ...]

    def __init__(self, functions: Sequence[Callable[[Tensor], Tensor]]) -> None:
        object.__setattr__(self, "functions", tuple(functions))

    def check(self, size: int) -> None:
        if len(self.functions) != size:
            raise PinnctlError(f"Basis has {len(self.functions)} functions but the control has {size} entries")

    def __call__(self, v: Tensor, x: Tensor) -> Tensor:
        phi = torch.stack([fn(x).reshape(-1).to(x.dtype) for fn in self.functions], dim=1)
        return phi @ v.to(x.dtype)


Profile = Union[PiecewiseLinear, Basis]


# ----------------------------------------------------------------------------- controls


@dataclass(frozen=True)
class _NetControl:
    net: MLP

    @property
    def size(self) -> int:
        return self.net.n_params

    def init(self, seed: int) -> Tensor:
        return self.net.init_params(seed)

    def constant(self, value: float) -> Tensor:
        """Parameters that make f ≡ value (zero weights, last bias = value)."""
        v = torch.zeros(self.net.n_params, device="cpu")  # moved with θ₀ by compile_problem
        v[-self.net.n_out :] = float(value)
        return v

    def vector(self, v: Tensor) -> Tensor:
        """What penalties and ControlVector references see: the net's parameters."""
        return v


@dataclass(frozen=True)
class TimeControl(_NetControl):
    """Control f_v(t): a small net of time only (the paper's heat2d control)."""

    inputs: str = "time"

    def __post_init__(self) -> None:
        if self.net.n_in != 1:
            raise PinnctlError(f"TimeControl net must take 1 input (t), got {self.net.n_in}")

    def values(self, v: Tensor, x: Tensor) -> Tensor:
        return self.net.forward(v, x[:, -1:].to(v.dtype)).reshape(-1)


@dataclass(frozen=True)
class FieldControl(_NetControl):
    """Control f_v(x, t): a net of all space-time inputs (distributed space-time control), or
    of space only with ``inputs="space"`` (an initial-value control g_v(x), a steady source)."""

    inputs: str = "space-time"

    def __post_init__(self) -> None:
        if self.inputs not in ("space-time", "space"):
            raise PinnctlError(f"FieldControl inputs must be 'space-time' or 'space', got '{self.inputs}'")

    def values(self, v: Tensor, x: Tensor) -> Tensor:
        inp = x[:, : self.net.n_in] if self.inputs == "space" else x
        return self.net.forward(v, inp.to(v.dtype)).reshape(-1)


@dataclass(frozen=True)
class VectorControl:
    """A plain parameter vector v.

    Without a profile an Interior residual receives v itself as ``f`` (a few scalar
    parameters). With ``profile=`` (:class:`PiecewiseLinear`, :class:`Basis`) v becomes a
    function of the points, so it can be the value of any condition (``value=CONTROL``).
    ``bounds=(lo, hi)`` keeps every entry inside the box by the reparametrisation
    lo + (hi − lo)·sigmoid(w): the optimiser moves w, the problem sees the bounded values, and
    ``init`` is given in bounded values.
    """

    size: int
    init_value: float = 0.0
    profile: Profile | None = None
    bounds: tuple[float, float] | None = None
    inputs: str = "none"

    def __init__(self, size: int, init: float = 0.0, profile: Profile | None = None,
                 bounds: tuple[float, float] | None = None) -> None:
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            raise PinnctlError(f"VectorControl size must be a positive integer; got {size!r}")
        object.__setattr__(self, "size", size)
        object.__setattr__(self, "init_value", float(init))
        object.__setattr__(self, "profile", profile)
        object.__setattr__(self, "inputs", "none")
        if bounds is not None:
            lo, hi = (float(b) for b in bounds)
            if not lo < hi:
                raise PinnctlError(f"VectorControl bounds need lo < hi; got {bounds!r}")
            if not lo < float(init) < hi:
                raise PinnctlError(f"VectorControl init {init} must lie strictly inside bounds ({lo}, {hi})")
            bounds = (lo, hi)
        object.__setattr__(self, "bounds", bounds)
        if profile is not None:
            profile.check(size)

    def _raw(self, value: float) -> float:
        if self.bounds is None:
            return value
        lo, hi = self.bounds
        s = (value - lo) / (hi - lo)
        return math.log(s / (1 - s))

    def init(self, seed: int) -> Tensor:
        return torch.full((self.size,), self._raw(self.init_value), device="cpu")  # moved by compile_problem

    def constant(self, value: float) -> Tensor:
        return torch.full((self.size,), self._raw(float(value)), device="cpu")

    def vector(self, v: Tensor) -> Tensor:
        """The bounded entries the problem sees."""
        if self.bounds is None:
            return v
        lo, hi = self.bounds
        return lo + (hi - lo) * torch.sigmoid(v)

    def values(self, v: Tensor, x: Tensor) -> Tensor:
        w = self.vector(v)
        return w if self.profile is None else self.profile(w, x)


Control = Union[TimeControl, FieldControl, VectorControl]


def control_params(control: Control, seed: int) -> Tensor:
    return control.init(seed)


def constant_control(control: Control | Mapping[str, Control], value: float) -> Tensor:
    """Control parameters (the flat v, for named controls) that make every control ≡ value."""
    if isinstance(control, Mapping):
        return torch.cat([c.constant(value) for c in control.values()])
    return control.constant(value)


def control_values(control: Control, v: Tensor, x: Tensor) -> Tensor:
    """f evaluated at the points x (N, d[+1]) -> (N,), or the vector itself for a VectorControl without profile."""
    return control.values(v, x)


# ----------------------------------------------------------------------------- objectives


@dataclass(frozen=True)
class Grid:
    """Tensor grid over space and time with boundaries included (e.g. BPN's 11×11×201)."""

    shape: tuple[int, ...]

    def __init__(self, *shape: int) -> None:
        object.__setattr__(self, "shape", tuple(int(s) for s in shape))


@dataclass(frozen=True)
class Points:
    """Explicit evaluation points (N, d[+1])."""

    x: np.ndarray


@dataclass(frozen=True)
class Part:
    """Objective points on a boundary part (``where`` as for Boundary: a face name, a list, a
    predicate), n_per_side Sobol points per face × time, drawn once with ``seed``."""

    where: Any = None
    n_per_side: int = 64
    seed: int = 0


@dataclass(frozen=True)
class Tracking:
    """Outer objective: mean over the points of (q − target)², q = the state output ``output``
    (or ``of(x, u, ops)``, e.g. a flux ``lambda x, u, ops: ops.dx(u, x, 0)``), plus
    α·mean f² (``control_weight``)."""

    target: Callable[[Tensor], Tensor]
    points: Union[Grid, Points, Part]
    control_weight: float = 0.0
    output: str | None = None
    of: Callable[..., Tensor] | None = None


@dataclass(frozen=True)
class Functional:
    """General outer objective: fn(x, u, f) -> scalar, with u (Fields for a system) and f on the points."""

    fn: Callable[[Tensor, Any, Any], Tensor]
    points: Union[Grid, Points, Part]


Objective = Union[Tracking, Functional]


# ----------------------------------------------------------------------------- penalties


def relu_penalty(weight: float, *, lo: float | None = None, hi: float | None = None,
                 mean_lo: float | None = None, mean_hi: float | None = None) -> Callable[[Tensor], Tensor]:
    """weight·Σ relu(lo − v)² + relu(v − hi)² (+ the same on mean v): soft box and mean constraints
    as in the Broyden paper's Navier–Stokes script."""

    def penalty(v: Tensor) -> Tensor:
        terms = v.new_zeros(())
        m = v.mean()
        for val, bound, sign in ((v, lo, -1), (v, hi, 1), (m, mean_lo, -1), (m, mean_hi, 1)):
            if bound is not None:
                terms = terms + (torch.relu(sign * (val - bound)) ** 2).sum()
        return weight * terms

    return penalty


def tikhonov(weight: float, *, rate: float = 0.0) -> Callable[[Tensor], Tensor]:
    """weight·mean v² + rate·mean (Δv)²: a cost on the control and on its differences (its time
    derivative for nodal values in time)."""

    def penalty(v: Tensor) -> Tensor:
        out = weight * (v**2).mean()
        if rate and v.numel() > 1:
            out = out + rate * ((v[1:] - v[:-1]) ** 2).mean()
        return out

    return penalty


# ----------------------------------------------------------------------------- the problem


@dataclass
class PDEProblem:
    """A PDE-constrained control problem as a problem file states it.

    ``control`` is one control, or a mapping name -> control (one flat v, in that order);
    ``outputs`` names the state net's outputs (default ("u",)). ``reference`` is the name of a
    bundled module in ``pinnctl.reference``, a module, or an object implementing
    :class:`pinnctl.pde.reference.Reference`. ``params`` are the physical parameters (the
    keyword arguments of the file's ``make``). ``penalties`` map names to functions of the
    (bounded) control vector added to the objective, e.g. :func:`relu_penalty`, :func:`tikhonov`.
    ``defaults`` / ``preset_defaults`` / ``method_defaults`` are config settings of the problem's own
    (e.g. a paper's budgets), applied over the preset and under the user's ``--set``.
    """

    name: str
    domain: Any
    time: tuple[float, float] | None
    conditions: Mapping[str, Condition]
    state: MLP
    control: Control | Mapping[str, Control]
    objective: Objective
    reference: Any = None
    description: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    outputs: tuple[str, ...] | None = None
    penalties: Mapping[str, Callable[[Tensor], Tensor]] = field(default_factory=dict)
    defaults: dict[str, Any] = field(default_factory=dict)  # dotted config keys: the problem's own setup
    preset_defaults: dict[str, dict[str, Any]] = field(default_factory=dict)  # per preset (budgets)
    method_defaults: dict[str, dict[str, Any]] = field(default_factory=dict)  # per method: its options

    def config_defaults(self, preset: str, method: str) -> dict[str, Any]:
        """What ``solve`` puts between the preset and the user's settings (as a ClassificationProblem does)."""
        out = {**self.defaults, **self.preset_defaults.get(preset, {})}
        out.update({f"method.options.{k}": v for k, v in self.method_defaults.get(method, {}).items()})
        return out

    def __post_init__(self) -> None:
        where = f"problem '{self.name}'"
        if not self.conditions:
            raise PinnctlError(f"{where} has no conditions")
        n_in = self.domain.dim + (1 if self.time is not None else 0)
        if self.state.n_in != n_in:
            raise PinnctlError(f"{where}: state net takes {self.state.n_in} inputs, the domain has {n_in} (space dims + time)")
        if self.outputs is None:
            if self.state.n_out != 1:
                raise PinnctlError(f"{where}: the state net has {self.state.n_out} outputs; name them with outputs=(...)")
            self.outputs = ("u",)
        self.outputs = tuple(self.outputs)
        if len(self.outputs) != self.state.n_out or len(set(self.outputs)) != len(self.outputs):
            raise PinnctlError(f"{where}: outputs {self.outputs} must be {self.state.n_out} distinct names (one per state net output)")
        for cname, cond in self.conditions.items():
            if not hasattr(cond, "points") or not hasattr(cond, "residual"):
                raise PinnctlError(f"{where}: condition '{cname}' is a {type(cond).__name__}, not a condition "
                                   "(Interior, Boundary, Neumann, Robin, Initial, Data)")
            if isinstance(cond, Initial) and self.time is None:
                raise PinnctlError(f"{where}: condition '{cname}' is Initial but the problem has no time")
            ref = cond.source()
            if ref is not None and ref.name is not None and ref.name not in self.controls:
                raise PinnctlError(f"{where}: condition '{cname}' uses control '{ref.name}'; controls: {', '.join(self.controls)}")
            out = getattr(cond, "output", None)
            if out is not None and out not in self.outputs:
                raise PinnctlError(f"{where}: condition '{cname}' is on output '{out}'; outputs: {', '.join(self.outputs)}")

    @property
    def controls(self) -> dict[str, Control]:
        """Named controls in the order of the flat v (a single control is named "control")."""
        return dict(self.control) if isinstance(self.control, Mapping) else {"control": self.control}

    @property
    def time_axis(self) -> int | None:
        return self.domain.dim if self.time is not None else None


__all__ = ["CONTROL", "ControlRef"]
