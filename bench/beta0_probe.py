"""What NHGD's β = 0 means on distillation n = 5 (Table 3): the hypergradient of each reading of the
update against the exact one, along a trajectory driven by the exact hypergradient at the paper's
η = 1.0 (10 full-batch inner SGD steps) and α = 0.01 (plain SGD on the pixels).

Readings of A ≈ H⁻¹ at β = 0 (g = the last inner gradient):
- ``rank1-floor``: F = g gᵀ + 2λ I (the EMA's rank-one limit with our floor = the regulariser's curvature),
- ``rank1-lambda0``: F = g gᵀ + λ₀ I (the same under the constant initial damping λ₀ = 1),
- ``identity``: A = I/λ₀ (β weighs the new gradient, so β = 0 never updates A).
Per checkpoint: cos(h, h*), ‖h‖/‖h*‖, and the outer loss of the exact-driven run.

    python bench/beta0_probe.py [--steps 100] [--every 10]
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

from _common import write_result

from pinnctl.discovery import discover
from pinnctl.hypergrad.autodiff import cross_vjp, inner_grad, outer_grads
from pinnctl.hypergrad.exact import exact_ihvp
from pinnctl.hypergrad.linalg import LowRankPlusDamping


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--every", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    obj = discover().get("distillation").build(per_class=5)
    prob = obj.compile(seed=args.seed)
    lam = prob.info["lambda"]
    theta, v = prob.theta0.clone(), prob.v0.clone()
    full = prob.full_batch()
    eta, alpha, lam0 = 1.0, 0.01, 1.0
    rows, cpu0 = [], time.process_time()
    for k in range(args.steps):
        for _ in range(10):
            g = inner_grad(prob, theta, v, full)
            theta = theta - eta * g
        gv, gt, f = outer_grads(prob, theta, v)
        w_star, info = exact_ihvp(prob, theta, v, gt, solver="cg", tol=1e-10, maxiter=3000)
        h_star = gv - cross_vjp(prob, theta, v, full, w_star.to(theta.dtype))
        if k % args.every == 0 or k == args.steps - 1:
            gd = g.double()[None]
            ws = {"rank1-floor": LowRankPlusDamping(rows=gd, damping=2 * lam).solve(gt),
                  "rank1-lambda0": LowRankPlusDamping(rows=gd, damping=lam0).solve(gt),
                  "identity": gt.double() / lam0}
            row = {"step": k, "outer_loss": f, "cg_iterations": info.get("cg_iterations"), "h_star_norm": float(h_star.norm())}
            for name, w in ws.items():
                h = gv - cross_vjp(prob, theta, v, full, w.to(theta.dtype))
                row[name] = {"cos": float(torch.nn.functional.cosine_similarity(h.double(), h_star.double(), 0)),
                             "norm_ratio": float(h.norm() / h_star.norm())}
            rows.append(row)
            print(json.dumps(row), flush=True)
        v = v - alpha * h_star
    out = {"rows": rows, "cpu_s": time.process_time() - cpu0, "load": os.getloadavg()[0], "lambda": lam}
    print("->", write_result("beta0_probe", out))


if __name__ == "__main__":
    main()
