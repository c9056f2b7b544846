"""The Reference protocol: what a classical solver gives a run.

A reference is an object (bundled ones are built by ``pinnctl.reference.<name>.reference(**params)``;
a problem file may define its own class and pass an instance as ``PDEProblem(reference=...)``):

- ``measures``: names of the objective measures it computes, e.g. ("grid", "continuum");
- ``certified``: the measure runs report as "certified J" (default: the first measure);
- ``control``: the representation ``certify`` needs, one of :class:`TimeSamples` (the control
  sampled at given times), :class:`FieldSamples` (its values at given points) or
  :class:`ControlVector` (the vector itself);
- ``certify(control) -> {measure: J}``: the exact objective of a control in that representation;
- optional (the base class answers None / a plain line): ``optimum(measure) -> Optimum``,
  ``state(control, points) -> u`` at (N, d[+1]) points, ``report() -> str``.

Subclassing :class:`Reference` gives the optional members; :func:`as_reference` is the one place
that checks an object against the protocol.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Callable, Union

import numpy as np

from .. import PinnctlError


@dataclass(frozen=True)
class Optimum:
    """J* on a measure and, when the optimal control is a curve, its samples (t, f) for plots
    and comparisons; ``t`` is time for time controls, space for an initial-value control."""

    measure: str
    J: float
    t: np.ndarray | None = None
    f: np.ndarray | None = None

    def control(self) -> Callable[[np.ndarray], np.ndarray]:
        return lambda tt: np.interp(np.asarray(tt, dtype=np.float64), self.t, self.f)


@dataclass(frozen=True)
class TimeSamples:
    """certify receives (t, f(t)): the control sampled at these times (also what run files store)."""

    t: np.ndarray
    control: str | None = None  # which named control (None: the only one)


@dataclass(frozen=True)
class FieldSamples:
    """certify receives f at these (N, d[+1]) points, shape (N,)."""

    points: np.ndarray
    control: str | None = None


@dataclass(frozen=True)
class ControlVector:
    """certify receives the control's vector (bounded values for a bounded VectorControl); ``size``
    is checked at compile when given. With control=None and several controls, the flat v."""

    size: int | None = None
    control: str | None = None


Representation = Union[TimeSamples, FieldSamples, ControlVector]


class Reference:
    """Base class of references: override ``certify``, set ``measures`` and ``control``."""

    measures: tuple[str, ...] = ()
    certified: str | None = None
    control: Representation | None = None

    def certify(self, control: Any) -> dict[str, float]:
        raise NotImplementedError

    def optimum(self, measure: str | None = None) -> Optimum | None:
        return None

    def state(self, control: Any, points: np.ndarray) -> np.ndarray | None:
        return None

    def report(self) -> str:
        return f"{type(self).__name__}: measures {', '.join(self.measures)}"


def as_reference(spec: Any, params: dict[str, Any], where: str = "problem") -> Reference | None:
    """The Reference for ``PDEProblem.reference``: None, a bundled module's name, a module with
    ``reference(**params)``, or a Reference object (used as it is)."""
    if spec is None:
        return None
    if isinstance(spec, str):
        try:
            spec = importlib.import_module(f"pinnctl.reference.{spec}")
        except ModuleNotFoundError as e:
            raise PinnctlError(f"{where}: reference solver '{spec}' not found (looked for pinnctl.reference.{spec}): {e}") from None
    if isinstance(spec, ModuleType):
        factory = getattr(spec, "reference", None)
        if not callable(factory):
            raise PinnctlError(f"{where}: reference module {spec.__name__} defines no reference(**params) factory")
        spec = factory(**params)
    missing = [a for a in ("measures", "control", "certify") if getattr(spec, a, None) is None]
    if missing:
        raise PinnctlError(f"{where}: reference {type(spec).__name__} lacks {', '.join(missing)} (see pinnctl.pde.reference.Reference)")
    if not isinstance(spec.control, (TimeSamples, FieldSamples, ControlVector)):
        raise PinnctlError(f"{where}: reference control representation must be TimeSamples, FieldSamples or ControlVector; "
                           f"got {type(spec.control).__name__}")
    measures = tuple(spec.measures)
    if not measures or not all(isinstance(m, str) for m in measures):
        raise PinnctlError(f"{where}: reference measures must be a non-empty tuple of names; got {spec.measures!r}")
    certified = getattr(spec, "certified", None) or measures[0]
    if certified not in measures:
        raise PinnctlError(f"{where}: reference certified measure '{certified}' is not one of its measures {measures}")
    if not isinstance(spec, Reference):
        spec = _Adapted(spec)
    spec.certified = certified
    return spec


class _Adapted(Reference):
    """A duck-typed reference object, given the protocol's optional members."""

    def __init__(self, obj: Any) -> None:
        self.obj = obj
        self.measures, self.control = tuple(obj.measures), obj.control

    def certify(self, control: Any) -> dict[str, float]:
        return self.obj.certify(control)

    def optimum(self, measure: str | None = None) -> Optimum | None:
        fn = getattr(self.obj, "optimum", None)
        return None if fn is None else fn(measure)

    def state(self, control: Any, points: np.ndarray) -> np.ndarray | None:
        fn = getattr(self.obj, "state", None)
        return None if fn is None else fn(control, points)

    def report(self) -> str:
        fn = getattr(self.obj, "report", None)
        return super().report() if fn is None else fn()


def load_reference(name: str) -> ModuleType:
    """A bundled reference module by name (its module-level functions take the params as keywords)."""
    try:
        return importlib.import_module(f"pinnctl.reference.{name}")
    except ModuleNotFoundError as e:
        raise PinnctlError(f"reference solver '{name}' not found (looked for pinnctl.reference.{name}): {e}") from None


class Bound(Reference):
    """A reference made of module-level functions that take the problem's params as keywords
    (how the bundled solvers are written): the params are bound once here."""

    def __init__(self, *, measures: tuple[str, ...], control: Representation, params: dict[str, Any],
                 certify: Callable[..., dict[str, float]], optimum: Callable[..., Optimum] | None = None,
                 state: Callable[..., np.ndarray] | None = None, report: Callable[..., str] | None = None,
                 certified: str | None = None) -> None:
        self.measures, self.control, self.params, self.certified = tuple(measures), control, dict(params), certified
        self._certify, self._optimum, self._state, self._report = certify, optimum, state, report

    def certify(self, control: Any) -> dict[str, float]:
        return self._certify(control, **self.params)

    def optimum(self, measure: str | None = None) -> Optimum | None:
        return None if self._optimum is None else self._optimum(**self.params, measure=measure or self.certified or self.measures[0])

    def state(self, control: Any, points: np.ndarray) -> np.ndarray | None:
        return None if self._state is None else self._state(control, points, **self.params)

    def report(self) -> str:
        return super().report() if self._report is None else self._report(**self.params)


def reference_of(problem: Any) -> Reference | None:
    """The Reference of a PDEProblem (None when it has none)."""
    return as_reference(getattr(problem, "reference", None), dict(getattr(problem, "params", {})), f"problem '{problem.name}'")
