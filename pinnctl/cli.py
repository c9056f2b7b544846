"""`pinnctl` command line: list, reference, solve, compare, plot.

Errors are one line on stderr; usage errors exit with code 2, failed runs with 1.
"""

from __future__ import annotations

import argparse
import sys
import time

from . import PinnctlError, RunError
from . import config as configmod

EXIT_USAGE = 2
EXIT_FAILED = 1


# ----------------------------------------------------------------------------- list


def cmd_list(args: argparse.Namespace) -> int:
    from .discovery import discover

    found = discover()
    width = max((len(n) for n in found.entries), default=0)
    for name in sorted(found.entries):
        entry = found.entries[name]
        print(f"{name:<{width}}  {entry.description}  [{entry.path}]")
    errors = found.errors + [f"problem '{name}' is defined twice: {' and '.join(map(str, paths))}; rename one"
                             for name, paths in sorted(found.duplicates.items())]
    for err in errors:
        print(f"error: {err}", file=sys.stderr)
    return EXIT_FAILED if errors else 0


# ----------------------------------------------------------------------------- reference


def cmd_reference(args: argparse.Namespace) -> int:
    from . import api
    from . import config as configmod

    params = {k.removeprefix("params."): v for k, v in configmod.parse_sets(args.set or []).items()}
    if args.nu is not None:
        params["nu"] = args.nu
    start = time.perf_counter()
    print(api.reference_report(args.problem, **params))
    print(f"(reference computed in {time.perf_counter() - start:.1f} s)")
    return 0


# ----------------------------------------------------------------------------- solve


def cmd_solve(args: argparse.Namespace) -> int:
    from . import api
    from .signals import sigterm_as_interrupt

    if args.resume is not None and (args.config or args.seed is not None or args.method is not None or args.overwrite):
        raise PinnctlError("--resume continues a run with its own config; only --set overrides are allowed (e.g. outer.steps)")
    with sigterm_as_interrupt():  # `timeout`, SLURM and systemd stop a run like Ctrl-C (exit 143)
        api.launch(args.problem, method=args.method, preset=args.preset, seed=args.seed, out=args.out,
                   parallel=args.parallel, quiet=args.quiet, config=args.config, sets=configmod.parse_sets(args.set or []),
                   resume=args.resume, overwrite=args.overwrite)
    return 0


# ----------------------------------------------------------------------------- compare


def cmd_compare(args: argparse.Namespace) -> int:
    from . import api

    result = api.compare(args.runs, target=args.target, out=args.out)
    if result.j_star:
        print(f"J* = {result.j_star:.6e} (grid measure, exact reference)")
    print(result.table)
    print(f"figure: {result.figure}\ntable: {result.figure.with_suffix('.json')}")
    return 0


# ----------------------------------------------------------------------------- plot


def cmd_plot(args: argparse.Namespace) -> int:
    from . import api

    for path in api.load_run(args.run).plot(show=False):
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
    sp.add_argument("--nu", type=float, help="viscosity (heat2d; the same as --set nu=...)")
    sp.add_argument("--set", action="append", metavar="PARAM=VALUE", help="a problem parameter, e.g. alpha=0.1 (poisson2d)")
    sp.set_defaults(func=cmd_reference)

    sp = sub.add_parser("solve", help="solve a control problem")
    sp.add_argument("problem", nargs="?", help="problem name (optional with --resume)")
    sp.add_argument("--method", help="hypergradient method (nhgd, exact, ...) or 'forward' (fixed control)")
    sp.add_argument("--preset", default="quick", help=f"config preset: {', '.join(configmod.PRESETS)} (default quick)")
    sp.add_argument("--config", help="TOML file with config overrides")
    sp.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key, e.g. inner.steps=50")
    sp.add_argument("--seed", type=int)
    sp.add_argument("--out", help="run directory (default runs/<problem>-<method>-<timestamp>); must be empty or new")
    sp.add_argument("--overwrite", action="store_true", help="replace the run in a non-empty --out")
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
    except KeyboardInterrupt as e:
        from .signals import Terminated, exit_code

        print(f"pinnctl: {'terminated' if isinstance(e, Terminated) else 'interrupted'}", file=sys.stderr)
        return exit_code(e)


if __name__ == "__main__":
    sys.exit(main())
