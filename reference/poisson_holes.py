"""Finite-element reference for poisson_holes: a source on a disk steers u → 1 on a perforated square.

Problem (Bi-level PINN's ``poisson_ball_domain.py``): Δu = f(x, y)·1{|(x, y)| ≤ 1.6} on
Ω = [−4, 4]² minus the four disks of radius 0.8 centred at (±2.4, ±2.4); u = 1 on the outer
square, u = 0 on the four circles. Objective J(f) = ∫_Ω (u − 1)² dx (the domain mean times the
area 64 − 4π·0.64, as the script reports it).

Solver: P1 Lagrange elements (scikit-fem) on a Triangle (PyPI ``triangle``) mesh that resolves
the four circles and also the control disk's edge |x| = 1.6 as an interface, so the indicator is
exact on the mesh; vertices on the circles are projected onto them (the mesh's holes are
inscribed polygons: geometry error O(h²), like P1's own). The control enters through its values
at the Gauss points (order 4, 6 per triangle) of the triangles inside the disk
(``control_points``): b_i = Σ_q w_q f(x_q) φ_i(x_q), so a smooth control's load is exact to the
rule's order. J is the exact integral (u_h − 1)ᵀ M (u_h − 1) with the P1 mass matrix.

J*: the problem is linear-quadratic, u = u₀ + S f, and certification sees f only through its P1
loads on the disk's nodes, all of which are reachable; so J* = min over every control of the
certified J is a sparse equality-constrained least-squares problem (u discretely harmonic off
the disk), solved exactly by one KKT factorisation (``discrete_optimum``): a lower bound of every
certified J. As h → 0 it decreases to the L² infimum (≈ 0.4 % lower, order 1.0–1.3 in h), which
is not attained: the optimal source builds a layer of width ~h inside |x| = 1.6.
Cross-checks (tests): smooth controls in a refined basis, the D4-invariant Zernike functions
R_n^m(r) cos(mφ), m ∈ {0, 4, 8, …} (the data are invariant under the square's symmetry group,
so a minimiser may be taken invariant; the full Legendre basis gives the same J*), approach J*
from above as the degree grows (``basis_optimum``); J(f*) evaluated directly equals J*.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Union

import numpy as np
from scipy.sparse import coo_matrix, csr_matrix
from scipy.sparse.linalg import splu
from scipy.special import eval_jacobi

from pinnctl import PinnctlError
from pinnctl.diskcache import disk_cached
from pinnctl.pde.reference import Bound, FieldSamples, Optimum

HALF = 4.0  # the square is [−HALF, HALF]²
HOLE_R = 0.8
HOLE_CENTRES = np.array([[2.4, 2.4], [2.4, -2.4], [-2.4, 2.4], [-2.4, -2.4]])
CTRL_R = 1.6
AREA = (2 * HALF) ** 2 - 4 * math.pi * HOLE_R**2  # of the exact domain
MEASURES = ("domain",)
H = 0.05  # mesh size of certification (J of a smooth control to ~3e-4 relative, docs/problems.md)
INTORDER = 4  # Gauss rule of the control's load (6 points per triangle)
_SQUARE, _HOLE, _DISK = 1, 2, 3  # segment markers

Control = Union[np.ndarray, Callable[[np.ndarray], np.ndarray]]


# ----------------------------------------------------------------------------- mesh


def _ring(centre: np.ndarray, radius: float, h: float) -> np.ndarray:
    n = max(8, math.ceil(2 * math.pi * radius / h))
    a = 2 * math.pi * np.arange(n) / n
    return centre + radius * np.stack([np.cos(a), np.sin(a)], axis=1)


@lru_cache(maxsize=8)
def mesh(h: float = H):
    """The skfem MeshTri of Ω with elements of size ~h, circles and the disk edge resolved.

    Returns (mesh, disk): ``disk`` is the boolean mask of the triangles inside |x| ≤ 1.6."""
    import triangle
    from skfem import MeshTri

    if not h > 0:
        raise PinnctlError(f"poisson_holes mesh size h must be > 0; got {h}")
    n_side = max(2, math.ceil(2 * HALF / h))
    s = np.linspace(-HALF, HALF, n_side + 1)[:-1]
    square = np.concatenate([np.stack([s, np.full_like(s, -HALF)], 1), np.stack([np.full_like(s, HALF), s], 1),
                             np.stack([-s, np.full_like(s, HALF)], 1), np.stack([np.full_like(s, -HALF), -s], 1)])
    loops = [(square, _SQUARE)] + [(_ring(c, HOLE_R, h), _HOLE) for c in HOLE_CENTRES] + [(_ring(np.zeros(2), CTRL_R, h), _DISK)]
    verts, segs, marks, start = [], [], [], 0
    for pts, mark in loops:
        n = len(pts)
        verts.append(pts)
        segs.append(start + np.stack([np.arange(n), (np.arange(n) + 1) % n], 1))
        marks.append(np.full(n, mark))
        start += n
    geometry = {"vertices": np.concatenate(verts), "segments": np.concatenate(segs),
                "segment_markers": np.concatenate(marks)[:, None], "holes": HOLE_CENTRES}
    out = triangle.triangulate(geometry, f"pq30a{h * h * math.sqrt(3) / 4:.10f}")
    p, t, vm = out["vertices"].copy(), out["triangles"], out["vertex_markers"].reshape(-1)
    for c in HOLE_CENTRES:  # Steiner points on the chords go onto the circles
        on = (vm == _HOLE) & (np.linalg.norm(p - c, axis=1) < HOLE_R * 1.01)
        p[on] = c + HOLE_R * (p[on] - c) / np.linalg.norm(p[on] - c, axis=1, keepdims=True)
    on = vm == _DISK
    p[on] = CTRL_R * p[on] / np.linalg.norm(p[on], axis=1, keepdims=True)
    m = MeshTri(np.ascontiguousarray(p.T), np.ascontiguousarray(t.T))
    disk = np.linalg.norm(p[t].mean(axis=1), axis=1) < CTRL_R
    return m, disk


def _dirichlet(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Boundary nodes (indices) and their data: 1 on the square, 0 on the circles."""
    on_square = np.isclose(np.abs(p).max(axis=1), HALF, atol=1e-9)
    dist = np.min(np.linalg.norm(p[:, None, :] - HOLE_CENTRES[None], axis=2), axis=1)
    on_hole = np.isclose(dist, HOLE_R, atol=1e-9)
    nodes = np.flatnonzero(on_square | on_hole)
    return nodes, on_square[nodes].astype(np.float64)


# ----------------------------------------------------------------------------- FEM system


@dataclass(frozen=True)
class System:
    """Everything a solve reuses at one mesh size: matrices, the factorisation and the control's load map."""

    mesh: object
    basis: object
    K: csr_matrix
    M: csr_matrix
    free: np.ndarray
    fixed: np.ndarray
    fixed_values: np.ndarray
    lu: object
    points: np.ndarray  # (Q, 2): the Gauss points where the control is read
    load: csr_matrix  # (n_nodes, Q): f at the points -> ∫ f φ_i over the disk
    cost_s: float  # CPU seconds of mesh, assembly and factorisation


def _load_matrix(m, elements: np.ndarray, intorder: int) -> tuple[np.ndarray, csr_matrix]:
    """Gauss points of the given triangles and the sparse map from values there to P1 loads."""
    from skfem import Basis, ElementTriP1

    b = Basis(m, ElementTriP1(), elements=elements, intorder=intorder)
    x = np.asarray(b.global_coordinates())  # (2, ne, nq)
    ne, nq = x.shape[1], x.shape[2]
    dofs = b.element_dofs  # (3, ne)
    rows = np.concatenate([np.repeat(dofs[i], nq) for i in range(dofs.shape[0])])
    cols = np.tile(np.arange(ne * nq), dofs.shape[0])
    vals = np.concatenate([(np.asarray(b.basis[i][0]) * b.dx).reshape(-1) for i in range(dofs.shape[0])])
    P = coo_matrix((vals, (rows, cols)), shape=(b.N, ne * nq)).tocsr()
    return x.reshape(2, -1).T.copy(), P


@lru_cache(maxsize=8)
def system(h: float = H) -> System:
    """Assemble and factorise at mesh size h (cached: a run factorises once)."""
    from skfem import Basis, BilinearForm, ElementTriP1, asm
    from skfem.helpers import dot, grad

    start = time.process_time()
    m, disk = mesh(h)
    basis = Basis(m, ElementTriP1(), intorder=2)
    K = asm(BilinearForm(lambda u, v, w: dot(grad(u), grad(v))), basis).tocsr()
    M = asm(BilinearForm(lambda u, v, w: u * v), basis).tocsr()
    fixed, values = _dirichlet(m.p.T)
    free = np.setdiff1d(np.arange(basis.N), fixed)
    lu = splu(K[free][:, free].tocsc())
    points, load = _load_matrix(m, np.flatnonzero(disk), INTORDER)
    return System(m, basis, K, M, free, fixed, values, lu, points, load, time.process_time() - start)


def solve_nodal(s: System, load: np.ndarray, fixed_values: np.ndarray | None = None) -> np.ndarray:
    """Nodal u of −∫∇u·∇φ = load (i.e. Δu = source weakly) with Dirichlet values on the boundary nodes."""
    g = s.fixed_values if fixed_values is None else fixed_values
    u = np.zeros(s.K.shape[0])
    u[s.fixed] = g
    rhs = -np.asarray(load)[s.free] - s.K[s.free][:, s.fixed] @ g
    u[s.free] = s.lu.solve(rhs)
    return u


def control_points(h: float = H) -> np.ndarray:
    """(Q, 2) points where certify reads the control: the Gauss points of the disk's triangles."""
    return system(h).points


def _values(control: Control, h: float) -> np.ndarray:
    pts = control_points(h)
    f = control(pts) if callable(control) else control
    f = np.asarray(f, dtype=np.float64).reshape(-1)
    if f.shape[0] != pts.shape[0]:
        raise PinnctlError(f"poisson_holes: the control has {f.shape[0]} values; certify needs one at each of the "
                           f"{pts.shape[0]} points of control_points(h={h})")
    return f


def nodal_state(control: Control, h: float = H) -> np.ndarray:
    s = system(h)
    return solve_nodal(s, s.load @ _values(control, h))


def objective(control: Control, h: float = H) -> float:
    """J(f) = ∫_Ω (u − 1)², exactly for the P1 state (mass matrix)."""
    s = system(h)
    e = nodal_state(control, h) - 1.0
    return float(e @ (s.M @ e))


def interpolate(nodal: np.ndarray, points: np.ndarray, h: float = H) -> np.ndarray:
    """The P1 function with these nodal values at (N, 2) points.

    Why not skfem's probes: its element finder is quadratic in the number of points (it runs out
    of memory on a plotting grid); matplotlib's trapezoid-map finder is O(log n) per point. A point
    the polygonal mesh misses (within O(h²) of a circle) takes its nearest node's value."""
    m = system(h).mesh
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    finder, nearest = _finders(h)
    cell = finder(pts[:, 0], pts[:, 1])
    out = np.empty(len(pts))
    ok = cell >= 0
    t = m.t[:, cell[ok]]  # (3, n)
    a, b, c = (m.p[:, t[i]] for i in range(3))
    det = (b[0] - a[0]) * (c[1] - a[1]) - (c[0] - a[0]) * (b[1] - a[1])
    l1 = ((pts[ok, 0] - a[0]) * (c[1] - a[1]) - (c[0] - a[0]) * (pts[ok, 1] - a[1])) / det
    l2 = ((b[0] - a[0]) * (pts[ok, 1] - a[1]) - (pts[ok, 0] - a[0]) * (b[1] - a[1])) / det
    out[ok] = (1 - l1 - l2) * nodal[t[0]] + l1 * nodal[t[1]] + l2 * nodal[t[2]]
    if not ok.all():
        out[~ok] = nodal[nearest.query(pts[~ok])[1]]
    return out


@lru_cache(maxsize=4)
def _finders(h: float):
    from matplotlib.tri import Triangulation
    from scipy.spatial import cKDTree

    m = system(h).mesh
    return Triangulation(m.p[0], m.p[1], m.t.T).get_trifinder(), cKDTree(m.p.T)


def state_at(control: Control, points: np.ndarray, h: float = H) -> np.ndarray:
    """u at (N, 2) points of Ω (P1 interpolation; the polygonal mesh covers the exact Ω)."""
    return interpolate(nodal_state(control, h), points, h)


# ----------------------------------------------------------------------------- J*


def zernike_d4(points: np.ndarray, degree: int) -> np.ndarray:
    """(N, n) D4-invariant Zernike functions R_n^m(r/R) cos(mφ), m = 0, 4, 8, …, n ≤ degree, 0 off the disk."""
    r = np.linalg.norm(points, axis=1) / CTRL_R
    phi = np.arctan2(points[:, 1], points[:, 0])
    cols = []
    for m in range(0, degree + 1, 4):
        for n in range(m, degree + 1, 2):
            k = (n - m) // 2
            cols.append(r**m * eval_jacobi(k, m, 0, 2 * r**2 - 1) * np.cos(m * phi))
    return np.where((r <= 1.0)[:, None], np.stack(cols, axis=1), 0.0)


def legendre_full(points: np.ndarray, degree: int) -> np.ndarray:
    """(N, n) all tensor Legendre polynomials P_i(x/R) P_j(y/R), i + j ≤ degree (no symmetry assumed)."""
    from numpy.polynomial.legendre import legvander

    vx, vy = legvander(points[:, 0] / CTRL_R, degree), legvander(points[:, 1] / CTRL_R, degree)
    return np.stack([vx[:, i] * vy[:, j] for i in range(degree + 1) for j in range(degree + 1 - i)], axis=1)


def basis_optimum(functions: Callable[[np.ndarray, int], np.ndarray], degree: int, h: float = H) -> tuple[float, np.ndarray]:
    """(J*, coefficients) over span of ``functions(points, degree)``: min ‖e₀ + G c‖²_M, G = S Φ.

    G is orthonormalised in the M inner product (classical Gram–Schmidt, twice), so J* is as
    accurate as the responses even where G's columns are nearly dependent (the Gram matrix GᵀMG
    would square the condition number); columns that add nothing (norm < 1e-10 of their own
    before projection) are dropped."""
    s = system(h)
    phi = functions(s.points, degree)
    e0 = solve_nodal(s, np.zeros(s.K.shape[0])) - 1.0
    loads = s.load @ phi  # (nodes, n)
    G = np.zeros_like(loads)
    G[s.free] = s.lu.solve(-np.ascontiguousarray(loads[s.free]))
    n = G.shape[1]
    Q = np.zeros_like(G)
    R = np.zeros((n, n))
    kept = []
    for k in range(n):
        g = G[:, k].copy()
        norm0 = math.sqrt(g @ (s.M @ g))
        for _ in range(2):
            r = Q[:, kept].T @ (s.M @ g)
            g -= Q[:, kept] @ r
            R[kept, k] += r
        norm = math.sqrt(max(g @ (s.M @ g), 0.0))
        if norm > 1e-10 * norm0:
            Q[:, k], R[k, k] = g / norm, norm
            kept.append(k)
    z = Q[:, kept].T @ (s.M @ e0)
    c = np.zeros(n)
    c[kept] = -np.linalg.solve(R[np.ix_(kept, kept)], z)
    return float(e0 @ (s.M @ e0) - z @ z), c


@lru_cache(maxsize=8)
@disk_cached(depends=("triangle", "skfem"))  # mesh + KKT solve, 2-3 CPU s, the same in every run
def discrete_optimum(h: float = H) -> tuple[float, np.ndarray, float]:
    """(J*, f*, CPU s): the minimum of the certified J over every control it can see, f* as nodal
    values of a P1 function on the disk (0 elsewhere), and what computing them cost.

    Certification reads f only through the P1 loads b_i = ∫_disk f φ_i, and every load vector on
    the disk's nodes is reached, so min_f J_h is the quadratic program
    min ‖u − 1‖²_M  s.t.  (K u)_i = 0 at the free nodes outside the disk (u discretely harmonic
    there), u = g on the boundary: one sparse KKT solve. f* is the P1 function on the disk whose
    loads are the optimum's (M_disk c = b). The minimum is attained on each mesh; as h → 0 it
    decreases to the L² infimum, which is not attained (f* forms a layer of width ~h inside
    |x| = 1.6; docs/problems.md has the table)."""
    from scipy.sparse import bmat
    from skfem import Basis, BilinearForm, ElementTriP1, asm

    s = system(h)
    m, disk = mesh(h)
    start = time.process_time()
    in_disk = np.zeros(s.K.shape[0], dtype=bool)
    in_disk[np.unique(m.t[:, disk])] = True
    f_idx, d_idx = s.free, s.fixed
    ext = f_idx[~in_disk[f_idx]]
    eD = s.fixed_values - 1.0
    Mff, MfD = s.M[f_idx][:, f_idx], s.M[f_idx][:, d_idx]
    KEf, KED = s.K[ext][:, f_idx], s.K[ext][:, d_idx]
    kkt = bmat([[Mff, KEf.T], [KEf, None]]).tocsc()
    sol = splu(kkt).solve(np.concatenate([-(MfD @ eD), -(KED @ eD)]))
    e = np.zeros(s.K.shape[0])
    e[f_idx], e[d_idx] = sol[: len(f_idx)], eD
    load = -(s.K @ (e + 1.0))  # the optimum's loads: zero off the disk up to round-off
    nodes = f_idx[in_disk[f_idx]]
    Md = asm(BilinearForm(lambda u, v, w: u * v), Basis(m, ElementTriP1(), elements=np.flatnonzero(disk))).tocsr()
    c = np.zeros(s.K.shape[0])
    c[nodes] = splu(Md[nodes][:, nodes].tocsc()).solve(load[nodes])
    return float(e @ (s.M @ e)), c, time.process_time() - start


def optimal_control(points: np.ndarray, h: float = H) -> np.ndarray:
    """f*(x) at (N, 2) points of Ω (0 outside the disk)."""
    pts = np.asarray(points, dtype=np.float64)
    f = interpolate(discrete_optimum(h)[1], pts, h)
    return np.where(np.linalg.norm(pts, axis=1) <= CTRL_R, f, 0.0)


def optimal_control_samples(h: float = H) -> np.ndarray:
    """f* at control_points(h) (what certify reads): J(f*) = J* exactly."""
    from skfem import Basis, ElementTriP1

    m, disk = mesh(h)
    db = Basis(m, ElementTriP1(), elements=np.flatnonzero(disk), intorder=INTORDER)
    return np.asarray(db.interpolate(discrete_optimum(h)[1])).reshape(-1)


def _certify_cost(h: float = H, repeats: int = 3) -> float:
    zero = np.zeros(len(control_points(h)))
    start = time.process_time()
    for _ in range(repeats):
        objective(zero, h)
    return (time.process_time() - start) / repeats


def optimum(*, measure: str = "domain", h: float = H) -> Optimum:
    """J* = min of the certified J (cached per process: a run computes it once)."""
    if measure not in MEASURES:
        raise PinnctlError(f"poisson_holes reference: unknown measure '{measure}'; known: {', '.join(MEASURES)}")
    return Optimum(measure, discrete_optimum(h)[0])


def certify(control: np.ndarray, h: float = H) -> dict[str, float]:
    return {"domain": objective(control, h)}


def report(initial: Callable[[np.ndarray], np.ndarray] | None = None, h: float = H) -> str:
    """What ``pinnctl reference poisson_holes`` prints: the mesh, J*, J of the initial controls, f*, costs."""
    s = system(h)
    J, _, cost = discrete_optimum(h)
    j0 = objective(np.zeros(len(s.points)), h)
    lines = [f"poisson_holes reference: P1 FEM (scikit-fem) on a Triangle mesh, h = {h}, {s.mesh.t.shape[1]} triangles, "
             f"{s.mesh.p.shape[1]} nodes; control read at {len(s.points)} Gauss points of the disk |x| <= {CTRL_R}",
             f"J* = {J:.6e} (min of the certified J over all controls, one KKT solve)   J(f=0) = {j0:.6e}   "
             f"J*/J(0) = {J / j0:.4f}"]
    if initial is not None:
        lines.append(f"J(f0) = {objective(initial(s.points), h):.6e} (the control net at its initialisation, seed 0)")
    r = np.array([0.0, 0.4, 0.8, 1.2, 1.4, 1.5, 1.55])
    on_axis = optimal_control(np.stack([r, 0 * r], 1), h)
    on_diag = optimal_control(np.stack([r, r], 1) / math.sqrt(2), h)
    fs = optimal_control_samples(h)
    lines.append("f*(r) on the x-axis:   " + ", ".join(f"{a:g}: {v:+.2f}" for a, v in zip(r, on_axis)))
    lines.append("f*(r) on the diagonal: " + ", ".join(f"{a:g}: {v:+.2f}" for a, v in zip(r, on_diag)))
    lines.append(f"f* over the disk: min {fs.min():+.1f}, max {fs.max():+.1f}, mean {fs.mean():+.3f} "
                 f"(a layer of width ~h inside |x| = {CTRL_R}: the L2 infimum is not attained)")
    lines.append(f"cost (CPU s): mesh + assembly + LU {s.cost_s:.2f}, J* {cost:.2f}, one certify {_certify_cost(h):.3f}")
    return "\n".join(lines)


def reference(initial: Callable[[np.ndarray], np.ndarray] | None = None, h: float = H) -> Bound:
    """The Reference protocol object: the source sampled at the disk's Gauss points, J over the domain.

    ``initial`` (optional, for the report): the problem's initial control as a function of points;
    ``h``: the mesh size of certification (J to ~3e-4 relative at the default 0.05)."""
    if not (isinstance(h, (int, float)) and 0.01 <= h <= 1.0):
        raise PinnctlError(f"poisson_holes: mesh size h must be a number in [0.01, 1]; got {h!r}")
    h = float(h)
    return Bound(measures=MEASURES, control=FieldSamples(control_points(h)), params={}, certify=lambda c: certify(c, h),
                 optimum=lambda measure="domain": optimum(measure=measure, h=h), state=lambda c, p: state_at(c, p, h),
                 report=lambda: report(initial, h))
