"""Classification extras: every method on hyper-data cleaning (MNIST) and data distillation
(Fashion-MNIST, n = 5 and n = 100 per class), in the paper's table format.

Per task and method: outer loss and test accuracy averaged over the last 50 outer steps,
± std over seeds, and seconds per outer step. Each task uses its problem file's setup
(inner/outer optimisers and learning rates, NHGD options); the budget of outer steps is
``--outer-steps`` for everyone (the paper ran longer; see docs/classification.md).
Single-loop methods (TTSA, SOBA) run with one inner step per outer step.

    python bench/classification.py [--outer-steps 300] [--seeds 0,1] [--tasks cleaning,distill5,distill100]

Writes bench/results/classification.json (with each run's test accuracy against wall time)
and prints the table and a one-line summary.
"""

from __future__ import annotations

import argparse
import statistics
import time

from _common import write_result

from pinnctl import config as configmod
from pinnctl.bilevel import DivergenceError, run
from pinnctl.discovery import discover
from pinnctl.solve_setup import build

TASKS = {
    "cleaning": ("data_cleaning", {}),
    "distill5": ("distillation", {"per_class": 5}),
    "distill100": ("distillation", {"per_class": 100}),
}
METHODS = {  # name → (method, options, extra config)
    "nhgd": ("nhgd", {}, {}),
    "stocbio": ("stocbio", {"terms": 10}, {}),
    "amigo": ("amigo", {"terms": 10}, {}),
    "ttsa": ("ttsa", {"terms": 10}, {"inner.steps": 1}),
    "soba": ("soba", {}, {"inner.steps": 1}),
    "neumann40": ("neumann", {"terms": 40}, {}),
    "cg10": ("cg", {"maxiter": 10}, {}),
    "nsbo": ("nsbo", {"steps": 10}, {}),  # NSBO-SGD: 10 SGD steps on both quadratics, Newton step taken
    "nbo-cg": ("nbo", {"solver": "cg", "steps": 10}, {}),
}
PAPER = {"cleaning": {"nhgd": 0.9180, "ttsa": 0.9172, "neumann40": 0.9170},
         "distill5": {"nhgd": 0.8256, "neumann40": 0.8216}, "distill100": {"neumann10": 0.8359, "nhgd": 0.8281}}


def run_one(task: str, method_key: str, seed: int, outer_steps: int) -> dict:
    problem_name, params = TASKS[task]
    method, options, extra = METHODS[method_key]
    problem_obj = discover().get(problem_name).build(**params)
    sets = {"outer.steps": outer_steps, **extra, **{f"method.options.{k}": v for k, v in options.items()}}
    cfg = configmod.resolve("quick", sets=sets, problem_defaults=problem_obj.config_defaults("quick", method),
                            **{"problem": problem_name, "seed": seed, "method.name": method})
    setup = build(cfg, problem_obj)
    start = time.perf_counter()
    try:
        res = run(setup.problem, setup.estimator, pretrain=cfg.pretrain, inner=cfg.inner, outer=cfg.outer, certify_every=0)
        history, status = res.history, "done"
    except DivergenceError as e:
        history, status = [], f"diverged: {e}"
    tail = history[-50:]
    return {
        "task": task, "method": method_key, "seed": seed, "status": status, "outer_steps": len(history),
        "outer_loss": statistics.fmean(r.outer_loss for r in tail) if tail else None,
        "test_accuracy": statistics.fmean(r.metrics["test_accuracy"] for r in tail) if tail else None,
        "s_per_outer_step": (time.perf_counter() - start) / max(len(history), 1),
        "trace": [(r.wall_time, r.metrics["test_accuracy"]) for r in history],  # test accuracy against time
    }


def summarise(rows: list[dict]) -> list[dict]:
    out = []
    for task in dict.fromkeys(r["task"] for r in rows):
        for method in dict.fromkeys(r["method"] for r in rows if r["task"] == task):
            rs = [r for r in rows if r["task"] == task and r["method"] == method and r["test_accuracy"] is not None]
            if not rs:
                out.append({"task": task, "method": method, "status": "diverged"})
                continue

            def ms(key):
                xs = [r[key] for r in rs]
                return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)

            out.append({"task": task, "method": method, "seeds": len(rs), "outer_loss": ms("outer_loss"),
                        "test_accuracy": ms("test_accuracy"), "s_per_outer_step": ms("s_per_outer_step")[0],
                        "paper_test_accuracy": PAPER.get(task, {}).get(method)})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--outer-steps", type=int, default=300)
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--name", default="classification", help="result file bench/results/<name>.json")
    args = ap.parse_args()
    rows = []
    for task in args.tasks.split(","):
        for method in args.methods.split(","):
            for seed in (int(s) for s in args.seeds.split(",")):
                rows.append(run_one(task, method, seed, args.outer_steps))
                r = rows[-1]
                print(f"  {task:<10} {method:<9} seed {seed}: {r['status'][:40]:<8} loss {r['outer_loss'] or float('nan'):.4f} "
                      f"test acc {r['test_accuracy'] or float('nan'):.4f}  {r['s_per_outer_step']:.3f} s/step", flush=True)
    table = summarise(rows)
    print(f"\n{'task':<11} {'method':<10} {'outer loss':>17} {'test accuracy':>17} {'s/step':>7} {'paper acc':>9}")
    for t in table:
        if "outer_loss" not in t:
            print(f"{t['task']:<11} {t['method']:<10} diverged")
            continue
        paper = t["paper_test_accuracy"]
        print(f"{t['task']:<11} {t['method']:<10} {t['outer_loss'][0]:>9.4f} ± {t['outer_loss'][1]:.4f} "
              f"{t['test_accuracy'][0]:>9.4f} ± {t['test_accuracy'][1]:.4f} {t['s_per_outer_step']:>7.3f} "
              f"{paper if paper else '':>9}")
    path = write_result(args.name, {"args": vars(args), "runs": rows, "table": table})
    best = {task: max((t for t in table if t["task"] == task and "test_accuracy" in t), key=lambda t: t["test_accuracy"][0])
            for task in dict.fromkeys(t["task"] for t in table)}
    print("classification: best test accuracy " + ", ".join(f"{k} {v['method']} {v['test_accuracy'][0]:.4f}" for k, v in best.items())
          + f" ({args.outer_steps} outer steps) -> {path}")


if __name__ == "__main__":
    main()
