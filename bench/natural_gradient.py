"""State PINN of heat2d for a fixed control (f ≡ 1): Adam against natural-gradient inner steps.

Same initial weights, same batch, the same wall-clock budget for each optimiser. Reported at
checkpoints in time: the inner loss (PDE + boundary + initial residuals) and the relative L2
error of u_θ against the exact reference on the 11×11×201 objective grid.

    python bench/natural_gradient.py [--budget-s 120] [--optimizers adam,kfac,engd]

Writes bench/results/natural_gradient.json and prints a table and a one-line summary.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from _common import write_result

from pinnctl.bilevel import InnerState, inner_step, make_optimizer
from pinnctl.config import InnerCfg
from pinnctl.discovery import discover
from pinnctl.problem import compile_problem, constant_control, load_reference, objective_points

SETTINGS = {"adam": {"lr": 1e-3}, "kfac": {"lr": 1.0, "damping": 1e-3}, "kfac-d1e-1": {"lr": 1.0, "damping": 1e-1},
            "engd": {"lr": 1.0, "damping": 1e-4}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget-s", type=float, default=120.0)
    ap.add_argument("--optimizers", default="adam,kfac")
    ap.add_argument("--report-every-s", type=float, default=15.0)
    args = ap.parse_args()

    problem_obj = discover().get("heat2d").build()
    prob = compile_problem(problem_obj, seed=0)
    v = constant_control(problem_obj.control, 1.0)
    pts = objective_points(problem_obj)
    exact = load_reference("heat2d").state_at(lambda t: np.ones_like(t), pts, **problem_obj.params)
    x = torch.as_tensor(pts, dtype=torch.float32, device=prob.theta0.device)

    def error(theta: torch.Tensor) -> float:
        with torch.no_grad():
            u = problem_obj.state.forward(theta, x)[:, 0].double().cpu().numpy()
        return float(np.linalg.norm(u - exact) / np.linalg.norm(exact))

    rows = []
    for name in args.optimizers.split(","):
        s = SETTINGS[name]
        state = InnerState.create(prob.theta0, InnerCfg(lr=s["lr"]))
        state.optimizer = make_optimizer(name.split("-")[0], state.theta, s["lr"], s.get("damping", 0.0))
        trace, start, next_report, steps = [], time.perf_counter(), 0.0, 0
        while True:
            elapsed = time.perf_counter() - start
            if elapsed >= next_report or elapsed >= args.budget_s:
                loss = float(prob.inner_loss(state.theta.detach(), v, prob.sample(0)))
                trace.append({"t": elapsed, "steps": steps, "loss": loss, "rel_l2": error(state.theta.detach())})
                print(f"  {name:<5} t {elapsed:6.1f} s  steps {steps:6d}  loss {loss:.3e}  rel L2 {trace[-1]['rel_l2']:.3e}", flush=True)
                next_report += args.report_every_s
                if elapsed >= args.budget_s:
                    break
            inner_step(prob, state, v)
            steps += 1
        rows.append({"optimizer": name, "settings": s, "steps": steps, "final_loss": trace[-1]["loss"],
                     "final_rel_l2": trace[-1]["rel_l2"], "ms_per_step": 1e3 * trace[-1]["t"] / max(steps, 1), "trace": trace})
    path = write_result("natural_gradient", {"args": vars(args), "rows": rows})
    print("natural_gradient: " + ", ".join(f"{r['optimizer']} rel L2 {r['final_rel_l2']:.3e} loss {r['final_loss']:.2e} "
                                           f"({r['steps']} steps)" for r in rows) + f" in {args.budget_s:g} s -> {path}")


if __name__ == "__main__":
    main()
