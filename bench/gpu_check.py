"""One command for a machine with a GPU: heat2d on the device inline and in the one-GPU
parallel layout, the same on the CPU for the ratio, NHGD and broyden-fast side by side.

Per run: seconds per outer step split into inner / curvature / hypergradient, ms per
inner step, peak GPU memory of this process (the inline runs and rank 0 of the parallel
ones), and the certified J at the end against the reference optimum J*. Derived figures:
inner-step speed-up of the device over the CPU, and the parallel overhead (inner-loop time
with the worker attached / the inline inner loop, same device).

    python bench/gpu_check.py                    # cuda:0, about 4 minutes on one GPU
    python bench/gpu_check.py --tiny --device cpu  # the code path on a CPU (tests)

Writes bench/results/gpu_check.json (or --out) and prints one line per figure.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import torch
from _common import machine

from pinnctl import PinnctlError
from pinnctl import config as configmod
from pinnctl.bilevel import run
from pinnctl.devices import check, layout
from pinnctl.solve_setup import build

# budgets: "full" is sized for ≤ 4 minutes on one GPU (the CPU runs are shorter on purpose)
BUDGETS = {
    "full": {"device": {"pretrain.steps": 500, "inner.steps": 50, "outer.steps": 20},
             "cpu": {"pretrain.steps": 50, "inner.steps": 50, "outer.steps": 3}},
    "tiny": {"device": {"pretrain.steps": 2, "inner.steps": 2, "outer.steps": 2},
             "cpu": {"pretrain.steps": 2, "inner.steps": 2, "outer.steps": 2}},
}
METHODS = {"nhgd": {}, "broyden-fast": {"method.name": "broyden", "method.options.variant": "fast"}}


def one_run(device: str, method: str, parallel: bool, budget: dict[str, Any]) -> dict[str, Any]:
    from pinnctl.parallel import parallel_estimator

    sets = {"device": device, "curvature_device": "", "certify_every": 0, "checkpoint_every": 0,
            "method.name": method, **budget, **METHODS[method]}
    cfg = configmod.resolve("quick", sets=sets)
    cfg.parallel.enabled = parallel
    setup = build(cfg)
    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    kw = dict(pretrain=cfg.pretrain, inner=cfg.inner, outer=cfg.outer, certify_every=0)
    if parallel:
        with parallel_estimator(cfg, setup.estimator, configmod.to_dict(cfg)) as remote:
            result = run(setup.problem, remote, **kw)
    else:
        result = run(setup.problem, setup.estimator, **kw)
    if cuda:
        torch.cuda.synchronize()
    wall = time.perf_counter() - start
    steps = result.history[1:] or result.history  # the first outer step pays one-off costs
    mean = {part: sum(getattr(r, f"{part}_time") for r in steps) / len(steps) for part in ("inner", "curvature", "hypergrad")}
    ref = setup.problem.info.get("reference")
    optimum = ref.optimum(setup.problem.info.get("measure") or "grid") if ref is not None else None
    j = setup.problem.certify(result.v)["grid"] if setup.problem.certify is not None else float("nan")
    return {
        "layout": layout(cfg), "device": device, "method": method, "parallel": parallel, "budget": budget,
        "wall_s": wall, "pretrain_s": result.pretrain_time,
        "outer_step_s": sum(mean.values()), **{f"{k}_s_per_outer": x for k, x in mean.items()},
        "inner_ms_per_step": 1e3 * mean["inner"] / cfg.inner.steps,
        "peak_gpu_memory_mb": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
        "certified_J": j, "J_star": optimum.J if optimum is not None else None,
        "J_over_J_star": j / optimum.J if optimum is not None and optimum.J > 0 else None,
    }


def figures(runs: dict[str, dict[str, Any]], device: str, methods: list[str]) -> dict[str, float]:
    out = {}
    for method in methods:
        dev, cpu, par = runs[f"{method}/{device}/inline"], runs[f"{method}/cpu/inline"], runs[f"{method}/{device}/parallel"]
        out[f"{method}: inner step speed-up {device} vs cpu"] = cpu["inner_ms_per_step"] / dev["inner_ms_per_step"]
        out[f"{method}: parallel overhead (inner loop with worker / inline)"] = par["inner_s_per_outer"] / dev["inner_s_per_outer"]
        out[f"{method}: outer step inline / parallel on {device}"] = dev["outer_step_s"] / par["outer_step_s"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda:0")
    ap.add_argument("--tiny", action="store_true", help="smallest budgets: checks the code path, measures nothing")
    ap.add_argument("--methods", default=",".join(METHODS), help=f"subset of {', '.join(METHODS)}")
    ap.add_argument("--out", help="JSON path (default bench/results/gpu_check.json)")
    args = ap.parse_args()
    try:
        check("device", args.device)
    except PinnctlError as e:  # a machine without that device: one line, exit 2
        raise SystemExit(f"gpu_check: {e}") from None
    budgets = BUDGETS["tiny" if args.tiny else "full"]
    runs: dict[str, dict[str, Any]] = {}
    methods = args.methods.split(",")
    unknown = set(methods) - set(METHODS)
    if unknown:
        raise SystemExit(f"gpu_check: unknown method(s) {', '.join(sorted(unknown))}; known: {', '.join(METHODS)}")
    plan = [(m, d, p) for m in methods for d, p in ((args.device, False), (args.device, True), ("cpu", False))]
    for method, device, parallel in plan:
        key = f"{method}/{device}/{'parallel' if parallel else 'inline'}"
        if key in runs:  # --device cpu: the CPU reference run is the device run
            continue
        runs[key] = r = one_run(device, method, parallel, budgets["cpu" if device == "cpu" else "device"])
        mem = f", peak GPU memory {r['peak_gpu_memory_mb']:.0f} MB" if r["peak_gpu_memory_mb"] is not None else ""
        ratio = f" = {r['J_over_J_star']:.3f}·J*" if r["J_over_J_star"] is not None else ""
        print(f"{key}: {r['outer_step_s']:.3f} s/outer step (inner {r['inner_s_per_outer']:.3f}, curvature "
              f"{r['curvature_s_per_outer']:.3f}, hypergradient {r['hypergrad_s_per_outer']:.3f}), "
              f"{r['inner_ms_per_step']:.2f} ms/inner step{mem}, certified J {r['certified_J']:.4e}{ratio} "
              f"[{r['layout']}]", flush=True)
    derived = figures(runs, args.device, methods)
    for name, value in derived.items():
        print(f"{name}: {value:.3f}" if math.isfinite(value) else f"{name}: n/a")
    payload = {"machine": machine(), "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
               "tiny": args.tiny, "runs": runs, "figures": derived}
    out = Path(args.out) if args.out else Path(__file__).resolve().parent / "results" / "gpu_check.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=1, default=float))
    print(f"gpu_check: {len(runs)} runs, {len(derived)} figures -> {out}")


if __name__ == "__main__":
    main()
