"""`pinnctl plot RUN_DIR`: the figures people look at instead of reading the run file.

Written next to the run file (Agg backend, PNG):
- ``objective.png``   PINN-measured and certified objective vs outer step and vs wall-clock, J* dashed
- ``loss_terms.png``  inner loss terms by condition and the hypergradient norm vs outer step
- ``control.png``     the learned control f(t) against the exact optimum f*
- ``state_error.png`` u_exact (the learned control in the reference solver) and |u_θ − u_exact|
                      at four times (problems with two space dimensions, time and a reference)
- ``field.png``       steady 2-D problems with a field reference: the learned control where the reference
                      reads it, the state (learned control in the reference solver) and the PINN's error
- ``accuracy.png``    validation / test accuracy vs wall-clock and step (classification)
- ``distilled_images.png``  the learned synthetic images, one row per class (distillation)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from . import runs

SNAPSHOT_TIMES = (0.25, 0.5, 0.75, 1.0)  # fractions of the time span
SNAPSHOT_GRID = 41  # points per space axis


def _pyplot():
    import sys

    import matplotlib

    if "ipykernel" not in sys.modules:  # in a notebook keep its inline backend (figures are closed after saving)
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _finite(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    keep = np.isfinite(y)
    return x[keep], y[keep]


def plot_objective(data: dict[str, Any], out: Path) -> Path:
    plt = _pyplot()
    from .runs import optimum_of

    h, (j_star, measure) = data["history"], optimum_of(data["attrs"])
    steps, wall = h["step"] + 1, h["wall_time"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for ax, x, label in ((axes[0], steps, "outer step"), (axes[1], wall, "wall-clock [s]")):
        ax.semilogy(x, h["outer_loss"], color="tab:blue", lw=0.8, alpha=0.7, label="PINN-measured J")
        if f"certified/{measure}" in h:
            ax.semilogy(*_finite(x, h[f"certified/{measure}"]), color="tab:red", lw=1.8, label="certified J (exact solver)")
        if j_star:
            ax.axhline(j_star, color="k", ls="--", lw=1, label=f"J* = {j_star:.4e}")
            ax.axhline(1.05 * j_star, color="k", ls=":", lw=0.8, label="1.05·J*")
        ax.set(xlabel=label, title=f"objective vs {label.split(' [')[0]}")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel(f"objective ({measure} measure)")
    axes[0].legend(fontsize=8)
    return _save(fig, out / "objective.png", data)


def plot_loss_terms(data: dict[str, Any], out: Path) -> Path:
    plt = _pyplot()
    h = data["history"]
    steps = h["step"] + 1
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for key in sorted(k for k in h if k.startswith("inner_terms/")):
        ax1.semilogy(*_finite(steps, h[key]), lw=1.2, label=key.split("/", 1)[1])
    ax1.set(xlabel="outer step", ylabel="weighted mean squared residual", title="inner loss terms (end of each inner loop)")
    ax1.legend(fontsize=8)
    ax2.semilogy(steps, h["hypergrad_norm"], color="tab:purple", lw=1.2)
    ax2.set(xlabel="outer step", ylabel="‖h‖", title="hypergradient norm (before clipping)")
    for ax in (ax1, ax2):
        ax.grid(True, which="both", alpha=0.3)
    return _save(fig, out / "loss_terms.png", data)


def plot_control(data: dict[str, Any], out: Path) -> Path | None:
    arrays = data["arrays"]
    if "control/t" not in arrays:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(arrays["control/t"], arrays["control/f"], color="tab:red", lw=1.8, label="learned f(t)")
    if "reference/t" in arrays:
        ax.plot(arrays["reference/t"], arrays["reference/f"], "k--", lw=1.4, label="exact optimum f*(t)")
    ax.set(xlabel="t", ylabel="f(t)", title="control")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, out / "control.png", data)


def plot_metrics(data: dict[str, Any], out: Path) -> Path | None:
    """Problem metrics (classification: validation/test accuracy) vs wall-clock and step."""
    h = data["history"]
    keys = sorted(k for k in h if k.startswith("metrics/") and "accuracy" in k)
    if not keys:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for ax, x, label in ((axes[0], h["wall_time"], "wall-clock [s]"), (axes[1], h["step"] + 1, "outer step")):
        for key in keys:
            ax.plot(*_finite(x, h[key]), lw=1.2, label=key.split("/", 1)[1])
        ax.set(xlabel=label, title=f"accuracy vs {label.split(' [')[0]}")
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel("accuracy")
    axes[0].legend(fontsize=8)
    return _save(fig, out / "accuracy.png", data)


def plot_images(data: dict[str, Any], out: Path) -> Path | None:
    """The outer variable as images (distillation): one row per class."""
    images = data["arrays"].get("control/images")
    if images is None:
        return None
    plt = _pyplot()
    classes, per_class = images.shape[:2]
    cols = min(per_class, 10)
    fig, axes = plt.subplots(classes, cols, figsize=(1.1 * cols, 1.1 * classes), squeeze=False)
    for c in range(classes):
        for j in range(cols):
            ax = axes[c, j]
            ax.imshow(images[c, j], cmap="gray")
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(str(c), rotation=0, labelpad=10)
    return _save(fig, out / "distilled_images.png", data)


def _rebuilt(data: dict[str, Any], compiled: bool = False) -> Any:
    """The run's problem (or, with ``compiled``, its compiled form) from its stored config, built once
    per read of the run file for all the figures that need it (``pinnctl plot`` draws several)."""
    memo = data.setdefault("rebuilt", {})
    config = data["attrs"]["config"]
    if "problem" not in memo:
        from .discovery import find

        memo["problem"] = find(config["problem"]).build(**config.get("params", {}))
    if compiled and "compiled" not in memo:
        from .pde.compile import compile_problem

        memo["compiled"] = compile_problem(memo["problem"], seed=int(config.get("seed", 0)))
    return memo["compiled"] if compiled else memo["problem"]


def _state_fields(data: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[float]] | None:
    """u_θ and u_exact on a space grid at a few times, or None when the problem has no such picture."""
    import torch

    from .geometry import Box
    from .problem import reference_of

    config, arrays = data["attrs"]["config"], data["arrays"]
    if "state/theta" not in arrays or "control/t" not in arrays:
        return None
    problem = _rebuilt(data)
    if problem.time is None or not isinstance(problem.domain, Box) or len(problem.domain.lo) != 2:
        return None
    ref = reference_of(problem)
    if ref is None:
        return None
    (x0, y0), (x1, y1) = problem.domain.lo, problem.domain.hi
    xs, ys = np.linspace(x0, x1, SNAPSHOT_GRID), np.linspace(y0, y1, SNAPSHOT_GRID)
    t0, t1 = problem.time
    times = [t0 + s * (t1 - t0) for s in SNAPSHOT_TIMES]
    X, Y = np.meshgrid(xs, ys, indexing="ij")
    pts = np.concatenate([np.stack([X.ravel(), Y.ravel(), np.full(X.size, t)], axis=1) for t in times])
    theta = torch.as_tensor(arrays["state/theta"], device="cpu")  # host-side figure work
    with torch.no_grad():
        u = problem.state.forward(theta, torch.as_tensor(pts, dtype=theta.dtype, device=theta.device))[:, 0].double().cpu().numpy()
    exact = ref.state((arrays["control/t"], arrays["control/f"]), pts)
    if exact is None:
        return None
    shape = (len(times), SNAPSHOT_GRID, SNAPSHOT_GRID)
    return u.reshape(shape), exact.reshape(shape), np.array([x0, x1, y0, y1]), times


def plot_state_error(data: dict[str, Any], out: Path) -> Path | None:
    fields = _state_fields(data)
    if fields is None:
        return None
    u, exact, extent, times = fields
    plt = _pyplot()
    fig, axes = plt.subplots(2, len(times), figsize=(3.4 * len(times), 6.4), constrained_layout=True)
    vmax_u, vmax_e = np.abs(exact).max(), np.abs(u - exact).max()
    for i, t in enumerate(times):
        im_u = axes[0, i].imshow(exact[i].T, origin="lower", extent=extent, cmap="RdBu_r", vmin=-vmax_u, vmax=vmax_u)
        im_e = axes[1, i].imshow(np.abs(u[i] - exact[i]).T, origin="lower", extent=extent, cmap="magma", vmin=0, vmax=vmax_e)
        axes[0, i].set_title(f"u_exact, t = {t:g}")
        # relative to the RMS of u over all snapshots: u_exact can pass through ~0 at one time
        rel = np.sqrt(np.mean((u[i] - exact[i]) ** 2)) / max(np.sqrt(np.mean(exact**2)), 1e-300)
        axes[1, i].set_title(f"|u_θ − u_exact|: max {np.abs(u[i] - exact[i]).max():.3f}, RMS {rel:.1%} of u's", fontsize=9)
        for ax in axes[:, i]:
            ax.set(xlabel="x", ylabel="y")
    fig.colorbar(im_u, ax=axes[0, :], shrink=0.8, label="u (learned control, exact solver)")
    fig.colorbar(im_e, ax=axes[1, :], shrink=0.8, label="state error of the PINN")
    return _save(fig, out / "state_error.png", data, tight=False)


def _steady_fields(data: dict[str, Any]) -> dict[str, np.ndarray] | None:
    """For a steady 2-D problem whose reference reads the control at points: those points and the
    control there, and on a grid of the domain u_θ and u_ref (the learned control in the solver)."""
    import torch

    from .pde.declare import PDEProblem
    from .pde.reference import FieldSamples

    config, arrays = data["attrs"]["config"], data["arrays"]
    if "state/theta" not in arrays or "control/v" not in arrays:
        return None
    problem = _rebuilt(data)
    if not isinstance(problem, PDEProblem) or problem.time is not None or problem.domain.dim != 2 or problem.state.n_out != 1:
        return None
    compiled = _rebuilt(data, compiled=True)
    ref = compiled.info.get("reference")
    if ref is None or not isinstance(ref.control, FieldSamples):
        return None
    v = torch.as_tensor(arrays["control/v"], dtype=compiled.v0.dtype)
    f = np.asarray(compiled.info["encode_control"](v), dtype=np.float64).reshape(-1)
    lo, hi = (np.asarray(b, dtype=np.float64) for b in (getattr(problem.domain, "lo", None) or problem.domain.geom.bbox[0],
                                                         getattr(problem.domain, "hi", None) or problem.domain.geom.bbox[1]))
    X, Y = np.meshgrid(np.linspace(lo[0], hi[0], 121), np.linspace(lo[1], hi[1], 121), indexing="ij")
    grid = np.stack([X.ravel(), Y.ravel()], axis=1)
    inside = problem.domain.contains(grid)
    exact = np.full(len(grid), np.nan)
    state = ref.state(f, grid[inside])
    if state is None:
        return None
    exact[inside] = state
    theta = torch.as_tensor(arrays["state/theta"])
    with torch.no_grad():
        u = problem.state.forward(theta, torch.as_tensor(grid, dtype=theta.dtype))[:, 0].double().numpy()
    u[~inside] = np.nan
    return {"points": ref.control.points, "f": f, "u": u.reshape(X.shape), "exact": exact.reshape(X.shape),
            "extent": np.array([lo[0], hi[0], lo[1], hi[1]])}


def plot_field(data: dict[str, Any], out: Path) -> Path | None:
    fields = _steady_fields(data)
    if fields is None:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6), constrained_layout=True)
    pts, f = fields["points"], fields["f"]
    lim = np.percentile(np.abs(f), 99.5) or 1.0
    sc = axes[0].scatter(pts[:, 0], pts[:, 1], c=f, s=2, cmap="RdBu_r", vmin=-lim, vmax=lim, rasterized=True)
    axes[0].set(title="learned control f where the reference reads it", aspect="equal")
    fig.colorbar(sc, ax=axes[0], shrink=0.8)
    ext = fields["extent"]
    im = axes[1].imshow(fields["exact"].T, origin="lower", extent=ext, cmap="viridis")
    axes[1].set_title("u_ref (learned control, reference solver)")
    fig.colorbar(im, ax=axes[1], shrink=0.8)
    err = np.abs(fields["u"] - fields["exact"])
    rel = np.sqrt(np.nanmean(err**2) / np.nanmean(fields["exact"] ** 2))
    im = axes[2].imshow(err.T, origin="lower", extent=ext, cmap="magma")
    axes[2].set_title(f"|u_θ − u_ref|: max {np.nanmax(err):.3f}, RMS {rel:.1%} of u's", fontsize=9)
    fig.colorbar(im, ax=axes[2], shrink=0.8)
    for ax in axes:
        ax.set(xlabel="x", ylabel="y")
    return _save(fig, out / "field.png", data, tight=False)


def _profiles(data: dict[str, Any]) -> dict[str, Any] | None:
    """For a problem whose reference takes the control vector and knows its optimum on nodes (an inlet
    profile θ): the learned vector against θ*; and when the objective tracks one output along a line of
    points: that output of the PINN, of the reference for the learned control, and the target."""
    import torch

    from .pde.compile import objective_points
    from .pde.declare import Points, Tracking
    from .pde.reference import ControlVector, reference_of

    config, arrays = data["attrs"]["config"], data["arrays"]
    if "control/v" not in arrays or "reference/f" not in arrays:
        return None
    problem = _rebuilt(data)
    ref = reference_of(problem)
    if ref is None or not isinstance(ref.control, ControlVector):
        return None
    compiled = _rebuilt(data, compiled=True)
    v = torch.as_tensor(arrays["control/v"], dtype=compiled.v0.dtype)
    control = np.asarray(compiled.info["encode_control"](v), dtype=np.float64).reshape(-1)
    if control.shape != np.shape(arrays["reference/f"]):
        return None
    out: dict[str, Any] = {"nodes": arrays["reference/t"], "control": control, "optimum": arrays["reference/f"]}
    obj = problem.objective
    if isinstance(obj, Tracking) and isinstance(obj.points, Points) and obj.of is None and "state/theta" in arrays:
        x = objective_points(problem)
        axis = int(np.argmax(np.ptp(x, axis=0)))
        if np.ptp(np.delete(x, axis, axis=1), axis=0).max(initial=0.0) == 0.0:  # the points lie on a line
            col = problem.outputs.index(obj.output) if obj.output is not None else 0
            theta = torch.as_tensor(arrays["state/theta"])
            xt = torch.as_tensor(x, dtype=theta.dtype)
            with torch.no_grad():
                pinn = problem.state.forward(theta, xt)[:, col].double().numpy()
                target = obj.target(xt).reshape(-1).double().numpy()
            exact = ref.state(control, x)
            exact = None if exact is None else np.asarray(exact).reshape(len(x), -1)[:, col]
            out.update(line=x[:, axis], axis="xyz"[axis], output=problem.outputs[col], pinn=pinn, target=target, exact=exact)
    return out


def plot_profiles(data: dict[str, Any], out: Path) -> Path | None:
    prof = _profiles(data)
    if prof is None:
        return None
    plt = _pyplot()
    n = 2 if "line" in prof else 1
    fig, axes = plt.subplots(1, n, figsize=(6.5 * n, 4.5), squeeze=False)
    ax = axes[0, 0]
    ax.plot(prof["nodes"], prof["control"], color="tab:red", lw=1.6, marker=".", label="learned control")
    ax.plot(prof["nodes"], prof["optimum"], "k--", lw=1.3, label="reference optimum")
    ax.set(xlabel="node coordinate", ylabel="control value", title="control vector")
    if "line" in prof:
        ax = axes[0, 1]
        ax.plot(prof["line"], prof["target"], "k--", lw=1.3, label="target")
        ax.plot(prof["line"], prof["pinn"], color="tab:blue", lw=1.6, label=f"PINN {prof['output']}")
        if prof["exact"] is not None:
            ax.plot(prof["line"], prof["exact"], color="tab:green", lw=1.3, label=f"reference {prof['output']} (learned control)")
        ax.set(xlabel=prof["axis"], ylabel=prof["output"], title="tracked output along the objective points")
    for ax in axes[0]:
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, out / "profiles.png", data)


def _save(fig: Any, path: Path, data: dict[str, Any], tight: bool = True) -> Path:
    attrs = data["attrs"]
    fig.suptitle(f"{attrs.get('problem')} · {attrs.get('method')} · {data['rows']} outer steps · {attrs.get('status')}", fontsize=10)
    if tight:
        fig.tight_layout()
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path


PLOTS: tuple[Callable[[dict[str, Any], Path], Path | None], ...] = (
    plot_objective, plot_loss_terms, plot_control, plot_state_error, plot_field, plot_profiles, plot_metrics, plot_images)


HISTORY_PLOTS = (plot_objective, plot_loss_terms, plot_metrics)


def plot_run(run_dir: str | Path) -> list[Path]:
    """Every figure that applies to this run, written next to its run file (a run stopped
    before its first outer step has no history to draw, only its control and state)."""
    from . import PinnctlError

    data = runs.read(run_dir)
    out = data["path"].parent
    plots = [fn for fn in PLOTS if data["rows"] > 0 or fn not in HISTORY_PLOTS]
    paths = [p for p in (fn(data, out) for fn in plots) if p is not None]
    if not paths:
        raise PinnctlError(f"run {out} has no outer steps and no saved state yet (status "
                           f"'{data['attrs'].get('status')}'): nothing to plot")
    return paths
