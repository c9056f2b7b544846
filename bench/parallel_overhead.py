"""Cost of the curvature worker to the inner loop, and outer-step time inline vs parallel.

(a) Inner-loop throughput on rank 0: N inner steps bare (no curvature at all) against
    N inner steps that each hand θ_t to the worker (``stream=theta``) or compute and send
    the K-FAC statistics (``stream=stats``). Ratio = time with the worker / bare time;
    the target on hardware with two devices is ≤ 1.05. Rounds alternate bare / attached
    so machine noise hits both alike.
(b) Outer-step wall time of NHGD (K-FAC) inline against parallel, same config.

Every process runs ``--threads`` torch threads (default 1): on a 2-core machine that is
one core per rank, which is the only fair comparison there.

    python bench/parallel_overhead.py [--inner 200] [--rounds 3] [--outer 6] [--every 1,5]

Writes bench/results/parallel_overhead.json and prints a table and a one-line summary.
"""

from __future__ import annotations

import argparse
import time

import torch
from _common import write_result

from pinnctl import config as configmod
from pinnctl.bilevel import InnerState, inner_step, run, train_state
from pinnctl.parallel import parallel_estimator
from pinnctl.solve_setup import build


def make_cfg(threads: int, stream: str, every: int, max_inflight: int) -> configmod.Config:
    cfg = configmod.resolve("quick", sets={"parallel.threads": threads, "parallel.stream": stream,
                                           "parallel.max_inflight": max_inflight, "method.options.every": every,
                                           "certify_every": 0})
    cfg.parallel.enabled = True
    return cfg


def inner_loop(setup, state: InnerState, v, n: int, estimator=None) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        info = inner_step(setup.problem, state, v)
        if estimator is not None:
            estimator.observe(estimator.collect(setup.problem, info))
    return time.perf_counter() - t0


def throughput(args, stream: str, every: int) -> dict:
    cfg = make_cfg(args.threads, stream, every, args.max_inflight)
    setup = build(cfg)
    v = setup.problem.v0
    state = InnerState.create(setup.problem.theta0, cfg.pretrain)
    bare, attached = [], []
    with parallel_estimator(cfg, setup.estimator, configmod.to_dict(cfg)) as remote:
        train_state(setup.problem, state, v, 20)  # warm-up (allocations, first-call overheads)
        remote.state_dict()
        for _ in range(args.rounds):
            bare.append(inner_loop(setup, state, v, args.inner))
            attached.append(inner_loop(setup, state, v, args.inner, remote))
            remote.state_dict()  # let the worker finish this round's messages before timing bare again
        waited = remote.channel.waited_s
    b, a = min(bare), min(attached)
    return {"stream": stream, "every": every, "bare_ms_per_step": 1e3 * b / args.inner,
            "attached_ms_per_step": 1e3 * a / args.inner, "ratio": a / b, "backpressure_wait_s": waited,
            "bare_rounds_s": bare, "attached_rounds_s": attached}


def outer_time(args, parallel: bool, every: int) -> dict:
    cfg = make_cfg(args.threads, "theta", every, args.max_inflight)
    cfg.parallel.enabled = parallel
    cfg.pretrain.steps, cfg.outer.steps = 200, args.outer
    setup = build(cfg)
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    records = []
    try:
        if parallel:
            with parallel_estimator(cfg, setup.estimator, configmod.to_dict(cfg)) as remote:
                res = run(setup.problem, remote, pretrain=cfg.pretrain, inner=cfg.inner, outer=cfg.outer,
                          certify_every=0, callback=records.append)
        else:
            res = run(setup.problem, setup.estimator, pretrain=cfg.pretrain, inner=cfg.inner, outer=cfg.outer,
                      certify_every=0, callback=records.append)
    finally:
        torch.set_num_threads(threads)
    steps = records[1:]  # the first outer step carries one-off costs
    wall = (steps[-1].wall_time - records[0].wall_time) / len(steps)
    return {"mode": "parallel" if parallel else "inline", "every": every, "s_per_outer_step": wall,
            "inner_s": sum(r.inner_time for r in steps) / len(steps),
            "curvature_s_on_rank0": sum(r.curvature_time for r in steps) / len(steps),
            "hypergrad_s": sum(r.hypergrad_time for r in steps) / len(steps),
            "final_outer_loss": res.history[-1].outer_loss}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--inner", type=int, default=200, help="inner steps per timing round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--outer", type=int, default=6, help="outer steps for (b)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process")
    ap.add_argument("--max-inflight", type=int, default=8)
    ap.add_argument("--every", default="1,5", help="NHGD curvature update interval(s)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    everies = [int(e) for e in args.every.split(",")]

    rows_a = [throughput(args, stream, every) for every in everies for stream in ("theta", "stats")]
    for r in rows_a:
        print(f"(a) stream {r['stream']:<5} every {r['every']}: bare {r['bare_ms_per_step']:.1f} ms/step, "
              f"with worker {r['attached_ms_per_step']:.1f} ms/step, ratio {r['ratio']:.3f} "
              f"(back-pressure wait {r['backpressure_wait_s']:.2f} s)", flush=True)
    rows_b = [outer_time(args, parallel, every) for every in everies for parallel in (False, True)]
    for r in rows_b:
        print(f"(b) {r['mode']:<8} every {r['every']}: {r['s_per_outer_step']:.2f} s/outer step (inner {r['inner_s']:.2f}, "
              f"curvature on rank 0 {r['curvature_s_on_rank0']:.2f}, hypergradient {r['hypergrad_s']:.2f})", flush=True)
    speedups = {e: next(r for r in rows_b if r["every"] == e and r["mode"] == "inline")["s_per_outer_step"]
                / next(r for r in rows_b if r["every"] == e and r["mode"] == "parallel")["s_per_outer_step"] for e in everies}
    path = write_result("parallel_overhead", {"args": vars(args), "throughput": rows_a, "outer": rows_b,
                                              "outer_speedup_parallel_over_inline": speedups})
    theta = {r["every"]: r["ratio"] for r in rows_a if r["stream"] == "theta"}
    print("parallel_overhead: inner-loop time ratio with worker (theta stream) "
          + ", ".join(f"every {e}: {x:.3f}" for e, x in theta.items())
          + "; outer-step speed-up parallel/inline " + ", ".join(f"every {e}: {x:.2f}x" for e, x in speedups.items())
          + f" -> {path}")


if __name__ == "__main__":
    main()
