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


def _pretrain_bar(total: int, quiet: bool) -> tuple[Callable[[int, float], None] | None, Callable[[], None]]:
    if quiet or total == 0:
        return None, lambda: None
    from tqdm import tqdm

    bar = tqdm(total=total, desc="pretrain state", unit="step", file=sys.stderr, mininterval=1.0)

    def progress(k: int, loss: float) -> None:
        bar.update(1)
        if k % 50 == 0:
            bar.set_postfix(loss=f"{loss:.3e}")

    return progress, bar.close


def _wrap_close(progress: Callable[[int, float], None] | None, close: Callable[[], None], total: int):
    if progress is None:
        return None

    def wrapped(k: int, loss: float) -> None:
        progress(k, loss)
        if k == total - 1:
            close()

    return wrapped


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
    progress, close = _pretrain_bar(cfg.pretrain.steps, quiet)
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
    progress, close = _pretrain_bar(cfg.pretrain.steps if resume is None else 0, quiet)

    def callback(rec: Any) -> None:
        runs.append(run_file, rec)
        _print(format_record(rec, j_star), quiet=quiet)

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
            callback=callback, pretrain_progress=_wrap_close(progress, close, cfg.pretrain.steps), resume=resume,
            checkpoint=checkpoint, checkpoint_every=cfg.checkpoint_every,
        )
    close()
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


def _discover_problem(name: str, params: dict[str, Any]) -> Any:
    from .discovery import discover

    return discover().get(name).build(**params)


def resolve_config(problem: str | None, *, method: str | None = None, preset: str = "quick", seed: int | None = None,
                   config: str | Path | None = None, sets: dict[str, Any] | None = None) -> tuple[configmod.Config, Any]:
    """A fresh config (preset → problem defaults → TOML → overrides → explicit arguments), with the
    problem object when it was built on the way with the final parameters (else None)."""
    sets = sets or {}
    if problem is None:
        raise PinnctlError("solve needs a problem name (or --resume RUN_DIR)")
    top = {"problem": problem, "seed": seed, "method.name": method}
    cfg = configmod.resolve(preset, config, sets, **top)
    params = dict(cfg.params)
    problem_obj = _discover_problem(cfg.problem, params)
    if hasattr(problem_obj, "config_defaults"):
        defaults = problem_obj.config_defaults(preset, cfg.method.name)
        cfg = configmod.resolve(preset, config, sets, problem_defaults=defaults, **top)
    return cfg, (problem_obj if cfg.params == params else None)


def resolve_resume(path: str | Path, *, problem: str | None = None,
                   sets: dict[str, Any] | None = None) -> tuple[configmod.Config, dict[str, Any]]:
    """The run's own config plus overrides (e.g. ``outer.steps``), and its last checkpoint."""
    from . import checkpoint as ckpt
    from . import runs

    snap = ckpt.load(Path(path))
    cfg = configmod.from_dict(runs.read(path)["attrs"]["config"])
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
        problem_obj = None
    if parallel:
        cfg.parallel.enabled = True
    if cfg.parallel.enabled:
        from . import parallel as par

        par.check_config(cfg.parallel)  # before any run directory or process exists
        if par.torchrun_rank() == 1:  # torchrun's second process is the curvature worker
            par.check_torchrun_world()
            par.worker_main(configmod.to_dict(cfg))
            return None
    validate(cfg, snap)
    if problem_obj is None:
        problem_obj = _discover_problem(cfg.problem, cfg.params)
    _print(f"pinnctl solve {cfg.problem} --method {cfg.method.name} (preset {preset})", quiet=quiet)
    _print("config: " + configmod.to_json(cfg), quiet=quiet)
    run_dir = Path(resume) if snap is not None else create_run_dir(cfg, out)
    summary = execute(cfg, problem_obj, run_dir, quiet=quiet, snap=snap)
    finalise(cfg, run_dir, summary, quiet=quiet)
    return Run(run_dir)


# ----------------------------------------------------------------------------- public functions


def solve(problem: str, method: str | None = "nhgd", preset: str = "quick", seed: int | None = 0,
          out: str | Path | None = None, parallel: bool = False, quiet: bool = False, *,
          config: str | Path | None = None, **overrides: Any) -> "Run":
    """Solve ``problem`` with ``method`` and return the finished :class:`Run`.

    ``overrides`` are config keys, nested (``outer={"steps": 100}``) or dotted
    (``**{"outer.steps": 100}``); ``config`` is a TOML file of overrides. ``method=None``
    or ``seed=None`` take the value from the config file or preset.
    """
    run = launch(problem, method=method, preset=preset, seed=seed, out=out, parallel=parallel, quiet=quiet,
                 config=config, sets=flatten_overrides(overrides))
    assert run is not None
    return run


def flatten_overrides(overrides: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested or dotted keyword overrides as dotted config keys (dicts inside a free-form
    section such as ``method.options`` or ``params`` stay keys of that section)."""
    out: dict[str, Any] = {}
    for key, value in overrides.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten_overrides(value, name + "."))
        else:
            out[name] = value
    return out


class Run:
    """A run directory: its config, history and summary, read from the files it wrote."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r})"
