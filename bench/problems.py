"""The further PDE problems (heat2d_field, burgers1d, poisson2d): NHGD against Broyden (fast).

Per problem and method: certified J at the end and the best one (the exact optimum is
J* = 0 for all three, so J is reported absolutely, next to J of the initial control),
outer steps done and seconds per outer step, under the same budget (pretraining, outer
steps, wall-clock cap per run).

    python bench/problems.py [--outer-steps 100] [--pretrain 1000] [--cap-s 240]

Writes bench/results/problems.json and prints a table and a one-line summary.
"""

from __future__ import annotations

import argparse

from _common import CapReached, capped, write_result

from pinnctl import config as configmod
from pinnctl.bilevel import DivergenceError, run
from pinnctl.solve_setup import build

PROBLEMS = ("heat2d_field", "burgers1d", "poisson2d")
METHODS = {"nhgd": ("nhgd", {}), "broyden-fast": ("broyden", {"variant": "fast"})}


def run_one(problem: str, method_key: str, args) -> dict:
    method, options = METHODS[method_key]
    sets = {"pretrain.steps": args.pretrain, "outer.steps": args.outer_steps, "certify_every": args.certify_every,
            **{f"method.options.{k}": v for k, v in options.items()}}
    cfg = configmod.resolve("quick", sets=sets, **{"problem": problem, "method.name": method})
    setup = build(cfg)
    j0 = setup.problem.certify(setup.problem.v0)["grid"]
    records: list = []
    status = "done"
    try:
        run(setup.problem, setup.estimator, pretrain=cfg.pretrain, inner=cfg.inner, outer=cfg.outer,
            certify_every=cfg.certify_every, callback=capped(args.cap_s, records))
    except CapReached:
        status = "capped"
    except DivergenceError as e:
        status = f"diverged: {e}"
    cert = [r.certified["grid"] for r in records if r.certified]
    steps = len(records)
    return {"problem": problem, "method": method_key, "status": status, "outer_steps": steps,
            "J_initial_control": j0, "final_J": cert[-1] if cert else None, "best_J": min(cert) if cert else None,
            "J_star": 0.0, "wall_s": records[-1].wall_time if records else None,
            "s_per_outer_step": (records[-1].wall_time - records[0].wall_time) / (steps - 1) if steps > 1 else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--outer-steps", type=int, default=100)
    ap.add_argument("--pretrain", type=int, default=1000)
    ap.add_argument("--certify-every", type=int, default=5)
    ap.add_argument("--cap-s", type=float, default=240.0, help="wall-clock cap per run (s)")
    ap.add_argument("--problems", default=",".join(PROBLEMS))
    ap.add_argument("--methods", default=",".join(METHODS))
    args = ap.parse_args()
    rows = []
    for problem in args.problems.split(","):
        for method in args.methods.split(","):
            rows.append(run_one(problem, method, args))
            r = rows[-1]
            print(f"  {problem:<13} {method:<13} {r['status'][:30]:<8} steps {r['outer_steps']:4d}  J(v0) {r['J_initial_control']:.3e}  "
                  f"final J {r['final_J'] if r['final_J'] is None else format(r['final_J'], '.3e')}  "
                  f"best {r['best_J'] if r['best_J'] is None else format(r['best_J'], '.3e')}  "
                  f"{r['s_per_outer_step'] or float('nan'):.2f} s/step", flush=True)
    path = write_result("problems", {"args": vars(args), "rows": rows})
    print("problems: " + ", ".join(f"{r['problem']}/{r['method']} best J {r['best_J']:.2e}" for r in rows if r["best_J"] is not None)
          + f" (J* = 0) -> {path}")


if __name__ == "__main__":
    main()
