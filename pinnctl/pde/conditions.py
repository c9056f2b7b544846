"""Conditions: each owns its points and its residual (DeepXDE's ``collocation_points``/``error``).

The protocol the compiler relies on, and nothing else (no type dispatch):

- ``points(domain, time, seed, scheme) -> (N, d + k)``: the point set; columns beyond the
  space-time coordinates are condition data that travel with the batch (outward normals for
  Neumann/Robin, observed values for Data);
- ``residual(at) -> (N,) | {component: (N,)}``: the residual at those points, from :class:`At`
  (coordinates, extra columns, state outputs, control values, ``ops``);
- ``source() -> ControlRef | None``: which control's values the residual receives as ``at.f``;
- ``weight``: the term is weight·mean(r²).

A new condition type is one class with these four members; the compiler does not change.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Mapping, Protocol, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from .. import PinnctlError
from .taylor import Fields, JetOps


@dataclass(frozen=True)
class ControlRef:
    """``value=CONTROL`` (the problem's only control) or ``ControlRef("inlet")`` (a named one).

    ``CONTROL * w`` with a function w(x) -> (N,) is the control's values times w at the points
    (an inlet profile θ(y)·4y(1−y)): the product stays a reference, so compile still knows the source."""

    name: str | None = None
    scale: Callable[[Tensor], Tensor] | None = None

    def __mul__(self, other: Callable[[Tensor], Tensor]) -> "ControlRef":
        if not callable(other) or isinstance(other, ControlRef):
            raise PinnctlError(f"CONTROL * w needs a function w(x) -> (N,) of the points; got {type(other).__name__}")
        if self.scale is None:
            return ControlRef(self.name, other)
        first = self.scale
        return ControlRef(self.name, lambda x: first(x) * other(x))

    __rmul__ = __mul__


CONTROL = ControlRef()

Value = Union[float, Callable[[Tensor], Tensor], ControlRef]
Where = Union[None, str, Sequence[str], Callable[[np.ndarray], np.ndarray]]


@dataclass
class At:
    """What a condition's residual sees at its N points."""

    x: Tensor  # space-time coordinates (N, d[+1]), time last
    extra: Tensor  # the condition's own columns from points() (N, k)
    u: Tensor | Fields  # the state: (N,) for one output, Fields for a system
    f: Any  # values of the condition's control at x (see Condition.source), or None
    ops: JetOps
    control: str | None = None  # the name of that control, for messages

    def output(self, name: str | None) -> Tensor:
        return self.ops.output(name)

    def value(self, value: Value) -> Tensor:
        """A condition's data at the points: a number, a function of x, or the control's values."""
        n = self.x.shape[0]
        if isinstance(value, ControlRef):
            f = self.f
            if isinstance(f, Fields):
                raise PinnctlError(f"value=CONTROL is ambiguous with controls {', '.join(f)}; name one: ControlRef('{next(iter(f))}')")
            if not isinstance(f, Tensor) or f.dim() != 1 or f.shape[0] != n:
                got = f.numel() if isinstance(f, Tensor) else type(f).__name__
                raise PinnctlError(f"control '{self.control}' gives {got} values for {n} points; a VectorControl needs "
                                   "profile= (PiecewiseLinear or Basis) to map its entries onto a condition's points")
            return f if value.scale is None else f * self.value(value.scale)
        if callable(value):
            out = value(self.x)
            if not isinstance(out, Tensor) or out.numel() != n:
                shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
                raise PinnctlError(f"value function returned {shape} for {n} points; return one value per point")
            return out.reshape(-1).to(self.x.dtype)
        return self.x.new_full((n,), float(value))


class Condition(Protocol):
    weight: float

    def points(self, domain: Any, time: tuple[float, float] | None, seed: int, scheme: str) -> np.ndarray: ...

    def residual(self, at: At) -> Tensor | Mapping[str, Tensor]: ...

    def source(self) -> ControlRef | None: ...


def _value_source(value: Value) -> ControlRef | None:
    return value if isinstance(value, ControlRef) else None


# ----------------------------------------------------------------------------- interior and initial


@dataclass(frozen=True)
class Interior:
    """PDE residual on interior space-time points: equation(x, u, f, ops) -> (N,) or {name: (N,)}.

    ``f`` is the values of ``control`` at x (default: the only control; with several named
    controls and control=None, Fields of all of them). A dict of components makes one inner-loss
    term per component, named "<condition>.<component>".
    """

    equation: Callable[..., Any]
    n: int = 1024
    weight: float = 1.0
    control: ControlRef | None = CONTROL

    def points(self, domain, time, seed, scheme):
        from ..geometry import interior_points

        return interior_points(domain, time, self.n, seed=seed, scheme=scheme)

    def residual(self, at: At):
        return self.equation(at.x, at.u, at.f, at.ops)

    def source(self) -> ControlRef | None:
        return self.control


@dataclass(frozen=True)
class Initial:
    """Initial condition (output) u(x, t0) = value."""

    value: Value = 0.0
    n: int = 256
    weight: float = 1.0
    output: str | None = None

    def points(self, domain, time, seed, scheme):
        from ..geometry import initial_points

        return initial_points(domain, time, self.n, seed=seed, scheme=scheme)

    def residual(self, at: At):
        return at.output(self.output) - at.value(self.value)

    def source(self) -> ControlRef | None:
        return _value_source(self.value)


# ----------------------------------------------------------------------------- boundary parts


def boundary_samples(domain: Any, time: Any, where: Where, n_per_side: int, seed: int, scheme: str,
                     normals: bool) -> np.ndarray:
    """Points on the part ``where`` of ∂domain × time, with outward normals appended when asked.

    ``where``: None (the whole boundary), a face name ("x=lo") or a list of them (Box only), or a
    predicate on the (N, d[+1]) points keeping the rows where it is true. On a Box, n_per_side
    points per face; on a deepxde domain, n_per_side points in all (before a predicate).
    """
    from ..geometry import Box, boundary_points, face_index, face_points

    if not (where is None or callable(where)) and not isinstance(domain, Box):
        face_index(domain, where if isinstance(where, str) else list(where)[0])  # raises: face names need a Box
    if isinstance(domain, Box) and not callable(where):
        names = [] if where is None else [where] if isinstance(where, str) else list(where)
        faces = [face_index(domain, w) for w in names] if names else list(range(2 * domain.dim))
        x, nrm = face_points(domain, time, n_per_side, faces, seed=seed, scheme=scheme)
    else:
        x = boundary_points(domain, time, n_per_side, seed=seed, scheme=scheme)
        space = x[:, : domain.dim]
        nrm = (_box_normals(domain, space) if isinstance(domain, Box) else domain.normals(space)) if normals else None
    if callable(where):
        keep = np.asarray(where(x), dtype=bool).reshape(-1)
        if keep.shape[0] != x.shape[0]:
            raise PinnctlError(f"where= predicate returned {keep.shape[0]} flags for {x.shape[0]} points")
        if not keep.any():
            raise PinnctlError("where= predicate selects none of the boundary points")
        x, nrm = x[keep], (nrm[keep] if nrm is not None else None)
    return np.hstack([x, nrm]) if normals else x


def _box_normals(domain: Any, x: np.ndarray) -> np.ndarray:
    """Outward normal of the face each point lies on (the first such axis at a corner)."""
    lo, hi = np.array(domain.lo), np.array(domain.hi)
    tol = (hi - lo) * 1e-12
    side = np.where(np.abs(x - lo) <= tol, -1.0, np.where(np.abs(x - hi) <= tol, 1.0, 0.0))
    first = np.argmax(side != 0, axis=1)
    nrm = np.zeros_like(x)
    nrm[np.arange(len(x)), first] = side[np.arange(len(x)), first]
    return nrm


@dataclass(frozen=True)
class _BoundaryPart:
    """What every boundary condition shares: data ``value`` on the part ``where`` (default: all
    of it) of one output, sampled per face; ``uses_normals`` says whether the points carry the
    outward normals their residual needs."""

    value: Value = 0.0
    n_per_side: int = 256
    weight: float = 1.0
    where: Where = None
    output: str | None = None

    uses_normals: ClassVar[bool] = False

    def points(self, domain, time, seed, scheme):
        return boundary_samples(domain, time, self.where, self.n_per_side, seed, scheme, normals=self.uses_normals)

    def source(self) -> ControlRef | None:
        return _value_source(self.value)


@dataclass(frozen=True)
class Boundary(_BoundaryPart):
    """Dirichlet condition (output) u = value on the boundary part ``where`` (default: all of it)."""

    def residual(self, at: At):
        return at.output(self.output) - at.value(self.value)


def normal_derivative(at: At, output: str | None) -> Tensor:
    """∂u/∂n = ∇u · n with the outward normals the points carry in their extra columns."""
    u = at.output(output)
    return (at.ops.grad(u, at.x) * at.extra).sum(dim=1)


@dataclass(frozen=True)
class Neumann(_BoundaryPart):
    """Neumann condition ∂u/∂n = value on the boundary part ``where`` (outward normal n)."""

    uses_normals: ClassVar[bool] = True

    def residual(self, at: At):
        return normal_derivative(at, self.output) - at.value(self.value)


@dataclass(frozen=True)
class Robin(_BoundaryPart):
    """Robin condition a·u + b·∂u/∂n = value on the boundary part ``where``."""

    a: float = 1.0
    b: float = 1.0

    uses_normals: ClassVar[bool] = True

    def residual(self, at: At):
        u = at.output(self.output)
        return self.a * u + self.b * normal_derivative(at, self.output) - at.value(self.value)


@dataclass(frozen=True)
class BoundaryEquation:
    """A residual equation(x, u, f, ops, n) -> (N,) or {name: (N,)} on the boundary part ``where``,
    with n the outward normals (N, d): conditions that couple outputs, such as the traction-free
    outflow −p + ν ∂u/∂n = 0 of Navier–Stokes, which Neumann/Robin (one output each) cannot state."""

    equation: Callable[..., Any]
    where: Where = None
    n_per_side: int = 256
    weight: float = 1.0
    control: ControlRef | None = None

    def points(self, domain, time, seed, scheme):
        return boundary_samples(domain, time, self.where, self.n_per_side, seed, scheme, normals=True)

    def residual(self, at: At):
        return self.equation(at.x, at.u, at.f, at.ops, at.extra)

    def source(self) -> ControlRef | None:
        return self.control


# ----------------------------------------------------------------------------- observations


@dataclass(frozen=True)
class Data:
    """Observations: (output) u(x_i) = values_i at given points x (N, d[+1]); the values travel
    with the batch as an extra column, so they live on the compile device."""

    x: Any
    values: Any
    weight: float = 1.0
    output: str | None = None

    def points(self, domain, time, seed, scheme):
        x = np.asarray(self.x, dtype=np.float64)
        y = np.asarray(self.values, dtype=np.float64).reshape(-1)
        n_in = domain.dim + (time is not None)
        if x.ndim != 2 or x.shape[1] != n_in:
            raise PinnctlError(f"Data points must have shape (N, {n_in}); got {x.shape}")
        if y.shape[0] != x.shape[0]:
            raise PinnctlError(f"Data has {x.shape[0]} points but {y.shape[0]} values")
        return np.hstack([x, y[:, None]])

    def residual(self, at: At):
        return at.output(self.output) - at.extra[:, 0]

    def source(self) -> ControlRef | None:
        return None
