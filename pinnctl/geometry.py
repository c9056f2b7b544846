"""Domains and the space-time point sets a PDE problem trains on.

Conventions: points are float64 rows; time, when the problem has a time interval, is
the LAST column. A domain is a :class:`Box` or a :class:`DeepXDEGeometry` (non-box
shapes built with deepxde, imported lazily through :func:`deepxde`).

Seeds: each point set draws from its own seed, derived from the caller's seed and a
key (kind of set, face index, space or time) by ``numpy.random.SeedSequence``. Unlike
``seed * 1000 + k`` this cannot collide across caller seeds or overflow 32 bits, so
the interior, the initial slice and every face get uncorrelated scrambles.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import math
import warnings
import os
from dataclasses import dataclass
from numbers import Integral
from types import ModuleType
from typing import Any, Iterator, Sequence, Union

import numpy as np

from . import PinnctlError
from .sampling import sobol

TimeSpan = Union[tuple[float, float], None]

# Keys of derived seeds: one per kind of point set; faces add their index, and a
# separately drawn time column adds _TIME (beyond any face index).
_INTERIOR, _BOUNDARY, _INITIAL = 0, 1, 2
_TIME = 1 << 20


def _derive(seed: int, *keys: int) -> int:
    if not isinstance(seed, Integral) or isinstance(seed, bool) or seed < 0:
        raise PinnctlError(f"seed must be a non-negative integer; got {seed!r}")
    return int(np.random.SeedSequence([int(seed), *keys]).generate_state(1)[0])


def _count(value: object, name: str) -> int:
    if not isinstance(value, Integral) or isinstance(value, bool) or value <= 0:
        raise PinnctlError(f"{name} must be a positive integer; got {value!r}")
    return int(value)


def _floats(values: Any, name: str) -> tuple[float, ...]:
    try:
        out = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise PinnctlError(f"Box {name} must be a sequence of numbers; got {values!r}") from None
    if not all(math.isfinite(v) for v in out):
        raise PinnctlError(f"Box {name} must be finite; got {values!r}")
    return out


def _points(x: Any, dim: int, what: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != dim:
        raise PinnctlError(f"{what} must have shape (n, {dim}); got {x.shape}")
    return x


@dataclass(frozen=True)
class Box:
    """Axis-aligned box [lo, hi]; lists are accepted and stored as tuples of floats."""

    lo: tuple[float, ...]
    hi: tuple[float, ...]

    def __post_init__(self) -> None:
        lo, hi = _floats(self.lo, "lo"), _floats(self.hi, "hi")
        if not lo or len(lo) != len(hi):
            raise PinnctlError(f"Box lo and hi must have the same non-zero length; got {len(lo)} and {len(hi)}")
        if any(a >= b for a, b in zip(lo, hi)):
            raise PinnctlError(f"Box needs lo < hi on every axis; got lo={lo}, hi={hi}")
        object.__setattr__(self, "lo", lo)
        object.__setattr__(self, "hi", hi)

    @property
    def dim(self) -> int:
        return len(self.lo)

    def interior(self, u: np.ndarray) -> np.ndarray:
        """Map unit-cube samples (n, dim) affinely onto the box."""
        u = _points(u, self.dim, "unit samples")
        lo, hi = np.array(self.lo), np.array(self.hi)
        return lo + u * (hi - lo)

    def boundary(self, u: np.ndarray, n_per_side: int) -> np.ndarray:
        """Map unit samples (2·dim·n_per_side, dim−1) onto the faces, n_per_side rows each.

        Faces in order axis 0 at lo, axis 0 at hi, axis 1 at lo, ...: face k fixes axis
        k // 2 at lo (k even) or hi (k odd) exactly, and its block of u fills the other
        axes in increasing order.
        """
        n = _count(n_per_side, "n_per_side")
        u = _points(u, self.dim - 1, "unit face samples")
        if u.shape[0] != 2 * self.dim * n:
            raise PinnctlError(f"need {2 * self.dim * n} face samples (2·dim·n_per_side); got {u.shape[0]}")
        lo, hi = np.array(self.lo), np.array(self.hi)
        out = np.empty((u.shape[0], self.dim))
        for face in range(2 * self.dim):
            axis, side = divmod(face, 2)
            rows = slice(face * n, (face + 1) * n)
            free = [a for a in range(self.dim) if a != axis]
            out[rows, free] = lo[free] + u[rows] * (hi - lo)[free]
            out[rows, axis] = (lo, hi)[side][axis]
        return out

    def contains(self, x: Any, atol: float = 0.0) -> np.ndarray:
        """Boolean mask of the rows of x (n, dim) inside the closed box, widened by atol."""
        x = _points(x, self.dim, "points")
        return np.all((x >= np.array(self.lo) - atol) & (x <= np.array(self.hi) + atol), axis=1)


@contextlib.contextmanager
def _numpy_seeded(seed: int) -> Iterator[None]:
    """deepxde samples from numpy's global generator: seed it, then put it back."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


@dataclass(frozen=True)
class DeepXDEGeometry:
    """A non-box domain: adapter around a deepxde geometry, e.g. Rectangle − Disk.

    Sampling is deepxde's pseudo-random ``random_points`` / ``random_boundary_points``
    under numpy's global generator, seeded for the call and restored afterwards, so a
    seed always gives the same points and the caller's numpy stream is untouched (not
    thread-safe: another thread drawing from np.random meanwhile would interfere).
    """

    geom: Any

    def __post_init__(self) -> None:
        missing = [a for a in ("dim", "inside", "random_points", "random_boundary_points") if not hasattr(self.geom, a)]
        if missing:
            raise PinnctlError(f"DeepXDEGeometry needs a deepxde geometry; {type(self.geom).__name__} lacks {', '.join(missing)}")

    @property
    def dim(self) -> int:
        return int(self.geom.dim)

    def _sample(self, method: str, n: int, seed: int) -> np.ndarray:
        n = _count(n, "number of points n")
        if not isinstance(seed, Integral) or isinstance(seed, bool) or not 0 <= seed < 2**32:
            raise PinnctlError(f"seed must be an integer in [0, 2**32); got {seed!r}")
        with _numpy_seeded(int(seed)), warnings.catch_warnings():
            # deepxde 1.15's Polygon calls np.cross on 2-vectors (deprecated in NumPy 2): its problem, not the user's
            warnings.simplefilter("ignore", DeprecationWarning)
            x = getattr(self.geom, method)(n, random="pseudo")
        return np.asarray(x, dtype=np.float64).reshape(n, self.dim)

    def interior(self, n: int, seed: int) -> np.ndarray:
        """n points (n, dim) in the domain."""
        return self._sample("random_points", n, seed)

    def boundary(self, n: int, seed: int) -> np.ndarray:
        """n points (n, dim) on the boundary."""
        return self._sample("random_boundary_points", n, seed)

    def contains(self, x: Any) -> np.ndarray:
        """Boolean mask of the rows of x (n, dim) that deepxde's ``inside`` accepts."""
        return np.asarray(self.geom.inside(_points(x, self.dim, "points")), dtype=bool)

    def normals(self, x: np.ndarray) -> np.ndarray:
        """Outward unit normals (n, dim) at boundary points, from deepxde's ``boundary_normal``."""
        fn = getattr(self.geom, "boundary_normal", None)
        if fn is None:
            raise PinnctlError(f"the domain ({type(self.geom).__name__}) has no outward normals (no boundary_normal); "
                               "Neumann and Robin conditions need them")
        try:
            n = np.asarray(fn(_points(x, self.dim, "points")), dtype=np.float64).reshape(-1, self.dim)
        except NotImplementedError:
            raise PinnctlError(f"the domain ({type(self.geom).__name__}) has no outward normals; "
                               "Neumann and Robin conditions need them") from None
        return n


Domain = Union[Box, DeepXDEGeometry]


def _check_domain(domain: Any) -> Domain:
    if not isinstance(domain, (Box, DeepXDEGeometry)):
        raise PinnctlError(f"domain must be a Box or a DeepXDEGeometry; got {type(domain).__name__}")
    return domain


def _span(time: Any) -> tuple[float, float] | None:
    if time is None:
        return None
    try:
        t0, t1 = (float(t) for t in time)
    except (TypeError, ValueError):
        raise PinnctlError(f"time must be None or a pair (t0, t1); got {time!r}") from None
    if not (math.isfinite(t0) and math.isfinite(t1) and t0 < t1):
        raise PinnctlError(f"time interval needs finite t0 < t1; got {time!r}")
    return t0, t1


def _unit(n: int, dim: int, seed: int, scheme: str) -> np.ndarray:
    """Sobol samples, allowing dim 0 (the faces of an interval have no free coordinate)."""
    return np.empty((n, 0)) if dim == 0 else sobol(n, dim, seed=seed, scheme=scheme)


def _with_time(x: np.ndarray, u_t: np.ndarray, span: tuple[float, float] | None) -> np.ndarray:
    """Append the time column mapped from unit samples u_t (n, 1), if there is time."""
    if span is None:
        return x
    t0, t1 = span
    return np.hstack([x, t0 + u_t * (t1 - t0)])


def interior_points(domain: Domain, time: TimeSpan, n: int, *, seed: int, scheme: str = "scipy") -> np.ndarray:
    """n points in domain × time, shape (n, dim+1), or (n, dim) without time.

    For a Box space and time come from one Sobol set of dimension dim+1, so the
    points are low-discrepancy in space-time; a deepxde domain samples space itself and
    gets a Sobol time column drawn with its own seed.
    """
    domain, span, n = _check_domain(domain), _span(time), _count(n, "number of points n")
    has_t = int(span is not None)
    if isinstance(domain, Box):
        u = sobol(n, domain.dim + has_t, seed=_derive(seed, _INTERIOR), scheme=scheme)
        return _with_time(domain.interior(u[:, : domain.dim]), u[:, domain.dim :], span)
    x = domain.interior(n, _derive(seed, _INTERIOR))
    return _with_time(x, _unit(n, has_t, _derive(seed, _INTERIOR, _TIME), scheme), span)


def boundary_points(domain: Domain, time: TimeSpan, n_per_side: int, *, seed: int, scheme: str = "scipy") -> np.ndarray:
    """Points on ∂domain × time.

    Box: 2·dim·n_per_side rows in the face order of :meth:`Box.boundary`; face k
    draws Sobol over its free coordinates (and t) with its own derived seed. A deepxde
    domain has no notion of sides: n_per_side is then the total number of points.
    With scheme "sobol_seq" (seed ignored) all faces share one sequence, as in BPN.
    """
    domain, span, n = _check_domain(domain), _span(time), _count(n_per_side, "n_per_side")
    has_t = int(span is not None)
    if isinstance(domain, Box):
        free = domain.dim - 1
        u = np.concatenate(
            [_unit(n, free + has_t, _derive(seed, _BOUNDARY, face), scheme) for face in range(2 * domain.dim)]
        )
        return _with_time(domain.boundary(u[:, :free], n), u[:, free:], span)
    x = domain.boundary(n, _derive(seed, _BOUNDARY))
    return _with_time(x, _unit(n, has_t, _derive(seed, _BOUNDARY, _TIME), scheme), span)


AXIS_NAMES = ("x", "y", "z")


def face_index(domain: Domain, name: str) -> int:
    """Index (in :meth:`Box.boundary` order) of a Box face named like "x=lo", "y=hi" or "x2=lo"."""
    if not isinstance(domain, Box):
        raise PinnctlError(f"face name '{name}' needs a Box domain; on other shapes give where= a predicate on points")
    axis_name, _, side = str(name).partition("=")
    names = {a: i for i, a in enumerate(AXIS_NAMES[: domain.dim])} | {f"x{i}": i for i in range(domain.dim)}
    if axis_name.strip() not in names or side.strip() not in ("lo", "hi"):
        known = ", ".join(f"{a}={s}" for a in AXIS_NAMES[: domain.dim] for s in ("lo", "hi"))
        raise PinnctlError(f"unknown face '{name}'; faces of this {domain.dim}-D box: {known}")
    return 2 * names[axis_name.strip()] + (side.strip() == "hi")


def face_points(domain: Box, time: TimeSpan, n_per_side: int, faces: Sequence[int], *, seed: int,
                scheme: str = "scipy") -> tuple[np.ndarray, np.ndarray]:
    """Points on the chosen Box faces × time and their outward normals, n_per_side rows per face.

    Each face draws with the same derived seed as in :func:`boundary_points`, so all faces
    together give exactly its points.
    """
    span, n = _span(time), _count(n_per_side, "n_per_side")
    has_t, free = int(span is not None), domain.dim - 1
    lo, hi = np.array(domain.lo), np.array(domain.hi)
    xs, normals = [], []
    for face in faces:
        axis, side = divmod(face, 2)
        u = _unit(n, free + has_t, _derive(seed, _BOUNDARY, face), scheme)
        others = [a for a in range(domain.dim) if a != axis]
        x = np.empty((n, domain.dim))
        x[:, others] = lo[others] + u[:, :free] * (hi - lo)[others]
        x[:, axis] = (lo, hi)[side][axis]
        xs.append(_with_time(x, u[:, free:], span))
        nrm = np.zeros((n, domain.dim))
        nrm[:, axis] = 1.0 if side else -1.0
        normals.append(nrm)
    return np.concatenate(xs), np.concatenate(normals)


def initial_points(domain: Domain, time: TimeSpan, n: int, *, seed: int, scheme: str = "scipy") -> np.ndarray:
    """n points (n, dim+1) of the domain at t = t0."""
    domain, span, n = _check_domain(domain), _span(time), _count(n, "number of points n")
    if span is None:
        raise PinnctlError("initial points need a time interval; give the problem time=(t0, t1)")
    if isinstance(domain, Box):
        x = domain.interior(sobol(n, domain.dim, seed=_derive(seed, _INITIAL), scheme=scheme))
    else:
        x = domain.interior(n, _derive(seed, _INITIAL))
    return np.hstack([x, np.full((n, 1), span[0])])


def grid_points(domain: Domain, time: TimeSpan, shape: Sequence[int]) -> np.ndarray:
    """Tensor grid including the boundary, e.g. shape (11, 11, 201) on [0,1]² × [0,2].

    Axis i has linspace(lo_i, hi_i, shape[i]) (time last); rows follow
    ``meshgrid(indexing="ij")``, so the last axis varies fastest. Box domains only: a
    grid over a curved domain would not have a predictable size.
    """
    domain, span = _check_domain(domain), _span(time)
    if not isinstance(domain, Box):
        raise PinnctlError("grid_points needs a Box domain; give explicit objective points for other shapes")
    bounds = list(zip(domain.lo, domain.hi)) + ([span] if span is not None else [])
    shape = tuple(shape)
    if len(shape) != len(bounds):
        raise PinnctlError(f"grid shape {shape} needs {len(bounds)} entries (space axes, then time)")
    if any(not isinstance(k, Integral) or isinstance(k, bool) or k < 2 for k in shape):
        raise PinnctlError(f"grid shape entries must be integers >= 2 (endpoints included); got {shape}")
    axes = [np.linspace(a, b, k) for (a, b), k in zip(bounds, shape)]
    return np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, len(axes))


def deepxde() -> ModuleType:
    """Import deepxde (for building non-box geometries) with its side effects contained.

    - Backend: ``DDE_BACKEND`` defaults to pytorch before the import. With the variable
      set, deepxde 1.15 never touches ``~/.deepxde/config.json``: it only reads that file,
      and writes it solely when no backend is selected by either means. So no config
      file is written and HOME need not be redirected.
    - Banner: the "Using backend ..." lines (printed to stderr) and anything else
      printed during the import are swallowed.
    - Torch defaults: deepxde's pytorch backend calls ``torch.set_default_device("cuda")``
      when CUDA is available; the default device and dtype are put back afterwards.
    Importing deepxde also imports matplotlib.pyplot and scikit-learn (slow, ~1 s).
    """
    os.environ.setdefault("DDE_BACKEND", "pytorch")
    import torch

    dtype, device = torch.get_default_dtype(), torch.get_default_device()
    banner = io.StringIO()
    try:
        with contextlib.redirect_stdout(banner), contextlib.redirect_stderr(banner):
            module = importlib.import_module("deepxde")
    except Exception as exc:
        raise PinnctlError(
            f"cannot import deepxde ({type(exc).__name__}: {' '.join(str(exc).split())}); "
            "install it (pip install deepxde) and use DDE_BACKEND=pytorch"
        ) from exc
    finally:
        # Unconditional: asking torch for a CUDA default device initialises CUDA.
        torch.set_default_dtype(dtype)
        torch.set_default_device(None if device.type == "cpu" else device)
    return module
