"""NHGD (Adam, ENGD or K-FAC inner steps) vs NBO vs Broyden vs Neumann vs CG on heat2d, side by side.

Same seed, same pretrained state (pretraining runs once and is shared), same inner loop
(50 Adam steps per outer step unless the entry says otherwise) and outer optimiser. Each method gets the same number
of outer steps and a wall-clock cap; the certified J (exact reference, grid measure)
is recorded every outer step. Reported per method: final and best certified J / J*,
time per outer step (split inner / curvature / hypergradient), and the wall-clock time
to reach certified J ≤ target·J* for several targets, with NHGD's speed-up over each.

    python bench/heat2d_methods.py [--outer-steps 150] [--cap-s 600] [--methods nhgd,broyden-fast]

Writes bench/results/heat2d_methods.json and prints a table and a one-line summary.
"""

from __future__ import annotations

import argparse
import copy
import time

from _common import CapReached, capped, write_result
from pinnctl.bilevel import InnerState, run, train_state
from pinnctl.config import InnerCfg, OuterCfg, PretrainCfg
from pinnctl.discovery import discover
from pinnctl.hypergrad import make_method
from pinnctl.problem import compile_problem, load_reference

# name: (method, method options, inner-loop settings over the 50 Adam steps of BPN)
ENGD_INNER = {"optimizer": "engd", "steps": 1, "lr": 1.0, "damping": 1e-4}  # one ENGD step ≈ 3 s (docs/natural-gradient.md)
KFAC_INNER = {"optimizer": "kfac", "steps": 10, "lr": 1.0, "damping": 1e-3}
METHODS = {
    "nhgd": ("nhgd", {}, {}),
    "nhgd-every5": ("nhgd", {"every": 5}, {}),
    "nhgd+engd": ("nhgd", {}, ENGD_INNER),
    "nhgd+kfac": ("nhgd", {}, KFAC_INNER),
    "nbo-gd": ("nbo", {"solver": "gd", "steps": 10}, {}),
    "nbo-cg": ("nbo", {"solver": "cg", "steps": 20, "damping": 1e-4}, {}),
    "nbo-cg-cold": ("nbo", {"solver": "cg", "steps": 20, "damping": 1e-4, "warm_start": False}, {}),
    "nbo-cg-no-newton": ("nbo", {"solver": "cg", "steps": 20, "damping": 1e-4, "newton": False}, {}),
    "nbo-gd-cold": ("nbo", {"solver": "gd", "steps": 10, "warm_start": False}, {}),
    "nbo-gn": ("nbo", {"solver": "cg", "steps": 20, "matrix": "gn", "damping": 1e-4}, {"steps": 10}),
    "nbo-gn-cold": ("nbo", {"solver": "cg", "steps": 20, "matrix": "gn", "damping": 1e-4, "warm_start": False}, {"steps": 10}),
    "broyden-bpn": ("broyden", {"variant": "bpn"}, {}),
    "broyden-fast": ("broyden", {"variant": "fast"}, {}),
    "neumann": ("neumann", {"terms": 20}, {}),
    "cg": ("cg", {"maxiter": 20, "damping": 1e-4}, {}),
}
TARGETS = (2.0, 1.5, 1.2, 1.1, 1.05)


def run_method(prob, method, options, inner, pretrained, outer_steps, cap_s):
    records: list = []
    import pinnctl.bilevel as bl

    # the shared pretrained state: run() with zero pretraining steps starting from it
    theta_saved = prob.theta0
    prob.theta0 = pretrained.clone()
    try:
        run(prob, make_method(method, options), pretrain=PretrainCfg(steps=0), inner=InnerCfg(**{"steps": 50, **inner}),
            outer=OuterCfg(steps=outer_steps), certify_every=1, callback=capped(cap_s, records))
    except CapReached:
        pass
    except bl.DivergenceError as e:
        print(f"  {method}: diverged ({e})")
    finally:
        prob.theta0 = theta_saved
    return records


def summarise(name, records, j_star):
    cert = [(r.wall_time, r.certified["grid"]) for r in records]
    n = len(records)
    row = {
        "method": name, "outer_steps": n,
        "final_J_over_Jstar": cert[-1][1] / j_star if cert else None,
        "best_J_over_Jstar": min(c for _, c in cert) / j_star if cert else None,
        "final_J_pinn": records[-1].outer_loss if records else None,
        "time_per_outer_step_s": records[-1].wall_time / n if n else None,
        "inner_s": sum(r.inner_time for r in records) / max(n, 1),
        "curvature_s": sum(r.curvature_time for r in records) / max(n, 1),
        "hypergrad_s": sum(r.hypergrad_time for r in records) / max(n, 1),
        "time_to": {f"{t:g}": next((w for w, c in cert if c <= t * j_star), None) for t in TARGETS},
        "trace": cert,
    }
    for key in ("ihvp_norm", "newton_scale", "newton_norm"):  # per-step diagnostics where the method reports them
        if records and key in records[0].info:
            row[f"{key}_trace"] = [r.info.get(key) for r in records]
    residuals = [r.info.get("residual") for r in records if "residual" in r.info]
    if residuals:
        row["mean_solver_residual"] = sum(residuals) / len(residuals)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--outer-steps", type=int, default=150)
    ap.add_argument("--pretrain", type=int, default=1000)
    ap.add_argument("--cap-s", type=float, default=600.0, help="wall-clock cap per method (s)")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--name", default="heat2d_methods", help="result file bench/results/<name>.json")
    ap.add_argument("--baseline", default="nhgd", help="the row the speed-ups are taken against")
    args = ap.parse_args()

    problem = discover().get("heat2d").build()
    prob = compile_problem(problem, seed=0)
    j_star = load_reference("heat2d").optimum(nu=problem.params["nu"], measure="grid").J
    state = InnerState.create(prob.theta0, PretrainCfg())
    t0 = time.perf_counter()
    train_state(prob, state, prob.v0, args.pretrain)
    print(f"pretrained state: {args.pretrain} Adam steps in {time.perf_counter() - t0:.0f} s; J* = {j_star:.6e}")
    pretrained = state.theta.detach().clone()

    rows = []
    for name in args.methods.split(","):
        method, options, inner = METHODS[name]
        records = run_method(prob, method, copy.deepcopy(options), inner, pretrained, args.outer_steps, args.cap_s)
        rows.append(summarise(name, records, j_star))
        r = rows[-1]
        print(f"  {name:<13} steps {r['outer_steps']:4d}  final J/J* {r['final_J_over_Jstar']:.3f}  best {r['best_J_over_Jstar']:.3f}  "
              f"{r['time_per_outer_step_s']:.2f} s/step (inner {r['inner_s']:.2f} curv {r['curvature_s']:.2f} hyper {r['hypergrad_s']:.2f})  "
              f"t(≤1.2J*) {r['time_to']['1.2']}", flush=True)

    nhgd = next((r for r in rows if r["method"] == args.baseline), None)
    speedups = {}
    if nhgd:
        for r in rows:
            if r is nhgd:
                continue
            speedups[r["method"]] = {t: (r["time_to"][t] / nhgd["time_to"][t]) if r["time_to"][t] and nhgd["time_to"][t] else None
                                     for t in nhgd["time_to"]}
    path = write_result(args.name, {"args": vars(args), "J_star_grid": j_star, "rows": rows, "nhgd_speedup": speedups})
    best = min(rows, key=lambda r: r["best_J_over_Jstar"] or 1e9)
    print(f"{args.name}: best J/J* {best['best_J_over_Jstar']:.3f} ({best['method']}); {args.baseline} speed-up to 1.2·J*: "
          + ", ".join(f"{k} {v['1.2']:.1f}x" if v["1.2"] else f"{k} n/a" for k, v in speedups.items()) + f" -> {path}")


if __name__ == "__main__":
    main()
