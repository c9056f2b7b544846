"""The further PDE problems: NHGD against Broyden, certified J against wall-clock.

Per problem and method: certified J at the end and the best one, outer steps done and seconds
per outer step, under the same budget (outer steps, wall-clock cap per run) from the same
pretrained state (pretrained once per problem, shared by the methods). Where the reference
knows J* > 0 (poisson_holes) J is also given as J/J*, with the wall-clock and CPU seconds to
reach 2·J*, 1.2·J* and 1.05·J*; for J* = 0 (heat2d_field, burgers1d, poisson2d) J is reported
absolutely, next to J of the initial control. The load average is recorded around every run.

    python bench/problems.py [--outer-steps 100] [--pretrain 1000] [--cap-s 240] [--problems poisson_holes]

Writes bench/results/problems.json and prints a table and a one-line summary.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time

from _common import CapReached, capped, write_result

from pinnctl.api import resolve_config
from pinnctl.bilevel import DivergenceError, InnerState, run, train_state
from pinnctl.config import Config
from pinnctl.solve_setup import build

PROBLEMS = ("heat2d_field", "burgers1d", "poisson2d")
METHODS = {"nhgd": ("nhgd", {}), "broyden-fast": ("broyden", {"variant": "fast"}),
           "broyden-bpn": ("broyden", {"variant": "bpn"})}
DEFAULT_METHODS = ("nhgd", "broyden-fast")
FACTORS = (2.0, 1.2, 1.05)  # time to reach factor·J*


def _config(problem: str, method_key: str, args, pretrain: int) -> Config:
    method, options = METHODS[method_key]
    sets = {"pretrain.steps": pretrain, "outer.steps": args.outer_steps, "certify_every": args.certify_every,
            **({"inner.steps": args.inner_steps} if args.inner_steps else {}),
            **{f"method.options.{k}": v for k, v in options.items()}}
    return resolve_config(problem, method=method, preset="quick", sets=sets)[0]  # with the problem's own quick budgets


def pretrained(problem: str, args):
    """θ after the pretraining every method of this problem starts from (same seed, same steps)."""
    cfg = _config(problem, DEFAULT_METHODS[0], args, args.pretrain)
    setup = build(cfg)
    state = InnerState.create(setup.problem.theta0, cfg.pretrain)
    start, cpu = time.perf_counter(), time.process_time()
    loss = train_state(setup.problem, state, setup.problem.v0, cfg.pretrain.steps)
    return state.theta.detach(), {"pretrain_steps": cfg.pretrain.steps, "pretrain_loss": loss,
                                  "pretrain_wall_s": time.perf_counter() - start, "pretrain_cpu_s": time.process_time() - cpu}


def _times_to(records: list, cpu: list, measure: str, j_star: float) -> dict:
    out = {}
    for factor in FACTORS:
        hit = next((i for i, r in enumerate(records) if r.certified and r.certified[measure] <= factor * j_star), None)
        out[f"{factor:g}"] = None if hit is None else {"step": records[hit].step + 1, "wall_s": records[hit].wall_time,
                                                       "cpu_s": cpu[hit]}
    return out


def run_one(problem: str, method_key: str, args, theta) -> dict:
    cfg = _config(problem, method_key, args, 0)
    setup = build(cfg)
    bp = dataclasses.replace(setup.problem, theta0=theta.to(setup.problem.theta0))
    measure = bp.info.get("measure") or "grid"
    ref = bp.info.get("reference")
    optimum = ref.optimum(measure) if ref is not None else None
    j_star = optimum.J if optimum is not None else 0.0
    j0 = bp.certify(bp.v0)[measure]
    records: list = []
    cpu: list = []
    collect = capped(args.cap_s, records)
    cpu0 = time.process_time()

    def callback(rec) -> None:
        cpu.append(time.process_time() - cpu0)
        collect(rec)

    status, load = "done", os.getloadavg()[0]
    try:
        run(bp, setup.estimator, pretrain=cfg.pretrain, inner=cfg.inner, outer=cfg.outer,
            certify_every=cfg.certify_every, callback=callback)
    except CapReached:
        status = "capped"
    except DivergenceError as e:
        status = f"diverged: {e}"
    cert = [r.certified[measure] for r in records if r.certified]
    steps = len(records)
    row = {"problem": problem, "method": method_key, "status": status, "outer_steps": steps,
           "inner_steps": cfg.inner.steps, "measure": measure, "J_initial_control": j0,
           "final_J": cert[-1] if cert else None, "best_J": min(cert) if cert else None, "J_star": j_star,
           "wall_s": records[-1].wall_time if records else None, "cpu_s": cpu[-1] if cpu else None,
           "s_per_outer_step": (records[-1].wall_time - records[0].wall_time) / (steps - 1) if steps > 1 else None,
           "load_before": load, "load_after": os.getloadavg()[0]}
    if j_star > 0:
        row["final_J_over_J_star"] = row["final_J"] / j_star if cert else None
        row["best_J_over_J_star"] = row["best_J"] / j_star if cert else None
        row["time_to"] = _times_to(records, cpu, measure, j_star)
    return row


def _line(r: dict) -> str:
    def fmt(x, spec=".3e"):
        return "-" if x is None else format(x, spec)

    text = (f"  {r['problem']:<13} {r['method']:<13} {r['status'][:30]:<8} steps {r['outer_steps']:4d}  "
            f"J(v0) {fmt(r['J_initial_control'])}  final J {fmt(r['final_J'])}  best {fmt(r['best_J'])}  "
            f"{r['s_per_outer_step'] or float('nan'):.2f} s/step  load {r['load_before']:.1f}")
    if r["J_star"] > 0:
        reach = " ".join(f"{k}J*@{'-' if v is None else format(v['wall_s'], '.0f') + 's'}" for k, v in r["time_to"].items())
        text += f"  J/J* final {fmt(r['final_J_over_J_star'], '.3f')} best {fmt(r['best_J_over_J_star'], '.3f')}  {reach}"
    return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--outer-steps", type=int, default=100)
    ap.add_argument("--inner-steps", type=int, default=0, help="inner steps per outer step; 0 = the problem's quick preset")
    ap.add_argument("--pretrain", type=int, default=1000)
    ap.add_argument("--certify-every", type=int, default=5)
    ap.add_argument("--cap-s", type=float, default=240.0, help="wall-clock cap per run (s)")
    ap.add_argument("--problems", default=",".join(PROBLEMS))
    ap.add_argument("--methods", default=",".join(DEFAULT_METHODS), help=f"any of {', '.join(METHODS)}")
    args = ap.parse_args()
    rows, pretrain = [], {}
    for problem in args.problems.split(","):
        theta, pretrain[problem] = pretrained(problem, args)
        print(f"  {problem}: pretrained {pretrain[problem]['pretrain_steps']} steps in "
              f"{pretrain[problem]['pretrain_wall_s']:.0f} s wall, {pretrain[problem]['pretrain_cpu_s']:.0f} s CPU, "
              f"loss {pretrain[problem]['pretrain_loss']:.3e}, load {os.getloadavg()[0]:.1f}", flush=True)
        for method in args.methods.split(","):
            rows.append(run_one(problem, method, args, theta))
            print(_line(rows[-1]), flush=True)
    path = write_result("problems", {"args": vars(args), "pretrain": pretrain, "rows": rows})
    print("problems: " + ", ".join(
        f"{r['problem']}/{r['method']} best J {r['best_J']:.2e}" + (f" = {r['best_J_over_J_star']:.3f}·J*" if r["J_star"] > 0 else "")
        for r in rows if r["best_J"] is not None) + f" -> {path}")


if __name__ == "__main__":
    main()
