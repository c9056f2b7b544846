"""Does a natural-gradient inner optimiser bring heat2d's certified J closer to J*?

One NHGD+Adam run (curvature every 5th step) brings the control near the optimum
(``--phase1-s``); from that one snapshot (θ, v, outer optimiser state) two branches continue
for ``--phase2-s`` each with the same smaller outer learning rate: the same 50 Adam inner
steps, or ``--engd-steps`` ENGD steps (dense Gauss–Newton, λ = 1e-4). From the pretrained
state, ENGD inner steps cannot follow the control (docs/nbo.md); near the optimum the
control moves little per step, which is the regime where the better-resolved state should
pay off. Certified J is recorded every outer step.

    python bench/engd_polish.py [--phase1-s 300] [--phase2-s 300] [--outer-lr 0.002] [--engd-steps 1]

Writes bench/results/engd_polish.json and prints a one-line summary.
"""

from __future__ import annotations

import argparse
import copy

from _common import CapReached, capped, write_result
from pinnctl.bilevel import DivergenceError, run
from pinnctl.config import InnerCfg, OuterCfg, PretrainCfg
from pinnctl.discovery import discover
from pinnctl.hypergrad import make_method
from pinnctl.problem import compile_problem, load_reference


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pretrain", type=int, default=1000)
    ap.add_argument("--phase1-s", type=float, default=300.0)
    ap.add_argument("--phase2-s", type=float, default=300.0)
    ap.add_argument("--outer-lr", type=float, default=0.002, help="outer Adam lr in phase 2 (phase 1: 0.01)")
    ap.add_argument("--engd-steps", type=int, default=1)
    args = ap.parse_args()

    problem = discover().get("heat2d").build()
    prob = compile_problem(problem, seed=0)
    j_star = load_reference("heat2d").optimum(nu=problem.params["nu"], measure="grid").J
    snaps: list[dict] = []  # only the newest is kept

    def keep(snapshot: dict) -> None:
        snaps[:] = [snapshot]

    phase1: list = []
    try:
        run(prob, make_method("nhgd", {"every": 5}), pretrain=PretrainCfg(steps=args.pretrain), inner=InnerCfg(steps=50),
            outer=OuterCfg(steps=10**6), certify_every=1, callback=capped(args.phase1_s, phase1),
            checkpoint=keep, checkpoint_every=1)
    except CapReached:
        pass
    start = snaps[-1]
    start["outer_optimizer"]["param_groups"][0]["lr"] = args.outer_lr
    # the cap stops inside the callback, before that step's snapshot: continue from the one before
    if start["outer_step"] == 0:
        raise SystemExit("phase 1 ended before its first outer step completed; raise --phase1-s")
    j0 = phase1[start["outer_step"] - 1].certified["grid"]
    print(f"phase 1: {len(phase1)} outer steps, certified J/J* {j0 / j_star:.4f} (best {min(r.certified['grid'] for r in phase1) / j_star:.4f})",
          flush=True)

    branches = {"adam": (InnerCfg(steps=50), None),
                "engd": (InnerCfg(steps=args.engd_steps, optimizer="engd", lr=1.0, damping=1e-4), {"last_eta": 0.0})}
    rows = {}
    for name, (inner, inner_state) in branches.items():
        snap = copy.deepcopy(start)
        if inner_state is not None:
            snap["inner_optimizer"] = inner_state  # Adam's moments mean nothing to ENGD
        records: list = []
        status = "done"
        try:
            run(prob, make_method("nhgd", {"every": 5}), pretrain=PretrainCfg(steps=0), inner=inner,
                outer=OuterCfg(steps=10**6, lr=args.outer_lr), certify_every=1, callback=capped(args.phase2_s, records),
                resume=snap)
        except CapReached:
            pass
        except DivergenceError as e:
            status = f"diverged: {e}"
        cert = [r.certified["grid"] / j_star for r in records]
        terms = [sum(r.inner_terms.values()) for r in records]
        rows[name] = {"status": status, "outer_steps": len(records), "final_J_over_Jstar": cert[-1] if cert else None,
                      "best_J_over_Jstar": min(cert) if cert else None, "final_inner_loss": terms[-1] if terms else None,
                      "s_per_outer_step": (records[-1].wall_time - records[0].wall_time) / max(len(records) - 1, 1) if records else None,
                      "trace": [(r.wall_time, c, t) for r, c, t in zip(records, cert, terms)]}
        r = rows[name]
        print(f"  {name}: {r['outer_steps']} steps, final J/J* {r['final_J_over_Jstar']:.4f}, best {r['best_J_over_Jstar']:.4f}, "
              f"inner loss {r['final_inner_loss']:.2e}, {r['s_per_outer_step']:.2f} s/step ({status[:60]})", flush=True)
    path = write_result("engd_polish", {"args": vars(args), "J_star_grid": j_star, "phase1_J_over_Jstar": j0 / j_star,
                                        "phase1_steps": len(phase1), "branches": rows})
    print(f"engd_polish: from {j0 / j_star:.4f}·J*, {args.phase2_s:.0f} s more: Adam {rows['adam']['best_J_over_Jstar']:.4f} "
          f"vs ENGD {rows['engd']['best_J_over_Jstar']:.4f} best J/J* -> {path}")


if __name__ == "__main__":
    main()
