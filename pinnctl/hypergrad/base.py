"""The estimator protocol, the method registry and the minibatch streams.

An estimator is fed by the inner loop at every step and asked for the hypergradient
at the end of it. The work is split in two so that it can run on another device:
``collect`` runs where the inner loop runs and returns small tensors (the message);
``observe`` folds a message into the curvature state, which may live elsewhere.

Methods register themselves with ``@register(name)``; every module of this package is
imported once (pkgutil) the first time the registry is asked, so a new method is one new
file. Extra minibatches a method draws come from ``batch_id(stream, step, k)``.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from torch import Tensor

from .. import PinnctlError
from ..core import Batch, BilevelProblem, HyperResult

_REGISTRY: dict[str, type] = {}
_STREAMS: dict[int, str] = {}
_LOADED = False


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

    def hypergradient(self, problem: BilevelProblem, theta: Tensor, v: Tensor, step: int) -> HyperResult: ...

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
    """Import every module of the package once: their ``@register`` calls fill the registry."""
    global _LOADED
    if _LOADED:
        return
    package = importlib.import_module(__package__)
    for info in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{__package__}.{info.name}")
    _LOADED = True


def batch_id(stream: str, step: int, k: int = 0) -> int:
    """The ``problem.sample`` id of the k-th extra minibatch drawn at inner step ``step`` for a
    named purpose (``"nhgd.cross"``, ``"stochastic"``, ...).

    Inner-loop batches are ``sample(step)`` for step = 0, 1, ...; each stream lives in its own
    block of 2⁴⁰ ids (the block from the name's CRC), so streams never share a batch with the
    inner loop or with each other, whatever the run length.
    """
    if not 0 <= k < 1 << 12 or not 0 <= step < 1 << 28:
        raise ValueError(f"batch_id needs 0 ≤ k < 4096 and 0 ≤ step < 2²⁸, got k={k}, step={step}")
    block = 1 + zlib.crc32(stream.encode()) % ((1 << 16) - 1)
    if _STREAMS.setdefault(block, stream) != stream:
        raise ValueError(f"batch streams '{stream}' and '{_STREAMS[block]}' collide; rename one")
    return (block << 40) + (step << 12) + k


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
