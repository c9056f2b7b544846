"""Networks as specs plus pure functional forwards on flat parameter vectors.

Why flat vectors: every hypergradient method works with θ and v as vectors
(Hessian-vector products, Woodbury, CG), and a hand-written MLP forward on a flat
vector is vmappable, cheap, and lets us propagate derivative channels (Taylor mode)
for PDE residuals without nested autograd.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from torch import Tensor

from . import PinnctlError

def _tanh(a: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    t = torch.tanh(a)
    d1 = 1 - t * t
    return t, d1, -2 * t * d1


def _sin(a: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    s = torch.sin(a)
    return s, torch.cos(a), -s


def _sigmoid(a: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    s = torch.sigmoid(a)
    d1 = s * (1 - s)
    return s, d1, d1 * (1 - 2 * s)


def _softplus(a: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    s = torch.sigmoid(a)
    return torch.nn.functional.softplus(a), s, s * (1 - s)


# name -> a ↦ (σ(a), σ'(a), σ''(a)), evaluated together so Taylor mode pays for one σ.
ACTIVATIONS: dict[str, Callable[[Tensor], tuple[Tensor, Tensor, Tensor]]] = {
    "tanh": _tanh,
    "sin": _sin,
    "sigmoid": _sigmoid,
    "softplus": _softplus,
}
PLAIN_ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "tanh": torch.tanh,
    "sin": torch.sin,
    "sigmoid": torch.sigmoid,
    "softplus": torch.nn.functional.softplus,
}


def _xavier_normal(fan_out: int, fan_in: int, g: torch.Generator) -> Tensor:
    std = math.sqrt(2.0 / (fan_in + fan_out))
    return torch.randn(fan_out, fan_in, generator=g, device=g.device) * std


def _xavier_uniform(fan_out: int, fan_in: int, g: torch.Generator) -> Tensor:
    bound = math.sqrt(6.0 / (fan_in + fan_out))
    return (torch.rand(fan_out, fan_in, generator=g, device=g.device) * 2 - 1) * bound


def _torch_default(fan_out: int, fan_in: int, g: torch.Generator) -> Tensor:
    bound = 1.0 / math.sqrt(fan_in)
    return (torch.rand(fan_out, fan_in, generator=g, device=g.device) * 2 - 1) * bound


INITS: dict[str, Callable[[int, int, torch.Generator], Tensor]] = {
    "xavier_normal": _xavier_normal,
    "xavier_uniform": _xavier_uniform,
    "torch_default": _torch_default,
}


def _known(kind: str, name: str, registry: dict) -> None:
    if name not in registry:
        raise PinnctlError(f"unknown {kind} '{name}'; known: {', '.join(sorted(registry))}")


@dataclass(frozen=True)
class MLP:
    """A fully connected net spec: widths [in, hidden..., out], one activation, a named init.

    Biases start at zero. Parameters live in one flat vector ordered layer by layer as
    (W₁ row-major, b₁, W₂, b₂, ...), see :func:`unflatten`.
    """

    widths: Sequence[int]
    activation: str = "tanh"
    init: str = "xavier_normal"

    def __post_init__(self) -> None:
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        if len(self.widths) < 2 or min(self.widths) < 1:
            raise PinnctlError(f"MLP widths must list ≥ 2 positive sizes, got {list(self.widths)}")
        _known("activation", self.activation, ACTIVATIONS)
        _known("init", self.init, INITS)

    @property
    def n_in(self) -> int:
        return self.widths[0]

    @property
    def n_out(self) -> int:
        return self.widths[-1]

    @property
    def shapes(self) -> list[tuple[int, int]]:
        """(out, in) of each linear layer."""
        return [(o, i) for i, o in zip(self.widths[:-1], self.widths[1:])]

    @property
    def n_params(self) -> int:
        return sum(o * i + o for o, i in self.shapes)

    def init_params(self, seed: int, device: torch.device | str = "cpu") -> Tensor:
        """A float32 flat parameter vector drawn with a private generator (no global RNG use).

        Drawn on the CPU and then moved, so a seed gives the same θ₀ on every device."""
        g = torch.Generator().manual_seed(int(seed))
        pieces = []
        for o, i in self.shapes:
            pieces.append(INITS[self.init](o, i, g).reshape(-1))
            pieces.append(torch.zeros(o, device=g.device))
        return torch.cat(pieces).to(device=device, dtype=torch.float32)

    def forward(self, params: Tensor, x: Tensor) -> Tensor:
        """Plain forward: x (N, in) -> (N, out)."""
        act = PLAIN_ACTIVATIONS[self.activation]
        layers = unflatten(self, params)
        h = x
        for k, (W, b) in enumerate(layers):
            h = h @ W.T + b
            if k < len(layers) - 1:
                h = act(h)
        return h


def unflatten(spec: MLP, params: Tensor) -> list[tuple[Tensor, Tensor]]:
    """Views (W, b) per layer into the flat vector (no copies, gradients flow)."""
    if params.numel() != spec.n_params:
        raise PinnctlError(f"parameter vector has {params.numel()} entries, the net needs {spec.n_params}")
    out, k = [], 0
    for o, i in spec.shapes:
        W = params[k : k + o * i].view(o, i)
        k += o * i
        b = params[k : k + o]
        k += o
        out.append((W, b))
    return out


Pair = tuple[int, int]


@dataclass(frozen=True)
class Channels:
    """Which derivative channels a Taylor-mode forward carries.

    Channel 0 is the value; then one first derivative per axis in ``first``; then one
    second derivative ∂²/∂x_i∂x_j per pair (i, j) in ``second`` (an int i means the
    diagonal (i, i)). Both axes of a pair must be in ``first``, since σ''·∂_i z·∂_j z needs
    them; they are added when missing.
    """

    first: tuple[int, ...] = ()
    second: tuple[Pair, ...] = ()

    def __post_init__(self) -> None:
        pairs = {_pair(p) for p in self.second}
        object.__setattr__(self, "second", tuple(sorted(pairs)))
        object.__setattr__(self, "first", tuple(sorted(set(self.first) | {a for p in pairs for a in p})))

    @property
    def count(self) -> int:
        return 1 + len(self.first) + len(self.second)

    def first_index(self, axis: int) -> int:
        return 1 + self.first.index(axis)

    def second_index(self, axis: int | Pair) -> int:
        return 1 + len(self.first) + self.second.index(_pair(axis))


def _pair(p: int | Sequence[int]) -> Pair:
    if isinstance(p, int):
        return (p, p)
    i, j = (int(a) for a in p)
    return (min(i, j), max(i, j))


@dataclass
class Jet:
    """Output of a Taylor-mode forward: ``z`` has shape (C, N, out) with channels as in ``channels``.

    ``layer_inputs`` / ``layer_outputs`` are filled when recording (for K-FAC): per linear
    layer, the input channels with a bias column appended (C, N, in+1) and the
    pre-bias outputs (C·N, out), channel-major, that gradients can be taken against.
    """

    z: Tensor
    channels: Channels
    layer_inputs: list[Tensor] = field(default_factory=list)
    layer_outputs: list[Tensor] = field(default_factory=list)

    @property
    def value(self) -> Tensor:
        return self.z[0]

    def first(self, axis: int) -> Tensor:
        if axis not in self.channels.first:
            raise PinnctlError(f"derivative along axis {axis} was not propagated (carried: {self.channels.first})")
        return self.z[self.channels.first_index(axis)]

    def second(self, axis: int | Pair) -> Tensor:
        if _pair(axis) not in self.channels.second:
            raise PinnctlError(f"second derivative {_pair(axis)} was not propagated (carried: {self.channels.second})")
        return self.z[self.channels.second_index(axis)]


def jet_forward(spec: MLP, params: Tensor, x: Tensor, channels: Channels, record: bool = False) -> Jet:
    """Forward pass carrying value, first and (mixed) second derivatives w.r.t. inputs.

    Linear layers act on every channel with the same weights (bias on the value channel
    only); activations follow the chain rule: σ(a), σ'(a)·∂a, σ''(a)·∂_i a·∂_j a + σ'(a)·∂_ij a.
    Channels are kept as separate tensors joined only for the shared matmul: slicing one
    stacked tensor would make every backward fill full-size zero buffers (2× slower).
    Built without in-place writes so torch.func transforms (jacrev, jvp, vmap) apply.
    """
    act = ACTIVATIONS[spec.activation]
    n, d = x.shape
    C, nf = channels.count, len(channels.first)
    eye = torch.eye(d, dtype=x.dtype, device=x.device)
    chans = [x] + [eye[axis].expand(n, d) for axis in channels.first] + [x.new_zeros(n, d)] * len(channels.second)
    # first-derivative channels feeding each second one
    src = [(channels.first.index(i), channels.first.index(j)) for i, j in channels.second]
    jet = Jet(z=x, channels=channels)
    layers = unflatten(spec, params)
    bias_col = torch.cat([x.new_ones(n, 1), x.new_zeros((C - 1) * n, 1)])
    for k, (W, b) in enumerate(layers):
        stacked = torch.cat(chans) if C > 1 else chans[0]
        if record:
            jet.layer_inputs.append(torch.cat([stacked, bias_col], dim=1).detach().view(C, n, -1))
        a = stacked @ W.T
        if record:
            jet.layer_outputs.append(a)
        outs = list(a.split(n)) if C > 1 else [a]
        outs[0] = outs[0] + b
        if k == len(layers) - 1:
            chans = outs
            break
        s0, s1, s2 = act(outs[0])
        firsts = outs[1 : 1 + nf]
        chans = [s0] + [s1 * f for f in firsts] + [
            s2 * (firsts[i] ** 2 if i == j else firsts[i] * firsts[j]) + s1 * sec for (i, j), sec in zip(src, outs[1 + nf :])
        ]
    jet.z = torch.stack(chans)
    return jet
