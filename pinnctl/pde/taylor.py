"""The ``ops`` a residual sees: derivatives of the state's outputs read from Taylor-mode channels.

A residual is a plain function (DeepXDE style) calling ``ops.dt(u, x)``, ``ops.dx(u, x, axis)``,
``ops.d2(u, x, i, j)``, ``ops.grad`` and ``ops.laplacian``. The state is evaluated once per point
set by :func:`pinnctl.nets.jet_forward`, which carries exactly the channels the residual reads;
those channels are learned by running the residual once on a :class:`ChannelRecorder`. Taylor mode
differentiates the state outputs themselves, so ``u`` must be one of the tensors the residual
received (or an output name): a derived expression such as ``ops.dx(u * u, x, 0)`` is an error
rather than a silently wrong derivative.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from .. import PinnctlError
from ..nets import Channels, Jet


class Fields(dict):
    """Named state outputs of a system (``s["u"]`` or ``s.u``), each of shape (N,)."""

    def __getattr__(self, name: str) -> Tensor:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"no output '{name}'; outputs: {', '.join(self)}") from None


class JetOps:
    """Derivatives answered from the channels one Taylor-mode forward carried."""

    def __init__(self, jet: Jet | None, time_axis: int | None, space_dims: int, outputs: Sequence[str]) -> None:
        self.jet, self.time_axis, self.space_dims, self.outputs = jet, time_axis, space_dims, tuple(outputs)
        self._index: dict[int, int] = {}

    # the state as the residual receives it
    def values(self) -> Tensor:
        return self.jet.value

    def state(self) -> Tensor | Fields:
        """u (N,) for one output, else Fields by name; remembered so ops can tell which output a tensor is."""
        z = self.values()
        cols = [z[:, k] for k in range(len(self.outputs))]
        self._index = {id(c): k for k, c in enumerate(cols)}
        self._cols = cols  # keep them alive: the ids above must not be reused
        return cols[0] if len(cols) == 1 else Fields(zip(self.outputs, cols))

    def output(self, name: str | None) -> Tensor:
        """The column of one output by name (None: the only output)."""
        if name is None:
            if len(self.outputs) != 1:
                raise PinnctlError(f"the state has outputs {', '.join(self.outputs)}; name one with output=")
            return self._cols[0]
        if name not in self.outputs:
            raise PinnctlError(f"unknown output '{name}'; outputs: {', '.join(self.outputs)}")
        return self._cols[self.outputs.index(name)]

    def _col(self, u: Tensor | str) -> int:
        if isinstance(u, str):
            if u not in self.outputs:
                raise PinnctlError(f"unknown output '{u}'; outputs: {', '.join(self.outputs)}")
            return self.outputs.index(u)
        k = self._index.get(id(u))
        if k is None:
            raise PinnctlError("ops differentiate the state outputs the residual received (or an output name); "
                               "got a derived expression: apply the product/chain rule by hand (e.g. 2*u*ops.dx(u, x, 0))")
        return k

    def _first(self, axis: int) -> Tensor:
        return self.jet.first(axis)

    def _second(self, i: int, j: int) -> Tensor:
        return self.jet.second((i, j))

    def _time(self) -> int:
        if self.time_axis is None:
            raise PinnctlError("ops.dt used in a problem without time; give the problem a time interval")
        return self.time_axis

    def _space(self, space: Sequence[int] | None) -> list[int]:
        return list(range(self.space_dims)) if space is None else [int(a) for a in space]

    # the calls a residual makes (same names as pinnctl.ops.AutogradOps)
    def dt(self, u: Tensor | str, x: Tensor) -> Tensor:
        """∂u/∂t, shape (N,)."""
        return self._first(self._time())[:, self._col(u)]

    def dx(self, u: Tensor | str, x: Tensor, axis: int, order: int = 1) -> Tensor:
        """∂u/∂x_axis (order 1) or ∂²u/∂x_axis² (order 2), shape (N,)."""
        if order == 1:
            return self._first(axis)[:, self._col(u)]
        if order == 2:
            return self._second(axis, axis)[:, self._col(u)]
        raise PinnctlError("Taylor-mode ops carry derivatives up to order 2")

    def d2(self, u: Tensor | str, x: Tensor, i: int, j: int) -> Tensor:
        """Mixed second derivative ∂²u/∂x_i∂x_j, shape (N,)."""
        return self._second(i, j)[:, self._col(u)]

    def grad(self, u: Tensor | str, x: Tensor, space_only: bool = True) -> Tensor:
        """Spatial gradient (N, d_space), or the full one over every input when space_only=False."""
        k = self._col(u)
        axes = range(self.space_dims) if space_only else range(x.shape[1])
        return torch.stack([self._first(a)[:, k] for a in axes], dim=1)

    def laplacian(self, u: Tensor | str, x: Tensor, space: Sequence[int] | None = None) -> Tensor:
        """Σ ∂²u/∂x_i² over ``space`` (default: every spatial axis), shape (N,)."""
        k = self._col(u)
        return sum(self._second(a, a)[:, k] for a in self._space(space))


class ChannelRecorder(JetOps):
    """Runs a residual once on zeros to learn which derivative channels it reads."""

    def __init__(self, x: Tensor, time_axis: int | None, space_dims: int, outputs: Sequence[str]) -> None:
        super().__init__(None, time_axis, space_dims, outputs)
        self.x = x
        self.first: set[int] = set()
        self.second: set[tuple[int, int]] = set()

    def values(self) -> Tensor:
        return self.x.new_zeros(self.x.shape[0], len(self.outputs))

    def _zeros(self) -> Tensor:
        return self.x.new_zeros(self.x.shape[0], len(self.outputs))

    def _first(self, axis: int) -> Tensor:
        if not 0 <= axis < self.x.shape[1]:
            raise PinnctlError(f"derivative along axis {axis}, but points have {self.x.shape[1]} coordinates")
        self.first.add(axis)
        return self._zeros()

    def _second(self, i: int, j: int) -> Tensor:
        for a in (i, j):
            if not 0 <= a < self.x.shape[1]:
                raise PinnctlError(f"derivative along axis {a}, but points have {self.x.shape[1]} coordinates")
        self.second.add((min(i, j), max(i, j)))
        return self._zeros()

    def channels(self) -> Channels:
        return Channels(first=tuple(self.first), second=tuple(self.second))
