"""The estimator protocol and the method registry.

An estimator is fed by the inner loop at every step and asked for the hypergradient
at the end of it. The work is split in two so that it can run on another device:
``collect`` runs where the inner loop runs and returns small tensors (the message);
``observe`` folds a message into the curvature state, which may live elsewhere.
"""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from torch import Tensor

from .. import PinnctlError
from ..core import Batch, BilevelProblem

_REGISTRY: dict[str, type] = {}
# Modules that register methods on import; imported lazily by make_method/known_methods.
_METHOD_MODULES = ("nhgd", "exact", "neumann", "cg", "broyden", "stochastic", "nbo")


@dataclass
class StepInfo:
    """What one inner step already computed: the minibatch, θ_t, v, loss and g_t = ∇_θ ℓ."""

    step: int
    theta: Tensor
    v: Tensor
    batch: Batch
    loss: float
    grad: Tensor
    extras: dict[str, Any] = field(default_factory=dict)  # e.g. the natural-gradient step's K-FAC statistics


class Estimator(Protocol):
    def collect(self, problem: BilevelProblem, step: StepInfo) -> dict[str, Tensor]: ...

    def observe(self, stats: dict[str, Tensor]) -> None: ...

    def hypergradient(self, problem: BilevelProblem, theta: Tensor, v: Tensor, step: int) -> tuple[Tensor, dict[str, Any]]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def register(name: str) -> Callable[[type], type]:
    """Class decorator: the class has an ``Options`` dataclass and takes it in __init__."""

    def deco(cls: type) -> type:
        if name in _REGISTRY:
            raise PinnctlError(f"hypergradient method '{name}' registered twice")
        _REGISTRY[name] = cls
        cls.method_name = name
        return cls

    return deco


def _load_all() -> None:
    for mod in _METHOD_MODULES:
        importlib.import_module(f"{__package__}.{mod}")


def known_methods() -> list[str]:
    _load_all()
    return sorted(_REGISTRY)


def make_options(cls: type, options: dict[str, Any]) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls.Options)}
    unknown = set(options) - set(fields)
    if unknown:
        raise PinnctlError(
            f"method '{cls.method_name}' has no option(s) {', '.join(sorted(unknown))}; known: {', '.join(fields)}"
        )
    out = cls.Options(**options)
    for f in dataclasses.fields(out):
        value, default = getattr(out, f.name), f.default
        if default is not dataclasses.MISSING and default is not None and not isinstance(value, type(default)):
            if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
                setattr(out, f.name, float(value))
            else:
                raise PinnctlError(f"method option '{f.name}' expects {type(default).__name__}, got {value!r}")
    if hasattr(out, "validate"):
        out.validate()
    return out


def make_method(name: str, options: dict[str, Any] | None = None) -> Estimator:
    _load_all()
    if name not in _REGISTRY:
        raise PinnctlError(f"unknown method '{name}'; known: {', '.join(known_methods())}")
    cls = _REGISTRY[name]
    return cls(make_options(cls, options or {}))
