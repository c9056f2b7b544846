"""The Python API: everything the CLI does, as functions that return objects.

``solve`` runs one problem with one method and returns a :class:`Run`; the CLI
(``pinnctl.cli``) only parses arguments and prints. A solve goes through five separate
steps, each its own function, so that run-folder locking, validation and signal handling
have one place to live: resolve the config → validate it → create the run directory →
run → finalise.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from . import PinnctlError
from . import config as configmod


def _print(*args: Any, quiet: bool = False) -> None:
    if not quiet:
        print(*args, flush=True)


# ----------------------------------------------------------------------------- progress


def _bar_class(notebook: bool) -> Any:
    """tqdm's notebook widget in Jupyter (its text bar there without ipywidgets), the terminal one elsewhere."""
    if notebook:
        try:
            import ipywidgets  # noqa: F401 - tqdm.notebook needs it

            from tqdm.notebook import tqdm
        except ImportError:
            from tqdm.std import tqdm
        return tqdm
    from tqdm import tqdm

    return tqdm


class Progress:
    """What a solve shows while it runs: a pretraining bar, then per outer step the record line
    (terminal) or one bar whose text is that line (notebook). ``quiet`` shows nothing."""

    def __init__(self, quiet: bool, notebook: bool | None = None) -> None:
        self.quiet = quiet
        self.notebook = in_notebook() if notebook is None else notebook
        self.bar: Any = None

    def _file(self) -> Any:
        return sys.stdout if self.notebook else sys.stderr

    def pretrain(self, total: int) -> tuple[Callable[[int, float], None] | None, Callable[[], None]]:
        """A callback per pretraining step (the bar closes itself after the last) and the bar's close."""
        if self.quiet or total == 0:
            return None, lambda: None
        bar = _bar_class(self.notebook)(total=total, desc="pretrain state", unit="step", file=self._file(), mininterval=1.0)

        def progress(k: int, loss: float) -> None:
            bar.update(1)
            if k % 50 == 0:
                bar.set_postfix(loss=f"{loss:.3e}")
            if k == total - 1:
                bar.close()

        return progress, bar.close

    def outer(self, rec: Any, j_star: float | None, first: int, total: int) -> None:
        """One finished outer step (``first`` is where a resumed run started)."""
        if self.quiet:
            return
        line = format_record(rec, j_star)
        if not self.notebook:
            print(line, flush=True)
            return
        if self.bar is None:
            self.bar = _bar_class(True)(total=total, initial=first, desc="outer", unit="step", file=self._file())
        self.bar.update(1)
        self.bar.set_postfix_str(line.split("  loss ")[0], refresh=True)

    def close(self) -> None:
        """Close the outer-step bar (a no-op in a terminal)."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def format_record(rec: Any, j_star: float | None) -> str:
    """The per-outer-step line (terminal) and progress-bar text (notebooks)."""
    parts = [f"outer {rec.step + 1:4d}", f"{'J_pinn' if rec.certified else 'f'} {rec.outer_loss:.4e}"]
    if rec.certified:
        jg = rec.certified.get("grid")
        parts.append(f"J_cert {jg:.4e}" + (f" ({jg / j_star:.3f}·J*)" if j_star else ""))
    parts.append("loss " + " ".join(f"{k}={v:.2e}" for k, v in rec.inner_terms.items()))
    if rec.metrics:
        parts.append(" ".join(f"{k} {v:.4f}" for k, v in rec.metrics.items()))
    parts.append(f"|h| {rec.hypergrad_norm:.2e}")
    parts.append(f"t {rec.wall_time:.1f}s (inner {rec.inner_time:.2f} curv {rec.curvature_time:.2f} hyper {rec.hypergrad_time:.2f})")
    return "  ".join(parts)


# ----------------------------------------------------------------------------- the two solve modes


def solve_forward(cfg: configmod.Config, problem_obj: Any, quiet: bool, out: Path) -> dict[str, Any]:
    """Train the state PINN for a fixed constant control and measure it against the reference."""
    import numpy as np
    import torch

    from .bilevel import InnerState, train_state
    from .problem import compile_problem, constant_control, load_reference, objective_points
    from .solve_setup import sampling_config

    problem = compile_problem(problem_obj, sampling_config(cfg), seed=cfg.seed)
    v = constant_control(problem_obj.control, cfg.forward.control)
    state = InnerState.create(problem.theta0, cfg.pretrain)
    progress, close = Progress(quiet).pretrain(cfg.pretrain.steps)
    start = time.perf_counter()
    loss = train_state(problem, state, v, cfg.pretrain.steps, progress)
    close()
    elapsed = time.perf_counter() - start
    summary: dict[str, Any] = {"inner_loss": loss, "train_time_s": elapsed, "control": cfg.forward.control}
    if problem_obj.reference is not None:
        pts = objective_points(problem_obj)
        with torch.no_grad():
            u = problem_obj.state.forward(state.theta.detach(), torch.as_tensor(pts, dtype=torch.float32))[:, 0].double().numpy()
        c = float(cfg.forward.control)
        exact = load_reference(problem_obj.reference).state_at(lambda t: np.full_like(t, c), pts, **problem_obj.params)
        summary["rel_l2_error"] = float(np.linalg.norm(u - exact) / np.linalg.norm(exact))
        summary["max_abs_error"] = float(np.abs(u - exact).max())
    _print(f"forward solve: control f ≡ {cfg.forward.control}, {cfg.pretrain.steps} Adam steps in {elapsed:.1f} s, "
           f"final PINN loss {loss:.3e}", quiet=quiet)
    if "rel_l2_error" in summary:
        _print(f"state error vs reference on the objective grid: relative L2 {summary['rel_l2_error']:.3e}, "
               f"max |u-u_exact| {summary['max_abs_error']:.3e}", quiet=quiet)
    return summary


def solve_bilevel(cfg: configmod.Config, problem_obj: Any, quiet: bool, out: Path,
                  resume: dict[str, Any] | None = None) -> dict[str, Any]:
    """Algorithm 1 with the run file appended every outer step and atomic checkpoints."""
    import numpy as np

    from . import checkpoint as ckpt
    from . import runs, solve_setup
    from .bilevel import run
    from .problem import load_reference

    setup = solve_setup.build(cfg, problem_obj)
    problem = setup.problem
    optimum = None
    if problem_obj.reference is not None and problem.certify is not None:
        optimum = load_reference(problem_obj.reference).optimum(**problem_obj.params, measure="grid")
        _print(f"reference optimum (grid measure): J* = {optimum.J:.6e}", quiet=quiet)
    j_star = optimum.J if optimum is not None else None
    run_file = out / runs.RUN_FILE
    if resume is None:
        runs.create(out, config=configmod.to_dict(cfg), j_star=j_star)
        if optimum is not None and optimum.t is not None:
            runs.write_reference(run_file, optimum.t, optimum.f)
    else:
        runs.truncate(run_file, int(resume["outer_step"]))
        runs.set_status(run_file, "running", config=configmod.to_dict(cfg))
        _print(f"resuming {out} after outer step {resume['outer_step']}", quiet=quiet)
    shown = Progress(quiet)
    progress, close = shown.pretrain(cfg.pretrain.steps if resume is None else 0)
    first = int(resume["outer_step"]) if resume is not None else 0

    def callback(rec: Any) -> None:
        runs.append(run_file, rec)
        shown.outer(rec, j_star, first, cfg.outer.steps)

    def save_state(theta: Any, v: Any) -> None:
        samples = problem.control_samples(v) if problem.control_samples is not None else None
        runs.write_state(run_file, theta=theta.cpu().numpy(), v=v.cpu().numpy(), control=samples,
                         image_shape=problem.info.get("v_image_shape"))

    def checkpoint(snap: dict[str, Any]) -> None:
        ckpt.save(out / ckpt.CHECKPOINT, {"config": configmod.to_json(cfg), **snap})
        save_state(snap["theta"], snap["v"])

    worker: dict[str, Any] = {}
    with _estimator(cfg, setup.estimator, quiet, worker) as estimator:
        result = run(
            problem, estimator, pretrain=cfg.pretrain, inner=cfg.inner, outer=cfg.outer, certify_every=cfg.certify_every,
            callback=callback, pretrain_progress=progress, resume=resume,
            checkpoint=checkpoint, checkpoint_every=cfg.checkpoint_every,
        )
    close()
    shown.close()
    save_state(result.theta, result.v)
    history = runs.history_records(runs.read(run_file))
    last = history[-1] if history else None
    summary: dict[str, Any] = {
        "final_outer_loss": last["outer_loss"] if last else None,
        "certified": last["certified"] if last else {},
        "J_star_grid": j_star,
        "outer_steps": len(history),
        "wall_time_s": last["wall_time"] if last else result.pretrain_time,
        "pretrain_time_s": result.pretrain_time,
    }
    if worker:
        summary["curvature_worker"] = worker
    if last and last["metrics"]:
        tail = history[-50:]  # the paper's figure: the mean over the last 50 outer steps
        summary["metrics_last50_mean"] = {k: float(np.mean([r["metrics"][k] for r in tail if k in r["metrics"]]))
                                          for k in last["metrics"]}
    for part in ("inner", "curvature", "hypergrad"):
        summary[f"mean_{part}_time_s"] = float(np.mean([r[f"{part}_time"] for r in history])) if history else None
    certified = [r for r in history if r["certified"]]
    if certified:
        best = min(certified, key=lambda r: r["certified"]["grid"])
        summary["best_certified"] = {"step": int(best["step"]), **best["certified"]}
    if last and last["certified"] and j_star is not None:
        jg = last["certified"]["grid"]
        ratio = f" = {jg / j_star:.4f}·J*" if j_star > 0 else f" (J* = {j_star:g})"
        _print(f"done: certified J = {jg:.6e}{ratio} (grid measure), PINN J = {last['outer_loss']:.6e}, "
               f"wall {summary['wall_time_s']:.1f} s", quiet=quiet)
    elif last:
        _print(f"done: outer loss f = {last['outer_loss']:.6e}, wall {summary['wall_time_s']:.1f} s", quiet=quiet)
    return summary


@contextlib.contextmanager
def _estimator(cfg: configmod.Config, estimator: Any, quiet: bool, stats: dict[str, Any]) -> Iterator[Any]:
    """The estimator itself (inline), or rank 0's proxy of the curvature worker (--parallel);
    the worker's message statistics go into ``stats``."""
    if not cfg.parallel.enabled:
        yield estimator
        return
    from .parallel import parallel_estimator

    with parallel_estimator(cfg, estimator, configmod.to_dict(cfg)) as remote:
        _print(f"curvature worker: {remote.channel.name}, stream {cfg.parallel.stream}, "
               f"at most {cfg.parallel.max_inflight} messages in flight", quiet=quiet)
        yield remote
        ch = remote.channel
        stats.update(messages=ch.sent, peak_inflight=ch.peak_inflight, max_inflight=ch.max_inflight,
                     backpressure_wait_s=ch.waited_s, stream=cfg.parallel.stream)
        _print(f"curvature worker: {remote.channel.sent} messages, peak {remote.channel.peak_inflight} in flight, "
               f"inner loop blocked {remote.channel.waited_s:.2f} s by back-pressure", quiet=quiet)


# Non-bilevel solve modes (no outer loop, no run file); everything else is a hypergradient method.
SOLVE_MODES: dict[str, Callable[[configmod.Config, Any, bool, Path], dict[str, Any]]] = {"forward": solve_forward}


# ----------------------------------------------------------------------------- solve: the five steps


def _problem_name(obj: Any) -> str:
    name = getattr(obj, "name", None)
    if not isinstance(name, str):
        raise PinnctlError(f"a problem must be a name or an object with a 'name' (a PDEProblem), got {type(obj).__name__}")
    return name


def _discover_problem(name: str, params: dict[str, Any]) -> Any:
    from .discovery import discover

    return discover().get(name).build(**params)


def resolve_config(problem: Any, *, method: str | None = None, preset: str = "quick", seed: int | None = None,
                   config: str | Path | None = None, sets: dict[str, Any] | None = None) -> tuple[configmod.Config, Any]:
    """A fresh config (preset → problem defaults → TOML → overrides → explicit arguments), with the
    problem object when it was built on the way with the final parameters (else None).
    ``problem`` is a name to discover or a problem object (then used as it is)."""
    sets = sets or {}
    if problem is None:
        raise PinnctlError("solve needs a problem name (or --resume RUN_DIR)")
    given = None if isinstance(problem, str) else problem
    top = {"problem": problem if given is None else _problem_name(given), "seed": seed, "method.name": method}
    cfg = configmod.resolve(preset, config, sets, **top)
    params = dict(cfg.params)
    problem_obj = _discover_problem(cfg.problem, params) if given is None else given
    if given is not None and params:
        raise PinnctlError("params overrides apply to problems found by name; build the object with the parameters instead")
    if hasattr(problem_obj, "config_defaults"):
        defaults = problem_obj.config_defaults(preset, cfg.method.name)
        cfg = configmod.resolve(preset, config, sets, problem_defaults=defaults, **top)
    if given is not None:
        cfg.params = dict(getattr(given, "params", {}))  # recorded in the run, as for a discovered problem
        return cfg, given
    return cfg, (problem_obj if cfg.params == params else None)


def resolve_resume(path: str | Path, *, problem: str | None = None,
                   sets: dict[str, Any] | None = None) -> tuple[configmod.Config, dict[str, Any]]:
    """The run's own config plus overrides (e.g. ``outer.steps``), and its last checkpoint."""
    from . import checkpoint as ckpt
    from . import runs

    snap = ckpt.load(Path(path))
    cfg = configmod.from_dict(runs.read(path)["attrs"]["config"])
    if problem is not None and not isinstance(problem, str):
        problem = _problem_name(problem)
    if problem is not None and problem != cfg.problem:
        raise PinnctlError(f"--resume {path} is a run of '{cfg.problem}', not '{problem}'")
    for key, value in (sets or {}).items():
        configmod.set_key(cfg, key, value)
    return cfg, snap


def validate(cfg: configmod.Config, snap: dict[str, Any] | None) -> None:
    """Everything that can be refused before a run directory or a process exists."""
    from .hypergrad import known_methods
    from .solve_setup import check_devices

    known = sorted(set(known_methods()) | set(SOLVE_MODES))
    if cfg.method.name not in known:
        raise PinnctlError(f"unknown method '{cfg.method.name}'; known: {', '.join(known)}")
    check_devices(cfg)
    if snap is not None and cfg.method.name in SOLVE_MODES:
        raise PinnctlError(f"method '{cfg.method.name}' runs are not resumable")


def create_run_dir(cfg: configmod.Config, out: str | Path | None) -> Path:
    """The run directory: ``out``, or runs/<problem>-<method>-<timestamp>."""
    if out:
        path = Path(out)
    else:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path = Path("runs") / f"{cfg.problem}-{cfg.method.name}-{stamp}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def execute(cfg: configmod.Config, problem_obj: Any, out: Path, *, quiet: bool,
            snap: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run the solve; on failure or Ctrl-C mark the run (summary.json, run file status) and re-raise."""
    from . import checkpoint as ckpt
    from . import runs

    bilevel = cfg.method.name not in SOLVE_MODES
    if not bilevel:
        (out / "config.json").write_text(configmod.to_json(cfg))
    try:
        if bilevel:
            return solve_bilevel(cfg, problem_obj, quiet, out, resume=snap)
        return SOLVE_MODES[cfg.method.name](cfg, problem_obj, quiet, out)
    except (PinnctlError, KeyboardInterrupt) as e:
        from .bilevel import DivergenceError

        status = "interrupted" if isinstance(e, KeyboardInterrupt) else ("diverged" if isinstance(e, DivergenceError) else "failed")
        (out / "summary.json").write_text(json.dumps({"status": status, "error": str(e), "config": configmod.to_dict(cfg)}, indent=1))
        if bilevel and (out / runs.RUN_FILE).exists():
            runs.set_status(out / runs.RUN_FILE, status, error=str(e))
            _print(f"run stopped ({status}); history in {out / runs.RUN_FILE}, last good checkpoint in {out / ckpt.CHECKPOINT} "
                   f"(continue with: pinnctl solve --resume {out})", quiet=False)
        raise


def finalise(cfg: configmod.Config, out: Path, summary: dict[str, Any], *, quiet: bool) -> dict[str, Any]:
    """summary.json and the run file's final status."""
    from . import runs

    bilevel = cfg.method.name not in SOLVE_MODES
    summary["status"] = "done"
    summary["config"] = configmod.to_dict(cfg)
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=float))
    if bilevel:
        runs.set_status(out / runs.RUN_FILE, "done", summary={k: v for k, v in summary.items() if k != "config"})
    _print(f"results: {out / 'summary.json'}" + (f", {out / runs.RUN_FILE} (plots: pinnctl plot {out})" if bilevel else ""),
           quiet=quiet)
    return summary


def launch(problem: str | None = None, *, method: str | None = None, preset: str = "quick", seed: int | None = None,
           out: str | Path | None = None, parallel: bool = False, quiet: bool = False, config: str | Path | None = None,
           sets: dict[str, Any] | None = None, resume: str | Path | None = None) -> "Run | None":
    """The one solve path (``solve``, ``Run.resume`` and the CLI all come here); returns None
    in torchrun's second process, which serves as the curvature worker."""
    if resume is None:
        cfg, problem_obj = resolve_config(problem, method=method, preset=preset, seed=seed, config=config, sets=sets)
        snap = None
    else:
        cfg, snap = resolve_resume(resume, problem=problem, sets=sets)
        problem_obj = None if problem is None or isinstance(problem, str) else problem
    if parallel:
        cfg.parallel.enabled = True
    if cfg.parallel.enabled:
        from . import parallel as par

        par.check_config(cfg.parallel)  # before any run directory or process exists
        if problem is not None and not isinstance(problem, str):
            raise PinnctlError("parallel=True needs a problem file: the curvature worker finds the problem by name "
                               "(save it under ./problems/ and pass its name)")
        if par.torchrun_rank() == 1:  # torchrun's second process is the curvature worker
            par.check_torchrun_world()
            par.worker_main(configmod.to_dict(cfg))
            return None
    validate(cfg, snap)
    if problem_obj is None:
        problem_obj = _discover_problem(cfg.problem, cfg.params)
    _print(f"pinnctl solve {cfg.problem} --method {cfg.method.name} (preset {preset})", quiet=quiet)
    _print("config: " + configmod.to_json(cfg), quiet=quiet or in_notebook())  # notebooks: Run.config has it
    run_dir = Path(resume) if snap is not None else create_run_dir(cfg, out)
    summary = execute(cfg, problem_obj, run_dir, quiet=quiet, snap=snap)
    finalise(cfg, run_dir, summary, quiet=quiet)
    return Run(run_dir, problem=None if isinstance(problem, str) else problem)


# ----------------------------------------------------------------------------- public functions


def solve(problem: Any, method: str | None = "nhgd", preset: str = "quick", seed: int | None = 0,
          out: str | Path | None = None, parallel: bool = False, quiet: bool = False, *,
          config: str | Path | None = None, options: dict[str, Any] | None = None, **overrides: Any) -> "Run":
    """Solve ``problem`` (a name from ``problems()``, or a problem object) with ``method``; return the finished Run.

    ``options`` are the method's own options (``{"variant": "fast"}`` for broyden);
    ``overrides`` are config keys, nested (``outer={"steps": 100}``) or dotted
    (``**{"outer.steps": 100}``); ``config`` is a TOML file of overrides. ``method=None`` or
    ``seed=None`` take the value from the config file or preset. Raises PinnctlError with the
    CLI's one-line message for an unknown problem, method or key.
    """
    sets = flatten_overrides(overrides)
    sets.update(flatten_overrides(options or {}, "method.options."))
    run = launch(problem, method=method, preset=preset, seed=seed, out=out, parallel=parallel, quiet=quiet,
                 config=config, sets=sets)
    assert run is not None  # None only in torchrun's worker process
    return run


def flatten_overrides(overrides: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested or dotted keyword overrides as dotted config keys."""
    out: dict[str, Any] = {}
    for key, value in overrides.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten_overrides(value, name + "."))
        else:
            out[name] = value
    return out


def load_run(path: str | Path) -> "Run":
    """The run in directory ``path`` (finished, interrupted or still running)."""
    path = Path(path)
    from . import runs

    if not (path / runs.RUN_FILE).exists() and not (path / "summary.json").exists():
        raise PinnctlError(f"{path} is not a run directory (no {runs.RUN_FILE})")
    return Run(path)


def problems() -> dict[str, str]:
    """Every discoverable problem (bundled, ./problems, $PINNCTL_PROBLEMS): name → one-line description."""
    from .discovery import discover

    found = discover()
    return {name: found.entries[name].description for name in sorted(found.entries)}


def _reference_of(problem: str, params: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    from .problem import load_reference

    obj = _discover_problem(problem, params)
    if obj.reference is None:
        raise PinnctlError(f"problem '{problem}' has no reference solver")
    return load_reference(obj.reference), dict(getattr(obj, "params", {}))


def reference(problem: str, measure: str = "grid", **params: Any) -> Any:
    """The exact optimum of ``problem`` from its classical solver: ``.J`` (J* on ``measure``) and,
    for curve controls, ``.t``, ``.f`` (f*) and ``.control()``."""
    ref, full = _reference_of(problem, params)
    return ref.optimum(**full, measure=measure)


def reference_report(problem: str, **params: Any) -> str:
    """The reference solver's text report (what ``pinnctl reference`` prints)."""
    ref, full = _reference_of(problem, params)
    return ref.report(**full)


class History(dict):
    """One numpy array per recorded quantity, one entry per outer step: ``step``, ``outer_loss``,
    ``certified/grid``, ``inner_terms/<name>``, ``info/<diagnostic>``, ``metrics/<name>``, timings."""

    def to_pandas(self) -> Any:
        """A DataFrame indexed by outer step (needs pandas, which pinnctl does not require)."""
        try:
            import pandas as pd
        except ImportError:
            raise PinnctlError("to_pandas needs pandas; install it (pip install pandas) or use the arrays") from None
        frame = pd.DataFrame({k: v for k, v in self.items() if k != "step"})
        frame.index = pd.Index(self["step"].astype(int), name="step") if "step" in self else frame.index
        return frame


class Run:
    """A run directory, read back from the files it wrote (``run.h5``, ``summary.json``)."""

    def __init__(self, path: str | Path, problem: Any = None) -> None:
        self.path = Path(path)
        self._problem = problem  # an in-memory problem object, kept for resume

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r})"

    def _data(self) -> dict[str, Any]:
        from . import runs

        return runs.read(self.path)

    @property
    def config(self) -> dict[str, Any]:
        """The resolved config the run used (as stored in its files)."""
        from . import runs

        if (self.path / runs.RUN_FILE).exists():
            return self._data()["attrs"]["config"]
        return json.loads((self.path / "config.json").read_text())

    @property
    def summary(self) -> dict[str, Any]:
        """summary.json: final and best certified J, J*, timings, status ({} while running)."""
        path = self.path / "summary.json"
        return json.loads(path.read_text()) if path.exists() else {}

    @property
    def status(self) -> str:
        """running, done, interrupted, diverged or failed (from the run file)."""
        return str(self._data()["attrs"].get("status", "unknown"))

    @property
    def history(self) -> History:
        """Per-outer-step arrays (see :class:`History`)."""
        return History(self._data()["history"])

    def to_pandas(self) -> Any:
        """``history`` as a pandas DataFrame."""
        return self.history.to_pandas()

    @property
    def certified(self) -> dict[str, float]:
        """The last certified objective per measure (the learned control plugged into the exact
        reference solver); {} for problems without a reference."""
        import math

        hist = self.history
        out = {}
        for key, values in hist.items():
            if key.startswith("certified/"):
                good = [float(x) for x in values if not math.isnan(float(x))]
                if good:
                    out[key.split("/", 1)[1]] = good[-1]
        return out

    @property
    def j_star(self) -> float | None:
        """J* of the grid measure, when the problem has a reference."""
        value = self._data()["attrs"].get("J_star_grid")
        return None if value is None else float(value)

    def control(self, t: Any) -> Any:
        """The learned control f(t) at times ``t``: linear interpolation of the 401 samples the run
        stored of its latest control (time controls only)."""
        import numpy as np

        arrays = self._data()["arrays"]
        if "control/t" not in arrays:
            raise PinnctlError(f"run {self.path} stored no sampled control (only time controls are sampled)")
        return np.interp(np.asarray(t, dtype=np.float64), arrays["control/t"], arrays["control/f"])

    def plot(self, show: bool | None = None) -> list[Path]:
        """Every figure that applies (objective, loss terms, control vs f*, state error, ...), written
        next to the run file; shown inline when called in a notebook (``show=None``)."""
        from .plots import plot_run

        paths = plot_run(self.path)
        if show or (show is None and in_notebook()):
            from IPython.display import Image, display

            for p in paths:
                display(Image(str(p)))
        return paths

    def resume(self, steps: int | None = None, *, quiet: bool = False, parallel: bool = False, **overrides: Any) -> "Run":
        """Continue from the last checkpoint to ``steps`` outer steps in total (same numbers as an
        uninterrupted run); ``overrides`` as in :func:`solve`."""
        sets = flatten_overrides(overrides)
        if steps is not None:
            sets["outer.steps"] = steps
        run = launch(self._problem, quiet=quiet, parallel=parallel, sets=sets, resume=self.path)
        assert run is not None
        return run



class Comparison:
    """What ``compare`` returns: the table rows, J*, the figure's path; shown as table and figure
    in a notebook."""

    def __init__(self, rows: list[dict[str, Any]], j_star: float | None, table: str, figure: Path) -> None:
        self.rows, self.j_star, self.table, self.figure = rows, j_star, table, figure

    def __repr__(self) -> str:
        return self.table

    def _repr_html_(self) -> str:
        import base64
        import html

        png = base64.b64encode(self.figure.read_bytes()).decode()
        head = f"<p>J* = {self.j_star:.6e} (grid measure, exact reference)</p>" if self.j_star else ""
        return f"{head}<pre>{html.escape(self.table)}</pre><img src='data:image/png;base64,{png}'/>"


def compare(runs: list[Any], target: float = 1.05, out: str | Path | None = None) -> Comparison:
    """Table and figure for several runs of one problem: certified J against wall-clock, controls
    against f*, time to reach ``target``·J*. ``runs`` are Run objects or run directories; the
    figure goes to ``out`` (default: compare.png beside the first run) with the table as JSON."""
    from . import comparison as cmp

    loaded = [cmp.load_run(r.path if isinstance(r, Run) else r) for r in runs]
    if not loaded:
        raise PinnctlError("compare needs at least one run")
    optimum = cmp.reference_optimum(loaded)
    j_star = optimum.J if optimum is not None else None
    rows = cmp.table_rows(loaded, j_star, target)
    figure = Path(out) if out else loaded[0].path.parent / "compare.png"
    cmp.plot(loaded, optimum, figure)
    figure.with_suffix(".json").write_text(json.dumps({"J_star_grid": j_star, "rows": rows}, indent=1))
    return Comparison(rows, j_star, cmp.format_table(rows, target), figure)


def in_notebook() -> bool:
    """Whether we run inside a Jupyter kernel (progress bars and figures then render inline)."""
    shell = sys.modules.get("IPython")
    ip = shell.get_ipython() if shell is not None and hasattr(shell, "get_ipython") else None
    return ip is not None and "IPKernelApp" in getattr(ip, "config", {})
