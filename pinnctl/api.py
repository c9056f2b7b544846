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

from . import PinnctlError, one_line
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

    def outer(self, rec: Any, j_star: float | None, first: int, total: int, measure: str = "grid") -> None:
        """One finished outer step (``first`` is where a resumed run started)."""
        if self.quiet:
            return
        line = format_record(rec, j_star, measure)
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


def format_record(rec: Any, j_star: float | None, measure: str = "grid") -> str:
    """The per-outer-step line (terminal) and progress-bar text (notebooks)."""
    parts = [f"outer {rec.step + 1:4d}", f"{'J_pinn' if rec.certified else 'f'} {rec.outer_loss:.4e}"]
    if rec.certified:
        jg = rec.certified.get(measure)
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
    from .problem import compile_problem, constant_control, objective_points
    from .solve_setup import sampling_config

    problem = compile_problem(problem_obj, sampling_config(cfg), seed=cfg.seed, device=cfg.device)
    v = constant_control(problem_obj.control, cfg.forward.control).to(problem.v0)
    state = InnerState.create(problem.theta0, cfg.pretrain)
    progress, close = Progress(quiet).pretrain(cfg.pretrain.steps)
    start = time.perf_counter()
    loss = train_state(problem, state, v, cfg.pretrain.steps, progress)
    close()
    elapsed = time.perf_counter() - start
    summary: dict[str, Any] = {"inner_loss": loss, "train_time_s": elapsed, "control": cfg.forward.control}
    ref = problem.info.get("reference")
    pts = objective_points(problem_obj)
    exact = None if ref is None else ref.state(problem.info["encode_control"](v), pts)
    if exact is not None:
        with torch.no_grad():
            x = torch.as_tensor(pts, dtype=state.theta.dtype, device=state.theta.device)
            u = problem_obj.state.forward(state.theta.detach(), x)[:, 0].double().cpu().numpy()
        summary["rel_l2_error"] = float(np.linalg.norm(u - exact) / np.linalg.norm(exact))
        summary["max_abs_error"] = float(np.abs(u - exact).max())
    _print(f"forward solve: control f ≡ {cfg.forward.control}, {cfg.pretrain.steps} Adam steps in {elapsed:.1f} s, "
           f"final PINN loss {loss:.3e}", quiet=quiet)
    if "rel_l2_error" in summary:
        _print(f"state error vs reference on the objective grid: relative L2 {summary['rel_l2_error']:.3e}, "
               f"max |u-u_exact| {summary['max_abs_error']:.3e}", quiet=quiet)
    return summary


def solve_bilevel(cfg: configmod.Config, setup: Any, quiet: bool, out: Path,
                  resume: dict[str, Any] | None = None) -> dict[str, Any]:
    """Algorithm 1 with the run file appended every outer step and atomic checkpoints (which
    also carry the config and the history, so a lost run.h5 is rebuilt on resume). ``setup``
    is ``solve_setup.build``'s, made before the run folder was touched."""
    import numpy as np
    import torch

    from . import checkpoint as ckpt
    from . import runs
    from .bilevel import run

    problem = setup.problem
    ref, measure = problem.info.get("reference"), problem.info.get("measure") or "grid"
    optimum = ref.optimum(measure) if ref is not None and problem.certify is not None else None
    if optimum is not None:
        _print(f"reference optimum ({measure} measure): J* = {optimum.J:.6e}", quiet=quiet)
    j_star = optimum.J if optimum is not None else None
    run_file = out / runs.RUN_FILE
    if resume is None:
        runs.create(out, config=configmod.to_dict(cfg), j_star=j_star, measure=measure)
        if optimum is not None and optimum.t is not None:
            runs.write_reference(run_file, optimum.t, optimum.f)
    else:
        if not _readable(run_file):
            _rebuild_run_file(out, cfg, resume, j_star, optimum, measure)
            _print(f"{run_file} was missing or unreadable: rebuilt from the checkpoint's config and history", quiet=quiet)
        runs.truncate(run_file, int(resume["outer_step"]))
        runs.set_status(run_file, "running", config=configmod.to_dict(cfg))
        _print(f"resuming {out} after outer step {resume['outer_step']}", quiet=quiet)
    shown = Progress(quiet)
    progress, close = shown.pretrain(cfg.pretrain.steps if resume is None else 0)
    first = int(resume["outer_step"]) if resume is not None else 0

    def callback(rec: Any) -> None:
        runs.append(run_file, rec)
        shown.outer(rec, j_star, first, cfg.outer.steps, measure)

    def save_state(theta: Any, v: Any) -> None:
        samples = problem.control_samples(v) if problem.control_samples is not None else None
        runs.write_state(run_file, theta=theta.cpu().numpy(), v=v.cpu().numpy(), control=samples,
                         image_shape=problem.info.get("v_image_shape"))

    def checkpoint(snap: dict[str, Any]) -> None:
        rows = int(snap["outer_step"])
        history = {k: torch.from_numpy(np.ascontiguousarray(a[:rows])) for k, a in runs.history_arrays(run_file).items()}
        ckpt.save(out / ckpt.CHECKPOINT, {"config": configmod.to_json(cfg), "history": history, **snap})
        save_state(snap["theta"], snap["v"])

    worker: dict[str, Any] = {}
    with _estimator(cfg, setup.estimator, quiet, worker) as estimator:
        result = run(
            problem, estimator, pretrain=cfg.pretrain, inner=cfg.inner, outer=cfg.outer, certify_every=cfg.certify_every,
            callback=callback, pretrain_progress=progress, resume=resume,
            checkpoint=checkpoint, checkpoint_every=cfg.checkpoint_every, metrics_every=cfg.metrics_every,
            metrics_tail=cfg.metrics_tail,
        )
    close()
    shown.close()
    save_state(result.theta, result.v)
    history = runs.history_records(runs.read(run_file))
    last = history[-1] if history else None
    summary: dict[str, Any] = {
        "final_outer_loss": last["outer_loss"] if last else None,
        "certified": last["certified"] if last else {},
        "J_star": j_star,
        "measure": measure,
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
        best = min(certified, key=lambda r: r["certified"][measure])
        summary["best_certified"] = {"step": int(best["step"]), **best["certified"]}
    if last and last["certified"] and j_star is not None:
        jg = last["certified"][measure]
        ratio = f" = {jg / j_star:.4f}·J*" if j_star > 0 else f" (J* = {j_star:g})"
        _print(f"done: certified J = {jg:.6e}{ratio} ({measure} measure), PINN J = {last['outer_loss']:.6e}, "
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
    from .discovery import find

    return find(name).build(**params)


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
    """The run's own config (the one its checkpoint was written with) plus overrides (e.g.
    ``outer.steps``), checked compatible with the run, and its last checkpoint."""
    from . import checkpoint as ckpt

    snap = ckpt.load(Path(path))
    old = _checkpoint_config(snap, Path(path))
    if problem is not None and not isinstance(problem, str):
        problem = _problem_name(problem)
    if problem is not None and problem != old.problem:
        raise PinnctlError(f"--resume {path} is a run of '{old.problem}', not '{problem}'")
    cfg = configmod.from_dict(configmod.to_dict(old))
    for key, value in (sets or {}).items():
        configmod.set_key(cfg, key, value)
    configmod.check_resume(old, cfg, path)
    return cfg, snap


def _checkpoint_config(snap: dict[str, Any], run_dir: Path) -> configmod.Config:
    """The config a checkpoint was written with (older checkpoints: the run file's)."""
    from . import runs

    if isinstance(snap.get("config"), str):
        return configmod.from_dict(json.loads(snap["config"]))
    return configmod.from_dict(runs.read(run_dir)["attrs"]["config"])


def validate(cfg: configmod.Config, snap: dict[str, Any] | None) -> None:
    """Everything that can be refused before a run directory or a process exists."""
    from .hypergrad import known_methods
    from .solve_setup import check_devices

    from .hypergrad import make_method

    known = sorted(set(known_methods()) | set(SOLVE_MODES))
    if cfg.method.name not in known:
        raise PinnctlError(f"unknown method '{cfg.method.name}'; known: {', '.join(known)}")
    bilevel = cfg.method.name not in SOLVE_MODES
    if snap is not None and not bilevel:
        raise PinnctlError(f"method '{cfg.method.name}' runs are not resumable")
    configmod.validate(cfg, bilevel=bilevel)
    check_devices(cfg)
    if bilevel:
        make_method(cfg.method.name, cfg.method.options)  # unknown or bad method options


def compile_setup(cfg: configmod.Config, problem_obj: Any, snap: dict[str, Any] | None = None,
                  run_dir: str | Path | None = None) -> Any:
    """The compiled problem and estimator (``solve_setup.build``). Compiling evaluates the
    problem's residuals, targets and controls once, so a broken problem file is a one-line
    error before any run folder exists; a resumed checkpoint must fit the nets it builds."""
    from . import solve_setup

    try:
        setup = solve_setup.build(cfg, problem_obj)
    except PinnctlError:
        raise
    except Exception as e:
        raise PinnctlError(f"problem '{cfg.problem}' does not compile: {one_line(e)}") from None
    for key, what, now in (("theta", "state net", setup.problem.theta0), ("v", "control", setup.problem.v0)):
        if snap is not None and snap[key].numel() != now.numel():
            raise PinnctlError(f"--resume {run_dir}: the checkpoint's {what} has {snap[key].numel()} parameters, the "
                               f"problem now builds {now.numel()} (was its file changed?); start a new run")
    return setup


def create_run_dir(cfg: configmod.Config, out: str | Path | None) -> Path:
    """The run directory: ``out`` (checked here, created and locked by ``runs.hold``), or a new
    runs/<problem>-<method>-<timestamp>[-N]."""
    from . import runs

    if out:
        return runs.check_out(out)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return runs.default_dir(Path("runs") / f"{cfg.problem}-{cfg.method.name}-{stamp}")


def execute(cfg: configmod.Config, problem_obj: Any, out: Path, *, quiet: bool,
            snap: dict[str, Any] | None = None, setup: Any = None) -> dict[str, Any]:
    """Run the solve; on failure or Ctrl-C mark the run (summary.json, run file status) and re-raise;
    an unexpected exception becomes a one-line RunError, its traceback kept in error.txt."""
    bilevel = cfg.method.name not in SOLVE_MODES
    if not bilevel:
        (out / "config.json").write_text(configmod.to_json(cfg))
    try:
        if bilevel:
            return solve_bilevel(cfg, setup if setup is not None else compile_setup(cfg, problem_obj), quiet, out,
                                 resume=snap)
        return SOLVE_MODES[cfg.method.name](cfg, problem_obj, quiet, out)
    except (Exception, KeyboardInterrupt) as e:
        error = _record_failure(out, cfg, bilevel, e)
        if isinstance(e, (PinnctlError, KeyboardInterrupt)):
            raise
        raise error from e


def _record_failure(out: Path, cfg: configmod.Config, bilevel: bool, e: BaseException) -> Any:
    """Status, summary.json and, for an unexpected exception, error.txt with its traceback;
    returns the one-line RunError that reports an unexpected exception."""
    import traceback

    from . import RunError
    from . import checkpoint as ckpt
    from . import runs
    from .bilevel import DivergenceError
    from .signals import Terminated

    if isinstance(e, KeyboardInterrupt):
        status, message = "interrupted", "terminated (SIGTERM)" if isinstance(e, Terminated) else "interrupted (Ctrl-C)"
    else:
        status = "diverged" if isinstance(e, DivergenceError) else "failed"
        message = str(e) if isinstance(e, PinnctlError) else one_line(e)
    error = RunError(message)
    if not isinstance(e, (PinnctlError, KeyboardInterrupt)):
        (out / "error.txt").write_text("".join(traceback.format_exception(e)))
        error = RunError(f"run failed: {message} (traceback in {out / 'error.txt'})")
    (out / "summary.json").write_text(json.dumps({"status": status, "error": message, "config": configmod.to_dict(cfg)},
                                                 indent=1))
    if bilevel and (out / runs.RUN_FILE).exists():
        runs.set_status(out / runs.RUN_FILE, status, error=message)
        if (out / ckpt.CHECKPOINT).exists():
            hint = f"last good checkpoint in {out / ckpt.CHECKPOINT} (continue with: pinnctl solve --resume {out})"
        else:
            hint = "it stopped before its first checkpoint (during pretraining): nothing to resume; start it again with --overwrite"
        _print(f"run stopped ({status}); history in {out / runs.RUN_FILE}, {hint}", quiet=False)
    return error



def _readable(run_file: Path) -> bool:
    from . import runs

    try:
        runs.read(run_file)
        return True
    except PinnctlError:
        return False


def _rebuild_run_file(out: Path, cfg: configmod.Config, snap: dict[str, Any], j_star: float | None, optimum: Any,
                      measure: str) -> None:
    from . import runs

    run_file = out / runs.RUN_FILE
    if run_file.exists():  # unreadable: kept beside the new one, never deleted
        run_file.replace(run_file.with_suffix(".h5.unreadable"))
    history = {k: v.numpy() for k, v in snap.get("history", {}).items()}
    runs.rebuild(out, config=configmod.to_dict(cfg), history=history, j_star=j_star, measure=measure)
    if optimum is not None and optimum.t is not None:
        runs.write_reference(run_file, optimum.t, optimum.f)


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
           sets: dict[str, Any] | None = None, resume: str | Path | None = None,
           overwrite: bool = False) -> "Run | None":
    """The one solve path (``solve``, ``Run.resume`` and the CLI all come here); returns None
    in torchrun's second process, which serves as the curvature worker. Nothing is written
    before the config, the method options and the compiled problem are checked; the run
    folder is then locked for the run's life (``runs.hold``), and a fresh run needs an empty
    one (``overwrite`` replaces the run in it)."""
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
        from . import dataparallel

        dataparallel.check(cfg.parallel, cfg.inner.optimizer)
        rank = par.torchrun_rank()
        if rank:  # under torchrun: the last rank is the curvature worker, the others data ranks
            par.check_torchrun_world(cfg.parallel.data_ranks)
            if rank == cfg.parallel.data_ranks:
                par.worker_main(configmod.to_dict(cfg))
            else:
                dataparallel.follower_main(configmod.to_dict(cfg))
            return None
    validate(cfg, snap)
    if problem_obj is None:
        problem_obj = _discover_problem(cfg.problem, cfg.params)
    setup = compile_setup(cfg, problem_obj, snap, resume) if cfg.method.name not in SOLVE_MODES else None
    _print(f"pinnctl solve {cfg.problem} --method {cfg.method.name} (preset {preset})", quiet=quiet)
    _print("config: " + configmod.to_json(cfg), quiet=quiet or in_notebook())  # notebooks: Run.config has it
    from . import runs

    run_dir = Path(resume) if snap is not None else create_run_dir(cfg, out)
    with runs.hold(run_dir, fresh=snap is None, overwrite=overwrite):
        summary = execute(cfg, problem_obj, run_dir, quiet=quiet, snap=snap, setup=setup)
        finalise(cfg, run_dir, summary, quiet=quiet)
    return Run(run_dir, problem=None if isinstance(problem, str) else problem)


# ----------------------------------------------------------------------------- public functions


def solve(problem: Any, method: str | None = "nhgd", preset: str = "quick", seed: int | None = 0,
          out: str | Path | None = None, parallel: bool = False, quiet: bool = False, *,
          config: str | Path | None = None, options: dict[str, Any] | None = None, overwrite: bool = False,
          **overrides: Any) -> "Run":
    """Solve ``problem`` (a name from ``problems()``, or a problem object) with ``method``; return the finished Run.

    ``options`` are the method's own options (``{"variant": "fast"}`` for broyden);
    ``overrides`` are config keys, nested (``outer={"steps": 100}``) or dotted
    (``**{"outer.steps": 100}``); ``config`` is a TOML file of overrides. ``method=None`` or
    ``seed=None`` take the value from the config file or preset; ``out`` must be new or empty
    unless ``overwrite`` (then the run in it is replaced). Raises PinnctlError with the
    CLI's one-line message for an unknown problem, method or key.
    """
    sets = flatten_overrides(overrides)
    sets.update(flatten_overrides(options or {}, "method.options."))
    run = launch(problem, method=method, preset=preset, seed=seed, out=out, parallel=parallel, quiet=quiet,
                 config=config, sets=sets, overwrite=overwrite)
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


def _reference_of(problem: str, params: dict[str, Any]) -> Any:
    from .problem import reference_of

    ref = reference_of(_discover_problem(problem, params))
    if ref is None:
        raise PinnctlError(f"problem '{problem}' has no reference solver")
    return ref


def reference(problem: str, measure: str = "grid", **params: Any) -> Any:
    """The exact optimum of ``problem`` from its classical solver: ``.J`` (J* on ``measure``) and,
    for curve controls, ``.t``, ``.f`` (f*) and ``.control()``."""
    return _reference_of(problem, params).optimum(measure)


def reference_report(problem: str, **params: Any) -> str:
    """The reference solver's text report (what ``pinnctl reference`` prints)."""
    return _reference_of(problem, params).report()


class History(dict):
    """One numpy array per recorded quantity, one entry per outer step: ``step``, ``outer_loss``,
    ``certified/<measure>``, ``inner_terms/<name>``, ``info/<diagnostic>``, ``metrics/<name>``, timings."""

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
        """J* on the run's certified measure (``measure``), when the problem has a reference."""
        from . import runs

        return runs.optimum_of(self._data()["attrs"])[0]

    @property
    def measure(self) -> str:
        """The certified measure J and J* are reported on (``grid`` for heat2d)."""
        from . import runs

        return runs.optimum_of(self._data()["attrs"])[1]

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

    def __init__(self, rows: list[dict[str, Any]], j_star: float | None, table: str, figure: Path,
                 measure: str = "grid") -> None:
        self.rows, self.j_star, self.table, self.figure, self.measure = rows, j_star, table, figure, measure

    def __repr__(self) -> str:
        return self.table

    def _repr_html_(self) -> str:
        import base64
        import html

        png = base64.b64encode(self.figure.read_bytes()).decode()
        head = f"<p>J* = {self.j_star:.6e} ({self.measure} measure, exact reference)</p>" if self.j_star else ""
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
    measure = loaded[0].measure
    rows = cmp.table_rows(loaded, j_star, target)
    figure = Path(out) if out else loaded[0].path.parent / "compare.png"
    cmp.plot(loaded, optimum, figure)
    figure.with_suffix(".json").write_text(json.dumps({"J_star": j_star, "measure": measure, "rows": rows}, indent=1))
    return Comparison(rows, j_star, cmp.format_table(rows, target), figure, measure)


def in_notebook() -> bool:
    """Whether we run inside a Jupyter kernel (progress bars and figures then render inline)."""
    shell = sys.modules.get("IPython")
    ip = shell.get_ipython() if shell is not None and hasattr(shell, "get_ipython") else None
    return ip is not None and "IPKernelApp" in getattr(ip, "config", {})
