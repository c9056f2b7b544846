"""NHGD (Adam, ENGD or K-FAC inner steps) vs NBO vs Broyden vs Neumann vs CG on heat2d, side by side.

Same seed, same pretrained state (pretraining runs once per seed and is shared), same inner loop
(50 Adam steps per outer step unless the entry says otherwise) and outer optimiser (BPN's Adam
unless the entry says otherwise: the `*-gn` rows use the Gauss–Newton outer step, pinnctl.outer).
Each method gets the same number of outer steps and a wall-clock cap; the certified J (exact
reference, grid measure) is recorded every outer step. Reported per method: final and best
certified J / J*, time per outer step (split inner / curvature / hypergradient / outer step),
and the time to reach certified J ≤ target·J* for several targets, in wall-clock seconds and in
the process's CPU seconds (one thread: on a shared machine the CPU time is the figure that
transfers to an idle one), with the baseline's speed-up over each; medians over ``--seeds``.

    python bench/heat2d_methods.py [--outer-steps 150] [--cap-s 600] [--methods nhgd,broyden-fast] [--seeds 0,1,2]

Writes bench/results/heat2d_methods.json and prints a table and a one-line summary.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time

from _common import CapReached, capped, write_result
from pinnctl.bilevel import InnerState, run, train_state
from pinnctl.config import InnerCfg, OuterCfg, PretrainCfg, parse_sets
from pinnctl.discovery import discover
from pinnctl.hypergrad import make_method
from pinnctl.problem import compile_problem, load_reference

# name: (method, method options, inner-loop settings over the 50 Adam steps of BPN[, outer settings over BPN's Adam])
ENGD_INNER = {"optimizer": "engd", "steps": 1, "lr": 1.0, "damping": 1e-4}  # one ENGD step ≈ 3 s (docs/natural-gradient.md)
KFAC_INNER = {"optimizer": "kfac", "steps": 10, "lr": 1.0, "damping": 1e-3}
GN_OUTER = {"optimizer": "gn", "ihvp_steps": 3, "options": {"radius": 0.3, "cg_steps": 5}}
GNW_OUTER = {"optimizer": "gn", "ihvp": "woodbury", "options": {"radius": 0.3, "max_radius": 0.6, "cg_steps": 5}}
GNP_INNER = {"steps": 120, "settle": 0.02, "settle_window": 10, "polish": 2}
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
    # the outer step (issue 18): Gauss–Newton/LM in a trust region, 20 inner steps per outer step
    "nhgd-gn": ("nhgd", {"every": 5, "warm_start": True}, {"steps": 20}, GN_OUTER),
    "broyden-fast-gn": ("broyden", {"variant": "fast"}, {"steps": 20}, GN_OUTER),
    # the preset gn: the exact linear IHVP (outer.ihvp=woodbury) and 60 inner steps per outer step
    "nhgd-gnw": ("nhgd", {"every": 5, "warm_start": True}, {"steps": 60}, GNW_OUTER),
    "broyden-fast-gnw": ("broyden", {"variant": "fast"}, {"steps": 60}, GNW_OUTER),
    # the polished gn preset (session 4): 2 Gauss–Newton polish steps through the gn step's factorisation at the start
    # of each inner loop, then Adam until the loss settles (2 % over windows of 10 steps, at most 120 steps)
    "nhgd-gnp": ("nhgd", {"every": 5, "warm_start": True}, GNP_INNER, GNW_OUTER),
    "broyden-fast-gnp": ("broyden", {"variant": "fast"}, GNP_INNER, GNW_OUTER),
    # the same with the hypergradient from the gn step's own factorisation: h = ∇_v f − L(G + λI)⁻¹∇_θ f
    "exact-gnp": ("exact", {"matrix": "gn", "solver": "woodbury", "damping": 1e-3}, GNP_INNER, GNW_OUTER),
    "nhgd-every5-20": ("nhgd", {"every": 5, "warm_start": True}, {"steps": 20}),
    "broyden-fast-20": ("broyden", {"variant": "fast"}, {"steps": 20}),
}
TARGETS = (2.0, 1.5, 1.2, 1.1, 1.05, 1.02, 1.01)
J_STAR = [1.0]  # set by main: the per-step lines print J/J*


def run_method(prob, method, options, inner, outer, pretrained, outer_steps, cap_s):
    records: list = []
    cpu: list = []
    import pinnctl.bilevel as bl

    # the shared pretrained state: run() with zero pretraining steps starting from it
    theta_saved = prob.theta0
    prob.theta0 = pretrained.clone()
    collect = capped(cap_s, records)
    c0 = time.process_time()

    def callback(rec):
        cpu.append(time.process_time() - c0)
        terms = " ".join(f"{k} {x:.1e}" for k, x in rec.inner_terms.items())
        print(f"    step {rec.step + 1:3d}  J/J* {rec.certified['grid'] / J_STAR[0]:.4f}  f_pinn/J* {rec.outer_loss / J_STAR[0]:.4f}  "
              f"{terms}  {cpu[-1]:.0f} CPU s" + ("  rejected" if rec.info.get("outer_rejected") else ""), flush=True)
        collect(rec)

    try:
        run(prob, make_method(method, options), pretrain=PretrainCfg(steps=0), inner=InnerCfg(**{"steps": 50, **inner}),
            outer=OuterCfg(**{"steps": outer_steps, **outer}), certify_every=1, callback=callback)
    except CapReached:
        pass
    except bl.DivergenceError as e:
        print(f"  {method}: diverged ({e})")
    finally:
        prob.theta0 = theta_saved
    return records, cpu


def summarise(name, records, cpu, j_star):
    cert = [(r.wall_time, r.certified["grid"]) for r in records]
    cert_cpu = [(c, r.certified["grid"]) for c, r in zip(cpu, records)]
    n = len(records)
    row = {
        "method": name, "outer_steps": n,
        "final_J_over_Jstar": cert[-1][1] / j_star if cert else None,
        "best_J_over_Jstar": min(c for _, c in cert) / j_star if cert else None,
        "final_J_pinn": records[-1].outer_loss if records else None,
        "time_per_outer_step_s": records[-1].wall_time / n if n else None,
        "cpu_per_outer_step_s": cpu[-1] / n if n else None,
        "inner_s": sum(r.inner_time for r in records) / max(n, 1),
        "curvature_s": sum(r.curvature_time for r in records) / max(n, 1),
        "hypergrad_s": sum(r.hypergrad_time for r in records) / max(n, 1),
        "outer_s": sum(r.outer_time for r in records) / max(n, 1),
        "rejected_steps": int(sum(r.info.get("outer_rejected", 0.0) for r in records)),
        "time_to": {f"{t:g}": next((w for w, c in cert if c <= t * j_star), None) for t in TARGETS},
        "cpu_to": {f"{t:g}": next((w for w, c in cert_cpu if c <= t * j_star), None) for t in TARGETS},
        "steps_to": {f"{t:g}": next((k + 1 for k, (_, c) in enumerate(cert) if c <= t * j_star), None) for t in TARGETS},
        "trace": cert,
        "trace_cpu": [w for w, _ in cert_cpu],
        "outer_loss_trace": [r.outer_loss for r in records],
        "inner_terms_trace": [r.inner_terms for r in records],
        "info_trace": [{k: x for k, x in r.info.items() if k.startswith(("outer_", "polish_", "inner_steps"))}
                       for r in records],
    }
    for key in ("ihvp_norm", "newton_scale", "newton_norm"):  # per-step diagnostics where the method reports them
        if records and key in records[0].info:
            row[f"{key}_trace"] = [r.info.get(key) for r in records]
    residuals = [r.info.get("residual") for r in records if "residual" in r.info]
    if residuals:
        row["mean_solver_residual"] = sum(residuals) / len(residuals)
    return row


def _pretrained(prob, seed, steps, cache):
    """θ after ``steps`` Adam steps of pretraining at v0 (BPN's lr 1e-3), from ``cache`` when it has them."""
    import torch

    key = f"seed{seed}_steps{steps}"
    saved = torch.load(cache, weights_only=True) if cache and os.path.exists(cache) else {}
    if key in saved:
        print(f"seed {seed}: pretrained state ({steps} Adam steps) from {cache}")
        return saved[key]
    state = InnerState.create(prob.theta0, PretrainCfg())
    t0, c0 = time.perf_counter(), time.process_time()
    train_state(prob, state, prob.v0, steps)
    print(f"seed {seed}: pretrained state: {steps} Adam steps in {time.perf_counter() - t0:.0f} s "
          f"({time.process_time() - c0:.0f} CPU s)")
    theta = state.theta.detach().clone()
    if cache:
        torch.save({**saved, key: theta}, cache)
    return theta


def _override(options, inner, outer, overrides):
    """The row's (method options, inner, outer settings) with the --set overrides applied on top."""
    for key, value in overrides.items():
        section, _, rest = key.partition(".")
        if section == "method" and rest.startswith("options."):
            options[rest[len("options."):]] = value
        elif section == "outer" and rest.startswith("options."):
            outer.setdefault("options", {})[rest[len("options."):]] = value
        elif section in ("inner", "outer") and rest:
            (inner if section == "inner" else outer)[rest] = value
        else:
            raise SystemExit(f"--set {key}: expected inner.<key>, outer.<key>, outer.options.<key> or method.options.<key>")
    return options, inner, outer


def _median(values):
    """Median with 'never' (None) counted as +inf; None when the median itself is never."""
    m = statistics.median([float("inf") if x is None else x for x in values])
    return None if m == float("inf") else m


def aggregate(name, rows):
    """One row per method over seeds: medians of the times to target and of the per-step split."""
    out = {"method": name, "seeds": [r["seed"] for r in rows]}
    for key in ("final_J_over_Jstar", "best_J_over_Jstar", "time_per_outer_step_s", "cpu_per_outer_step_s", "inner_s",
                "curvature_s", "hypergrad_s", "outer_s", "outer_steps", "rejected_steps"):
        out[key] = statistics.median(r[key] for r in rows)
    for key in ("time_to", "cpu_to", "steps_to"):
        out[key] = {t: _median([r[key][t] for r in rows]) for t in rows[0][key]}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--outer-steps", type=int, default=150)
    ap.add_argument("--pretrain", type=int, default=1000)
    ap.add_argument("--cap-s", type=float, default=600.0, help="wall-clock cap per method (s)")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--seeds", default="0", help="comma-separated seeds (net init and points); medians are reported")
    ap.add_argument("--name", default="heat2d_methods", help="result file bench/results/<name>.json")
    ap.add_argument("--baseline", default="nhgd", help="the row the speed-ups are taken against")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override for every row: inner.<key>, outer.<key>, outer.options.<key> or method.options.<key>")
    ap.add_argument("--pretrained", default="", help="cache file of the pretrained states (per seed and --pretrain): "
                    "loaded when it holds the seed, else written")
    args = ap.parse_args()
    overrides = parse_sets(args.set)

    problem = discover().get("heat2d").build()
    j_star = load_reference("heat2d").optimum(nu=problem.params["nu"], measure="grid").J
    J_STAR[0] = j_star
    per_seed = []
    for seed in (int(x) for x in args.seeds.split(",")):
        prob = compile_problem(problem, seed=seed)
        pretrained = _pretrained(prob, seed, args.pretrain, args.pretrained)
        print(f"seed {seed}: J* = {j_star:.6e}")
        for name in args.methods.split(","):
            method, options, inner, *outer = METHODS[name]
            options, inner, outer = _override(copy.deepcopy(options), dict(inner), copy.deepcopy(outer[0] if outer else {}),
                                              overrides)
            records, cpu = run_method(prob, method, options, inner, outer, pretrained, args.outer_steps, args.cap_s)
            per_seed.append({**summarise(name, records, cpu, j_star), "seed": seed})
            r = per_seed[-1]
            print(f"  {name:<16} seed {seed} steps {r['outer_steps']:4d}  final J/J* {r['final_J_over_Jstar']:.3f}  "
                  f"best {r['best_J_over_Jstar']:.3f}  {r['time_per_outer_step_s']:.2f} s/step, {r['cpu_per_outer_step_s']:.2f} CPU s "
                  f"(inner {r['inner_s']:.2f} curv {r['curvature_s']:.2f} hyper {r['hypergrad_s']:.2f} outer {r['outer_s']:.2f})  "
                  f"CPU s to 1.2/1.05/1.02/1.01·J*: " + " / ".join(str(r['cpu_to'][t] and round(r['cpu_to'][t])) for t in ("1.2", "1.05", "1.02", "1.01")),
                  flush=True)

    rows = [aggregate(name, [r for r in per_seed if r["method"] == name]) for name in args.methods.split(",")]
    base = next((r for r in rows if r["method"] == args.baseline), None)
    speedups = {}
    if base:
        for r in rows:
            if r is not base:
                speedups[r["method"]] = {t: (r["cpu_to"][t] / base["cpu_to"][t]) if r["cpu_to"][t] and base["cpu_to"][t] else None
                                         for t in base["cpu_to"]}
    load = os.getloadavg()
    path = write_result(args.name, {"args": vars(args), "J_star_grid": j_star, "load_at_end": load, "rows": rows,
                                    "per_seed": per_seed, "speedup_cpu": speedups})
    best = min(rows, key=lambda r: r["best_J_over_Jstar"] or 1e9)
    print(f"{args.name}: best J/J* {best['best_J_over_Jstar']:.3f} ({best['method']}); {args.baseline} speed-up (CPU time) to 1.05·J*: "
          + ", ".join(f"{k} {v['1.05']:.1f}x" if v["1.05"] else f"{k} n/a" for k, v in speedups.items()) + f" -> {path}")


if __name__ == "__main__":
    main()
