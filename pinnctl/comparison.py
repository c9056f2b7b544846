"""Compare finished (or interrupted) runs: a table and a figure against the exact optimum.

A run directory holds ``run.h5`` (``pinnctl.runs``: one history row per outer step,
appended as the run goes, so crashed and running runs can be compared too). Time to target is the first wall-clock time at which
the certified J falls to ``target``·J* on the run's certified measure (``grid`` for heat2d).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import PinnctlError


@dataclass
class Run:
    path: Path
    label: str
    config: dict[str, Any]
    history: list[dict[str, Any]]
    control: dict[str, list[float]] | None = None
    j_star: float | None = None
    status: str = "unknown"
    measure: str = "grid"
    extra: dict[str, Any] = field(default_factory=dict)


def load_run(path: str | Path) -> Run:
    from . import runs

    path = Path(path)
    if not (path / runs.RUN_FILE).exists():
        raise PinnctlError(f"{path} is not a run directory (no {runs.RUN_FILE})")
    data = runs.read(path)
    attrs, arrays = data["attrs"], data["arrays"]
    config = attrs["config"]
    method = config.get("method", {})
    variant = method.get("options", {}).get("variant") or method.get("options", {}).get("curvature")
    label = f"{method.get('name', path.name)}" + (f"-{variant}" if variant else "")
    control = {"t": arrays["control/t"].tolist(), "f": arrays["control/f"].tolist()} if "control/t" in arrays else None
    j_star, measure = runs.optimum_of(attrs)
    return Run(path=path, label=label, config=config, history=runs.history_records(data), control=control,
               j_star=j_star, status=str(attrs.get("status", "unknown")), measure=measure)


def _certified(rec: dict[str, Any], measure: str) -> float | None:
    return (rec.get("certified") or {}).get(measure)


def time_to_target(run: Run, j_star: float, target: float) -> float | None:
    for rec in run.history:
        jg = _certified(rec, run.measure)
        if jg is not None and jg <= target * j_star:
            return float(rec["wall_time"])
    return None


def table_rows(runs: list[Run], j_star: float | None, target: float = 1.05) -> list[dict[str, Any]]:
    rows = []
    for run, label in zip(runs, _labels(runs)):
        last = run.history[-1] if run.history else {}
        certified = [c for c in (_certified(r, run.measure) for r in run.history) if c is not None]
        jc = certified[-1] if certified else None
        best = min(certified, default=None)
        steps = len(run.history)
        rows.append({
            "run": label, "path": str(run.path), "status": run.status, "outer_steps": steps,
            "final_J_pinn": last.get("outer_loss"), "certified_J": jc, "best_certified_J": best,
            "J_over_Jstar": jc / j_star if jc is not None and j_star else None,
            "wall_time_s": last.get("wall_time"),
            "best_J_over_Jstar": best / j_star if best is not None and j_star else None,
            "time_per_outer_step_s": (last["wall_time"] - run.history[0]["wall_time"]) / (steps - 1) if steps > 1 else None,
            f"time_to_{target:g}Jstar_s": time_to_target(run, j_star, target) if j_star else None,
            "test_accuracy_last50": _last50(run, "test_accuracy"),
            "outer_loss_last50": (sum(r["outer_loss"] for r in run.history[-50:]) / len(run.history[-50:])
                                  if run.history else None),
        })
    return rows


def _last50(run: Run, metric: str) -> float | None:
    """Mean of a problem metric over the last 50 outer steps (the classification papers' figure)."""
    vals = [r["metrics"][metric] for r in run.history[-50:] if metric in (r.get("metrics") or {})]
    return sum(vals) / len(vals) if vals else None


def _accuracy(run: Run) -> list[tuple[float, float]]:
    return [(r["wall_time"], r["metrics"]["test_accuracy"]) for r in run.history if "test_accuracy" in (r.get("metrics") or {})]


def _labels(runs: list[Run]) -> list[str]:
    """Run labels, with the folder name added where two runs would share one (neumann10 and neumann40)."""
    names = [r.label for r in runs]
    return [f"{n} ({r.path.name})" if names.count(n) > 1 else n for n, r in zip(names, runs)]


def format_table(rows: list[dict[str, Any]], target: float = 1.05) -> str:
    """Runs certified against a reference get J, J/J* and the time to target·J*; runs without one
    (classification) get the outer loss and the last-50 means of test accuracy and loss instead of
    J columns that would all read '-'."""
    if not any(r["certified_J"] is not None for r in rows) and any(r.get("test_accuracy_last50") is not None for r in rows):
        head = f"{'run':<36} {'steps':>5} {'outer loss':>10} {'loss(last50)':>12} {'acc(last50)':>11} {'wall s':>8} {'s/step':>7}"
        lines = [head, "-" * len(head)]
        for r in rows:
            lines.append(f"{r['run']:<36} {r['outer_steps']:>5} {_f(r['final_J_pinn'], '.4f'):>10} "
                         f"{_f(r.get('outer_loss_last50'), '.4f'):>12} {_f(r.get('test_accuracy_last50'), '.4f'):>11} "
                         f"{_f(r['wall_time_s'], '.0f'):>8} {_f(r['time_per_outer_step_s'], '.2f'):>7}")
        return "\n".join(lines)
    key = f"time_to_{target:g}Jstar_s"
    head = f"{'run':<18} {'steps':>5} {'J_pinn':>10} {'J_cert':>10} {'J/J*':>7} {'best J/J*':>9} {'wall s':>8} {'s/step':>7} {'t(≤' + format(target, 'g') + 'J*) s':>12}"
    accuracy = any(r.get("test_accuracy_last50") is not None for r in rows)
    head += f" {'acc(last50)':>11}" if accuracy else ""
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['run']:<18} {r['outer_steps']:>5} {_f(r['final_J_pinn'], '.3e'):>10} {_f(r['certified_J'], '.3e'):>10} "
            f"{_f(r['J_over_Jstar'], '.3f'):>7} {_f(r['best_J_over_Jstar'], '.3f'):>9} {_f(r['wall_time_s'], '.0f'):>8} "
            f"{_f(r['time_per_outer_step_s'], '.2f'):>7} {_f(r[key], '.0f') if r[key] is not None else 'never':>12}"
            + (f" {_f(r.get('test_accuracy_last50'), '.4f'):>11}" if accuracy else ""))
    return "\n".join(lines)


def _f(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def reference_optimum(runs: list[Run]) -> Any | None:
    """f*, J* of the runs' problem (on their certified measure), if the problem has a reference solver."""
    problems = {r.config.get("problem") for r in runs}
    if len(problems) != 1 or None in problems:
        raise PinnctlError(f"compare needs runs of one problem, got: {', '.join(sorted(map(str, problems)))}")
    measures = {r.measure for r in runs}
    if len(measures) != 1:
        raise PinnctlError(f"compare needs runs certified on one measure, got: {', '.join(sorted(measures))}")
    from .discovery import find
    from .problem import reference_of

    problem = find(problems.pop()).build(**runs[0].config.get("params", {}))
    ref = reference_of(problem)
    return None if ref is None else ref.optimum(runs[0].measure)


def plot(runs: list[Run], optimum: Any | None, out: Path) -> Path:
    from matplotlib.figure import Figure  # no pyplot: a notebook's own backend stays as it is

    fig = Figure(figsize=(12, 4.5))
    ax1, ax2 = fig.subplots(1, 2)
    classification = not any(run.control for run in runs) and any(_accuracy(run) for run in runs)
    for run, label in zip(runs, _labels(runs)):
        t = [r["wall_time"] for r in run.history]
        kind = "outer loss" if classification else "PINN J"
        line, = ax1.semilogy(t, [r["outer_loss"] for r in run.history], lw=0.8, alpha=0.6, label=f"{label} {kind}")
        cert = [(r["wall_time"], c) for r in run.history if (c := _certified(r, run.measure)) is not None]
        if cert:
            ax1.semilogy(*zip(*cert), color=line.get_color(), lw=1.8, label=f"{label} certified J")
        if run.control:
            ax2.plot(run.control["t"], run.control["f"], color=line.get_color(), label=label)
        elif classification and _accuracy(run):  # the classification papers' figure: test accuracy against time
            ax2.plot(*zip(*_accuracy(run)), color=line.get_color(), lw=1.2, label=label)
    if optimum is not None:
        ax1.axhline(optimum.J, color="k", ls="--", lw=1, label="J* (exact)")
        ax2.plot(optimum.t, optimum.f, "k--", lw=1.5, label="f* (exact)")
    measure = runs[0].measure if runs else "grid"
    if classification:
        ax1.set(xlabel="wall-clock [s]", ylabel="outer loss (validation NLL)", title="outer loss vs wall-clock")
        ax2.set(xlabel="wall-clock [s]", ylabel="test accuracy", title="test accuracy vs wall-clock")
    else:
        ax1.set(xlabel="wall-clock [s]", ylabel=f"objective ({measure} measure)", title="objective vs wall-clock")
        ax2.set(xlabel="t", ylabel="f(t)", title="control")
    for ax in (ax1, ax2):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    return out
