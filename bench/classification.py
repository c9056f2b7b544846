"""Classification extras against the NHGD paper's Tables 2–4: hyper-data cleaning (MNIST) and data
distillation (Fashion-MNIST, n = 5 and n = 100 per class), each row with the paper's settings.

A row is a paper row of the problem file (``--preset paper``: η, α and the method's options of the
paper's table) or an extra row: ``nsbo`` (NHGD's η/α), ``nhgd-ours`` (our default NHGD, the
problem's ``quick`` setup) and ``nhgd-identity`` (the paper's NHGD row with β = 1: A = I/λ₀, what
the paper's β = 0 means if its β weighs the new gradient), ``nhgd-rank1`` (β = 0 as the rank-one
F = g gᵀ under the constant damping λ₀: A = (g gᵀ + λ₀I)⁻¹) and ``exact`` (the full-batch Hessian
solved by CG at NHGD's η and α: what any curvature estimate approximates), all at the same budget. Per run: outer loss and test accuracy averaged
over the last 50 outer steps (the paper's "last 50 epochs", one epoch = one outer step), with the
drift against the 50 steps before (how settled), wall-clock, process CPU time and the load average.

    python bench/classification.py run [--seeds 0,1,2] [--jobs 2]      # the whole bench: every paper row
    python bench/classification.py run --runs cleaning:nhgd:0,distill5:nhgd+project:0,... [--outer-steps 500]
    python bench/classification.py report     # tables (paper, ours, difference) + figures
    python bench/classification.py bounds     # uncleaned / perfectly cleaned classifiers (cleaning)
    python bench/classification.py weights    # the cleaning runs' weights against the true clean mask

Runs append to bench/results/classification_runs.jsonl (a finished run is skipped when asked again);
``report`` writes bench/results/classification.json and the figures bench/results/classification_<task>.png
(test accuracy and outer loss against wall-clock, the paper's Figures 2, 3, 5–7).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

from _common import RESULTS, write_result

from pinnctl import config as configmod
from pinnctl.bilevel import DivergenceError
from pinnctl.discovery import discover
from pinnctl.solve_setup import build

TASKS = {
    "cleaning": ("data_cleaning", {}),
    "distill5": ("distillation", {"per_class": 5}),
    "distill100": ("distillation", {"per_class": 100}),
}
EXTRA_ROWS = ("nsbo", "nhgd-ours", "nhgd-identity", "nhgd-rank1", "exact")
RUNS_FILE = RESULTS / "classification_runs.jsonl"
TAIL = 50
DEFAULT_STEPS = 500


def _problem(task: str):
    name, params = TASKS[task]
    return name, params, discover().get(name).build(**params)


# variants ``<row>+<name>`` of any row (combinable): ``+pretrain`` trains θ first (Adam, 5 000 steps, on the
# uniformly weighted inner loss); ``+project`` puts cleaning's v back onto [0, 1] after each outer step.
# Both are what BOME's code (which the paper adapts) does and our paper preset does not.
# ``+key=value`` sets one config key (JSON value), e.g. ``exact+outer.lr=1.0``
VARIANTS = {"pretrain": {"pretrain.steps": 5000}, "project": {"params.weights": "project"}}


def base_row(row: str) -> str:
    return row.split("+")[0]


def row_config(task: str, row: str, seed: int, outer_steps: int) -> tuple[configmod.Config, Any]:
    """The run's config: the paper row (preset paper), or an extra row; ``<row>+<variant>`` (VARIANTS) is that
    row changed as BOME's code does it: BOME starts its bilevel runs from a classifier trained 5 000
    full-batch epochs on the noisy training + validation set, and clamps w to [0, 1] after each step."""
    name, params, obj = _problem(task)
    top = {"problem": name, "seed": seed}
    sets = {"outer.steps": outer_steps, **{f"params.{k}": v for k, v in params.items()}}
    row, *variants = row.split("+")
    for variant in variants:
        if "=" in variant:  # a config key, e.g. +outer.lr=1.0 (a cause measurement, not a paper row)
            key, value = variant.split("=", 1)
            sets[key] = json.loads(value)
        else:
            sets.update(VARIANTS[variant])
    if row == "nhgd-ours":
        defaults = obj.config_defaults("quick", "nhgd")
        cfg = configmod.resolve("quick", sets=sets, problem_defaults=defaults, **top, **{"method.name": "nhgd"})
    elif row == "nhgd-identity":  # A = I/λ₀ throughout: the paper's β = 0 read as the weight of the new gradient
        defaults = {**obj.config_defaults("paper", "nhgd"), "method.options.beta": 1.0}
        cfg = configmod.resolve("paper", sets=sets, problem_defaults=defaults, **top, **{"method.name": "nhgd"})
    elif row == "nhgd-rank1":  # β = 0 as the EMA's rank-one F = g gᵀ with the constant damping λ₀: A = (g gᵀ + λ₀I)⁻¹
        nhgd = obj.config_defaults("paper", "nhgd")
        defaults = {**nhgd, "method.options.beta": 0.0, "method.options.efim_floor": nhgd.get("method.options.efim_lambda0", 1.0)}
        cfg = configmod.resolve("paper", sets=sets, problem_defaults=defaults, **top, **{"method.name": "nhgd"})
    elif row == "exact":  # the exact hypergradient (full-batch Hessian, CG to 1e-10) at NHGD's η and α
        nhgd = obj.config_defaults("paper", "nhgd")
        defaults = {**obj.config_defaults("paper", "exact"), "inner.lr": nhgd["inner.lr"], "outer.lr": nhgd["outer.lr"],
                    "method.options.solver": "cg"}
        cfg = configmod.resolve("paper", sets=sets, problem_defaults=defaults, **top, **{"method.name": "exact"})
    elif row == "nsbo":
        nhgd = obj.config_defaults("paper", "nhgd")
        defaults = {**obj.config_defaults("paper", "nsbo"), "inner.lr": nhgd["inner.lr"], "outer.lr": nhgd["outer.lr"],
                    "method.options.steps": 10}
        cfg = configmod.resolve("paper", sets=sets, problem_defaults=defaults, **top, **{"method.name": "nsbo"})
    else:
        method = obj.paper_rows[row]["method.name"]
        cfg = configmod.resolve("paper", sets=sets, problem_defaults=obj.config_defaults("paper", method, row=row),
                                **top, **{"method.name": method})
    if cfg.params != params:  # the preset set problem parameters (cleaning's paper data): rebuild with them
        obj = discover().get(name).build(**cfg.params)
    return cfg, obj


RUN_DIRS = RESULTS / "classification_runs"


def run_one(task: str, row: str, seed: int, outer_steps: int) -> dict:
    """One row through the library's solve path: a pinnctl run folder (run.h5, summary.json) under
    bench/results/classification_runs/<task>-<row>-s<seed>, so ``pinnctl plot`` / ``pinnctl compare``
    draw its figures; the bench keeps the numbers it reports in the JSONL."""
    from pinnctl import api, runs

    cfg, obj = row_config(task, row, seed, outer_steps)
    cfg.checkpoint_every = 0  # the final checkpoint only: the estimator state (EFIM rows) is tens of MB
    setup = build(cfg, obj)
    out = RUN_DIRS / (f"{task}-{row}-s{seed}" + (f"-k{outer_steps}" if outer_steps != DEFAULT_STEPS else ""))
    out.mkdir(parents=True, exist_ok=True)
    load0, cpu0, start = os.getloadavg()[0], time.process_time(), time.perf_counter()
    status = "done"
    with runs.hold(out, fresh=True, overwrite=True):
        try:
            api.finalise(cfg, out, api.execute(cfg, obj, out, quiet=True, setup=setup), quiet=True)
        except DivergenceError as e:
            status = f"diverged: {e}"
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu0
    history = runs.history_records(runs.read(out / runs.RUN_FILE)) if status == "done" else []
    tail, before = history[-TAIL:], history[-2 * TAIL:-TAIL]

    def mean(rs, key):
        vals = [r["outer_loss"] if key == "outer_loss" else r["metrics"][key] for r in rs]
        return statistics.fmean(vals) if vals else None

    return {
        "task": task, "row": row, "seed": seed, "method": cfg.method.name, "status": status, "run_dir": str(out),
        "outer_steps": len(history), "inner_steps": cfg.inner.steps, "inner_lr": cfg.inner.lr, "outer_lr": cfg.outer.lr,
        "outer_optimizer": cfg.outer.optimizer, "options": cfg.method.options,
        "outer_loss": mean(tail, "outer_loss"), "test_accuracy": mean(tail, "test_accuracy"),
        "drift_test_accuracy": (mean(tail, "test_accuracy") - mean(before, "test_accuracy")) if before else None,
        "wall_s": wall, "cpu_s": cpu, "load_start": load0, "load_end": os.getloadavg()[0],
        "metrics_every": cfg.metrics_every,
        "trace": [(r["wall_time"], r["metrics"]["test_accuracy"], r["outer_loss"]) for r in history if r["metrics"]],
    }


def done_runs() -> list[dict]:
    if not RUNS_FILE.exists():
        return []
    return [json.loads(line) for line in RUNS_FILE.read_text().splitlines() if line.strip()]


def bench_specs(seeds: list[int]) -> list[str]:
    """The whole three-table bench: every paper row of every task at each seed, heaviest first (TTSA's
    growing series, the n = 100 EFIM row), so two workers finish together."""
    specs = [f"{task}:{row}:{seed}" for seed in seeds for task in TASKS for row in _problem(task)[2].paper_rows]
    heavy = ("cleaning:ttsa:", "distill100:ttsa:", "distill100:nhgd:")
    return sorted(specs, key=lambda s: not s.startswith(heavy))


def _run_spec(spec: str, outer_steps: int) -> dict:
    task, row, seed = spec.split(":")
    started = time.time()
    r = run_one(task, row, int(seed), outer_steps)
    return {**r, "outer_steps_asked": outer_steps, "started": started, "finished": time.time()}


def _worker_init(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def cmd_run(args: argparse.Namespace) -> None:
    """Runs not yet in the JSONL, ``--jobs`` at a time (one process each, one thread each)."""
    from concurrent.futures import ProcessPoolExecutor, as_completed
    import multiprocessing

    have = {(r["task"], r["row"], r["seed"], r["outer_steps_asked"]) for r in done_runs()}
    RESULTS.mkdir(parents=True, exist_ok=True)
    specs = bench_specs([int(s) for s in args.seeds.split(",")]) if args.runs == "paper" else args.runs.split(",")
    todo = [s for s in specs if (s.split(":")[0], s.split(":")[1], int(s.split(":")[2]), args.outer_steps) not in have]
    print(f"{len(todo)} runs to do ({len(specs) - len(todo)} already in {RUNS_FILE.name}), {args.jobs} at a time", flush=True)
    start = time.perf_counter()
    # one thread per worker unless OMP_NUM_THREADS says otherwise: CPU s then read as single-threaded seconds
    threads = int(os.environ.get("OMP_NUM_THREADS") or 0) or max(1, (os.cpu_count() or 1) // args.jobs)
    with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn"), initializer=_worker_init,
                             initargs=(threads,)) as pool:
        futures = [pool.submit(_run_spec, spec, args.outer_steps) for spec in todo]
        for fut in as_completed(futures):
            r = fut.result()
            with RUNS_FILE.open("a") as fh:
                fh.write(json.dumps(r, default=float) + "\n")
            print(f"{r['task']:<10} {r['row']:<10} seed {r['seed']}: {r['status'][:30]:<8} loss {r['outer_loss'] or float('nan'):.4f} "
                  f"acc {r['test_accuracy'] or float('nan'):.4f} drift {r['drift_test_accuracy'] or 0:+.4f} "
                  f"{r['wall_s']:.0f} s wall {r['cpu_s']:.0f} s cpu load {r['load_start']:.1f}-{r['load_end']:.1f}", flush=True)
    print(f"{len(todo)} runs in {(time.perf_counter() - start) / 60:.1f} min wall-clock, {args.jobs} jobs", flush=True)


def _ms(xs: list[float]) -> tuple[float, float]:
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def summarise(rows: list[dict]) -> list[dict]:
    out = []
    for task in TASKS:
        obj = _problem(task)[2]
        order = list(obj.paper_rows) + list(EXTRA_ROWS)
        have = list(dict.fromkeys((r["row"], r["outer_steps_asked"]) for r in rows if r["task"] == task))
        rank = {row: i for i, row in enumerate(order)}
        have.sort(key=lambda rk: (rank.get(base_row(rk[0]), len(order)), rk[0], rk[1]))
        for row, steps in have:
            rs = [r for r in rows if r["task"] == task and r["row"] == row and r["outer_steps_asked"] == steps]
            ok = [r for r in rs if r["test_accuracy"] is not None]
            paper = obj.paper_results.get(base_row(row))
            label = row if steps == DEFAULT_STEPS else f"{row} ({steps} steps)"
            t = {"task": task, "row": label, "method": rs[0]["method"], "seeds": [r["seed"] for r in ok],
                 "outer_steps": rs[0]["outer_steps_asked"], "paper": paper, "diverged": len(rs) - len(ok),
                 "wall_s": sum(r["wall_s"] for r in rs), "cpu_s": sum(r["cpu_s"] for r in rs),
                 "load": statistics.fmean((r["load_start"] + r["load_end"]) / 2 for r in rs),
                 "budget": f"{steps} × {rs[0]['inner_steps']}"}
            if ok:
                t["outer_loss"], t["test_accuracy"] = _ms([r["outer_loss"] for r in ok]), _ms([r["test_accuracy"] for r in ok])
                t["drift"] = max(abs(r["drift_test_accuracy"] or 0) for r in ok)
                if paper:
                    t["diff_loss"], t["diff_acc"] = t["outer_loss"][0] - paper[0], t["test_accuracy"][0] - paper[1]
            out.append(t)
    return out


def markdown(table: list[dict]) -> str:
    lines = []
    for task in dict.fromkeys(t["task"] for t in table):
        lines += [f"\n**{task}**\n", "| row | paper loss / acc | ours loss | ours acc | Δ loss | Δ acc | seeds | budget (outer × inner) | settled (Δacc last 50 vs before) | CPU s (all seeds) | wall s (load) |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for t in (t for t in table if t["task"] == task):
            paper = f"{t['paper'][0]:.4f} / {t['paper'][1]:.4f}" if t["paper"] else "—"
            if "test_accuracy" not in t:
                lines.append(f"| {t['row']} | {paper} | diverged | | | | {t['diverged']} | {t['budget']} | | {t['cpu_s']:.0f} | {t['wall_s']:.0f} ({t['load']:.1f}) |")
                continue
            (lo, ls), (ac, as_) = t["outer_loss"], t["test_accuracy"]
            dl = f"{t['diff_loss']:+.4f}" if "diff_loss" in t else "—"
            da = f"{t['diff_acc']:+.4f}" if "diff_acc" in t else "—"
            many = len(t["seeds"]) > 1  # a spread only where there are seeds to spread over
            lo_s, ac_s = (f"{lo:.4f} ± {ls:.4f}", f"{ac:.4f} ± {as_:.4f}") if many else (f"{lo:.4f}", f"{ac:.4f}")
            lines.append(f"| {t['row']} | {paper} | {lo_s} | {ac_s} | {dl} | {da} | "
                         f"{','.join(map(str, t['seeds']))} | {t['budget']} | {t['drift']:.4f} | {t['cpu_s']:.0f} | {t['wall_s']:.0f} ({t['load']:.1f}) |")
    return "\n".join(lines)


def figures(rows: list[dict]) -> list[Path]:
    """Per task, ``pinnctl compare`` over seed 0 of every row at the default budget: outer loss and test
    accuracy against wall-clock (the paper's Figures 2, 3, 5–7), with its table beside it as JSON."""
    from pinnctl import api

    paths = []
    for task in TASKS:
        dirs = [RUN_DIRS / Path(r["run_dir"]).name for r in rows if r["task"] == task and r["seed"] == 0
                and r["status"] == "done" and r.get("run_dir") and r["outer_steps_asked"] == DEFAULT_STEPS]
        if dirs:
            result = api.compare(dirs, out=RESULTS / f"classification_{task}.png")
            print(result.table)
            paths.append(result.figure)
    return paths


def cmd_report(args: argparse.Namespace) -> None:
    rows = done_runs()
    table = summarise(rows)
    md = markdown(table)
    print(md)
    total_cpu, total_wall = sum(r["cpu_s"] for r in rows), sum(r["wall_s"] for r in rows)
    print(f"\n{len(rows)} runs: {total_cpu / 60:.1f} min CPU, {total_wall / 60:.1f} min wall-clock summed over runs")
    timed = [r for r in rows if "started" in r]
    span = (max(r["finished"] for r in timed) - min(r["started"] for r in timed)) if timed else None
    if span is not None:  # what the bench took on this machine, the runs side by side
        print(f"first start to last finish: {span / 60:.1f} min ({len(timed)} runs)")
    path = write_result("classification", {"table": table, "markdown": md, "cpu_s": total_cpu, "wall_s": total_wall,
                                           "span_s": span})
    for p in figures(rows):
        print("figure", p)
    print("->", path)


def cmd_bounds(args: argparse.Namespace) -> None:
    """The cleaning task's reference classifiers at the inner loop's own optimiser and budget:
    uniform weights (uncleaned), weight 1 on exactly the unreplaced samples (perfect cleaning),
    and the same with BOME's heavy-ball momentum 0.9 on the inner SGD."""
    import torch

    name, params, obj = _problem("cleaning")
    out = {}
    for label, weights, momentum in (("uncleaned", "uniform", 0.0), ("perfect", "clean", 0.0),
                                     ("uncleaned_momentum", "uniform", 0.9), ("perfect_momentum", "clean", 0.9)):
        prob = obj.compile(seed=args.seed)
        v = prob.v0.clone()
        if weights == "clean":
            v = prob.clean_mask.to(v.dtype)
        theta = prob.theta0.clone().requires_grad_(True)
        opt = torch.optim.SGD([theta], lr=0.01, momentum=momentum)
        cpu0 = time.process_time()
        accs = []
        for step in range(args.steps):
            opt.zero_grad()
            prob.inner_loss(theta, v, prob.sample(step)).backward()
            opt.step()
            if step >= args.steps - 10 * TAIL and step % 10 == 9:  # the last 50 outer steps' worth
                accs.append(prob.metrics(theta.detach(), v)["test_accuracy"])
        out[label] = {"test_accuracy": statistics.fmean(accs), "inner_steps": args.steps, "cpu_s": time.process_time() - cpu0}
        print(label, out[label], flush=True)
    write_result("classification_bounds", out)


def cmd_weights(args: argparse.Namespace) -> None:
    """The cleaning runs' learned weights against the true clean mask: how far v moved from 0.5, BOME's
    F1 of clip(v) > 0.5 against the unreplaced samples, and how many v left [0, 1], where the clip
    σ(v) = clip(v, 0, 1) has zero gradient, so those weights never move again (BOME instead projects w
    back onto [0, 1] after each outer step)."""
    import numpy as np

    from pinnctl import runs

    masks: dict[int, Any] = {}
    out = {}
    for r in done_runs():
        if r["task"] != "cleaning" or r["status"] != "done" or "run_dir" not in r:
            continue
        cfg, obj = row_config("cleaning", r["row"], r["seed"], r["outer_steps_asked"])
        if r["seed"] not in masks:
            masks[r["seed"]] = obj.compile(seed=r["seed"]).clean_mask.numpy()
        clean = masks[r["seed"]]
        v = runs.read(RUN_DIRS / Path(r["run_dir"]).name)["arrays"]["control/v"]
        keep = np.clip(v, 0, 1) > 0.5
        tp = float((keep & clean).sum())
        prec, rec = tp / max(keep.sum(), 1), tp / clean.sum()
        stuck_lo, stuck_hi = v < 0, v > 1
        row = {"mean_abs_move": float(np.abs(v - 0.5).mean()), "f1": 2 * prec * rec / max(prec + rec, 1e-12),
               "precision": prec, "recall": rec, "below0": float(stuck_lo.mean()), "above1": float(stuck_hi.mean()),
               "clean_below0": float((stuck_lo & clean).sum() / clean.sum()),
               "noisy_above1": float((stuck_hi & ~clean).sum() / (~clean).sum())}
        key = f"{r['row']}@{r['outer_steps_asked']}:s{r['seed']}"
        out[key] = row
        print(f"{key:<28} " + " ".join(f"{k} {x:.4f}" for k, x in row.items()), flush=True)
    write_result("classification_weights", out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--runs", default="paper", help="task:row:seed,... or 'paper' (every paper row at --seeds)")
    r.add_argument("--seeds", default="0,1,2")
    r.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="runs side by side (one process each)")
    r.add_argument("--outer-steps", type=int, default=DEFAULT_STEPS)
    sub.add_parser("report")
    sub.add_parser("weights")
    b = sub.add_parser("bounds")
    b.add_argument("--steps", type=int, default=5000)
    b.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    {"run": cmd_run, "report": cmd_report, "bounds": cmd_bounds, "weights": cmd_weights}[args.cmd](args)


if __name__ == "__main__":
    main()
