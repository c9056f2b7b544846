"""`pinnctl` command line: list, reference, solve, compare, plot.

Errors are one line on stderr; usage errors exit with code 2, failed runs with 1.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from . import PinnctlError, RunError
from . import config as configmod

EXIT_USAGE = 2
EXIT_FAILED = 1


def _print(*args: Any, quiet: bool = False) -> None:
    if not quiet:
        print(*args, flush=True)


# ----------------------------------------------------------------------------- list


def cmd_list(args: argparse.Namespace) -> int:
    from .discovery import discover

    found = discover()
    width = max((len(n) for n in found.entries), default=0)
    for name in sorted(found.entries):
        entry = found.entries[name]
        print(f"{name:<{width}}  {entry.description}  [{entry.path}]")
    for err in found.errors:
        print(f"error: {err}", file=sys.stderr)
    return EXIT_FAILED if found.errors else 0


# ----------------------------------------------------------------------------- reference


def _problem_params(name: str, sets: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    from .discovery import discover

    entry = discover().get(name)
    problem = entry.build(**sets)
    return problem, dict(getattr(problem, "params", {}))


def cmd_reference(args: argparse.Namespace) -> int:
    from .problem import reference_of

    overrides = {k: v for k, v in vars(args).items() if k in ("nu",) and v is not None}
    problem, params = _problem_params(args.problem, overrides)
    ref = reference_of(problem)
    if ref is None:
        raise PinnctlError(f"problem '{args.problem}' has no reference solver")
    start = time.perf_counter()
    text = ref.report()
    print(text)
    print(f"(reference computed in {time.perf_counter() - start:.1f} s)")
    return 0


# ----------------------------------------------------------------------------- solve


def _run_dir(cfg: configmod.Config, out: str | None) -> Path:
    if out:
        path = Path(out)
    else:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path = Path("runs") / f"{cfg.problem}-{cfg.method.name}-{stamp}"
    path.mkdir(parents=True, exist_ok=True)
    return path


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


def solve_forward(cfg: configmod.Config, problem_obj: Any, quiet: bool, out: Path) -> dict[str, Any]:
    """Train the state PINN for a fixed constant control and measure it against the reference."""
    import numpy as np
    import torch

    from .bilevel import InnerState, train_state
    from .problem import compile_problem, constant_control, objective_points
    from .solve_setup import sampling_config

    problem = compile_problem(problem_obj, sampling_config(cfg), seed=cfg.seed, device=cfg.device)
    v = constant_control(problem_obj.control, cfg.forward.control).to(problem.v0.device)
    state = InnerState.create(problem.theta0, cfg.pretrain)
    progress, close = _pretrain_bar(cfg.pretrain.steps, quiet)
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


def _fmt_record(rec: Any, j_star: float | None, measure: str = "grid") -> str:
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


def solve_bilevel(cfg: configmod.Config, problem_obj: Any, quiet: bool, out: Path,
                  resume: dict[str, Any] | None = None) -> dict[str, Any]:
    """Algorithm 1 with the run file appended every outer step and atomic checkpoints."""
    import numpy as np

    from . import checkpoint as ckpt
    from . import runs, solve_setup
    from .bilevel import run

    setup = solve_setup.build(cfg, problem_obj)
    problem = setup.problem
    ref, measure = problem.info.get("reference"), problem.info.get("measure") or "grid"
    optimum = ref.optimum(measure) if ref is not None and problem.certify is not None else None
    if optimum is not None:
        _print(f"reference optimum ({measure} measure): J* = {optimum.J:.6e}", quiet=quiet)
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
        _print(_fmt_record(rec, j_star, measure), quiet=quiet)

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


def _wrap_close(progress: Callable[[int, float], None] | None, close: Callable[[], None], total: int):
    if progress is None:
        return None

    def wrapped(k: int, loss: float) -> None:
        progress(k, loss)
        if k == total - 1:
            close()

    return wrapped


# Non-bilevel solve modes (no outer loop, no run file); everything else is a hypergradient method.
SOLVE_MODES: dict[str, Callable[[configmod.Config, Any, bool, Path], dict[str, Any]]] = {"forward": solve_forward}


def _discover_problem(name: str, params: dict[str, Any]) -> Any:
    from .discovery import discover

    return discover().get(name).build(**params)


def _resolve_solve_config(args: argparse.Namespace) -> tuple[configmod.Config, dict[str, Any] | None, Any]:
    """A fresh config (preset → problem defaults → TOML → --set), or, with --resume, the run's own
    config plus --set; with the problem object when it was built on the way (else None)."""
    sets = configmod.parse_sets(args.set or [])
    if args.resume is None:
        if args.problem is None:
            raise PinnctlError("solve needs a problem name (or --resume RUN_DIR)")
        top = {"problem": args.problem, "seed": args.seed, "method.name": args.method}
        cfg = configmod.resolve(args.preset, args.config, sets, **top)
        params = dict(cfg.params)
        problem_obj = _discover_problem(cfg.problem, params)
        if hasattr(problem_obj, "config_defaults"):
            defaults = problem_obj.config_defaults(args.preset, cfg.method.name)
            cfg = configmod.resolve(args.preset, args.config, sets, problem_defaults=defaults, **top)
        return cfg, None, (problem_obj if cfg.params == params else None)
    from . import checkpoint as ckpt
    from . import runs

    if args.config or args.seed is not None or args.method is not None:
        raise PinnctlError("--resume continues a run with its own config; only --set overrides are allowed (e.g. outer.steps)")
    snap = ckpt.load(Path(args.resume))
    cfg = configmod.from_dict(runs.read(args.resume)["attrs"]["config"])
    if args.problem is not None and args.problem != cfg.problem:
        raise PinnctlError(f"--resume {args.resume} is a run of '{cfg.problem}', not '{args.problem}'")
    for key, value in sets.items():
        configmod.set_key(cfg, key, value)
    return cfg, snap, None


def cmd_solve(args: argparse.Namespace) -> int:
    from . import checkpoint as ckpt
    from . import runs
    from .hypergrad import known_methods

    cfg, snap, problem_obj = _resolve_solve_config(args)
    if args.parallel:
        cfg.parallel.enabled = True
    if cfg.parallel.enabled:
        from . import parallel

        from . import dataparallel

        parallel.check_config(cfg.parallel)  # before any run directory or process exists
        dataparallel.check(cfg.parallel, cfg.inner.optimizer)
        rank = parallel.torchrun_rank()
        if rank:  # under torchrun: the last rank is the curvature worker, the others data ranks
            parallel.check_torchrun_world(cfg.parallel.data_ranks)
            if rank == cfg.parallel.data_ranks:
                parallel.worker_main(configmod.to_dict(cfg))
            else:
                dataparallel.follower_main(configmod.to_dict(cfg))
            return 0
    known = sorted(set(known_methods()) | set(SOLVE_MODES))
    if cfg.method.name not in known:
        raise PinnctlError(f"unknown method '{cfg.method.name}'; known: {', '.join(known)}")
    from .solve_setup import check_devices

    check_devices(cfg)
    if snap is not None and cfg.method.name in SOLVE_MODES:
        raise PinnctlError(f"method '{cfg.method.name}' runs are not resumable")
    if problem_obj is None:
        problem_obj = _discover_problem(cfg.problem, cfg.params)
    _print(f"pinnctl solve {cfg.problem} --method {cfg.method.name} (preset {args.preset})", quiet=args.quiet)
    _print("config: " + configmod.to_json(cfg), quiet=args.quiet)
    out = Path(args.resume) if snap is not None else _run_dir(cfg, args.out)
    bilevel = cfg.method.name not in SOLVE_MODES
    if not bilevel:
        (out / "config.json").write_text(configmod.to_json(cfg))
    try:
        if bilevel:
            summary = solve_bilevel(cfg, problem_obj, args.quiet, out, resume=snap)
        else:
            summary = SOLVE_MODES[cfg.method.name](cfg, problem_obj, args.quiet, out)
    except (PinnctlError, KeyboardInterrupt) as e:
        from .bilevel import DivergenceError

        status = "interrupted" if isinstance(e, KeyboardInterrupt) else ("diverged" if isinstance(e, DivergenceError) else "failed")
        (out / "summary.json").write_text(json.dumps({"status": status, "error": str(e), "config": configmod.to_dict(cfg)}, indent=1))
        if bilevel and (out / runs.RUN_FILE).exists():
            runs.set_status(out / runs.RUN_FILE, status, error=str(e))
            _print(f"run stopped ({status}); history in {out / runs.RUN_FILE}, last good checkpoint in {out / ckpt.CHECKPOINT} "
                   f"(continue with: pinnctl solve --resume {out})", quiet=False)
        raise
    summary["status"] = "done"
    summary["config"] = configmod.to_dict(cfg)
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=float))
    if bilevel:
        runs.set_status(out / runs.RUN_FILE, "done", summary={k: v for k, v in summary.items() if k != "config"})
    _print(f"results: {out / 'summary.json'}" + (f", {out / runs.RUN_FILE} (plots: pinnctl plot {out})" if bilevel else ""),
           quiet=args.quiet)
    return 0


# ----------------------------------------------------------------------------- compare


def cmd_compare(args: argparse.Namespace) -> int:
    from . import compare

    runs = [compare.load_run(p) for p in args.runs]
    optimum = compare.reference_optimum(runs)
    j_star = optimum.J if optimum is not None else None
    rows = compare.table_rows(runs, j_star, args.target)
    if j_star:
        print(f"J* = {j_star:.6e} (grid measure, exact reference)")
    print(compare.format_table(rows, args.target))
    out = Path(args.out) if args.out else runs[0].path.parent / "compare.png"
    compare.plot(runs, optimum, out)
    (out.with_suffix(".json")).write_text(json.dumps({"J_star_grid": j_star, "rows": rows}, indent=1))
    print(f"figure: {out}\ntable: {out.with_suffix('.json')}")
    return 0


# ----------------------------------------------------------------------------- plot


def cmd_plot(args: argparse.Namespace) -> int:
    from .plots import plot_run

    for path in plot_run(args.run):
        print(path)
    return 0


# ----------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pinnctl", description="PDE-constrained optimal control with PINNs (bilevel).")
    sub = p.add_subparsers(dest="command", required=True)

    sp = sub.add_parser("list", help="list problems (bundled, ./problems, $PINNCTL_PROBLEMS)")
    sp.set_defaults(func=cmd_list)

    sp = sub.add_parser("reference", help="exact optimum of a problem from its classical solver")
    sp.add_argument("problem")
    sp.add_argument("--nu", type=float, help="viscosity (heat2d)")
    sp.set_defaults(func=cmd_reference)

    sp = sub.add_parser("solve", help="solve a control problem")
    sp.add_argument("problem", nargs="?", help="problem name (optional with --resume)")
    sp.add_argument("--method", help="hypergradient method (nhgd, exact, ...) or 'forward' (fixed control)")
    sp.add_argument("--preset", default="quick", help=f"config preset: {', '.join(configmod.PRESETS)} (default quick)")
    sp.add_argument("--config", help="TOML file with config overrides")
    sp.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key, e.g. inner.steps=50")
    sp.add_argument("--seed", type=int)
    sp.add_argument("--out", help="run directory (default runs/<problem>-<method>-<timestamp>)")
    sp.add_argument("--quiet", action="store_true", help="no progress output")
    sp.add_argument("--parallel", action="store_true",
                    help="curvature worker in a second process (Algorithm 2; see parallel.* config keys)")
    sp.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its last checkpoint (--set outer.steps=N to extend)")
    sp.set_defaults(func=cmd_solve)

    sp = sub.add_parser("compare", help="table and figure for run directories (certified J vs wall-clock, f vs f*)")
    sp.add_argument("runs", nargs="+", help="run directories (runs/...)")
    sp.add_argument("--target", type=float, default=1.05, help="time to reach certified J <= target*J* (default 1.05)")
    sp.add_argument("--out", help="figure path (default <first run's parent>/compare.png)")
    sp.set_defaults(func=cmd_compare)

    sp = sub.add_parser("plot", help="figures of one run (objective, loss terms, control vs f*, state error)")
    sp.add_argument("run", help="run directory (runs/...)")
    sp.set_defaults(func=cmd_plot)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0)
    try:
        return args.func(args)
    except PinnctlError as e:
        print(f"pinnctl: error: {e}", file=sys.stderr)
        return EXIT_FAILED if isinstance(e, RunError) else EXIT_USAGE
    except KeyboardInterrupt:
        print("pinnctl: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
