"""How accurate is each curvature's hypergradient? Cosine and norm ratio against `exact`.

(a) L2-regularised multinomial logistic regression (strongly convex, log-likelihood
    loss): the paper's empirical Fisher should be a sound Hessian estimate here.
(b) heat2d at a converged state PINN (squared-residual loss): the empirical Fisher
    scales with the residuals and vanishes; Gauss–Newton / K-FAC keep the right scale.

Each estimator is fed the same kind of inner trajectory (steps from the converged
state θ*), then asked for the hypergradient at θ*, where the truth is computed. The cross
term is taken on the full batch (``cross=full``) so that only the curvature differs. `python bench/hypergrad_accuracy.py [--quick]`
writes bench/results/hypergrad_accuracy.json and prints a table and a summary line.
"""

from __future__ import annotations

import argparse
import time

import torch

from _common import write_result
from pinnctl.bilevel import InnerState, inner_step, train_state
from pinnctl.config import InnerCfg
from pinnctl.hypergrad import make_method
from pinnctl.hypergrad.autodiff import inner_grad


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(a.double() @ b.double() / (a.double().norm() * b.double().norm()))


def evaluate(prob, theta, v, truth, configs, steps, lr, optimizer, step0=0, same_damping=None):
    """Feed each estimator `steps` inner steps from θ, compare its hypergradient with `truth`."""
    rows = []
    for label, opts in configs:
        est = make_method("nhgd", opts)
        state = InnerState.create(theta, InnerCfg(lr=lr), optimizer=optimizer)
        state.step = step0
        t0 = time.perf_counter()
        for _ in range(steps):
            info = inner_step(prob, state, v)
            est.observe(est.collect(prob, info))
        h = est.hypergradient(prob, theta, v, step=state.step).h
        rows.append({
            "estimator": label, **{k: opts[k] for k in opts if k != "curvature"},
            "cosine": cosine(h, truth), "norm_ratio": float(h.norm() / truth.norm()),
            "rel_error": float((h.double() - truth.double()).norm() / truth.double().norm()),
            "time_s": time.perf_counter() - t0,
        })
        if same_damping and opts.get("damping") in same_damping:
            t = same_damping[opts["damping"]]
            rows[-1]["norm_ratio_same_damping"] = float(h.norm() / t.norm())
            rows[-1]["rel_error_same_damping"] = float((h.double() - t).norm() / t.norm())
        same = f"  [same damping: rel.err {rows[-1]['rel_error_same_damping']:.2e}]" if "rel_error_same_damping" in rows[-1] else ""
        print(f"  {label:<36} cos {rows[-1]['cosine']:+.4f}  |h|/|h*| {rows[-1]['norm_ratio']:.3e}  rel.err {rows[-1]['rel_error']:.3e}{same}", flush=True)
    return rows


def logistic_part(quick: bool) -> dict:
    from pinnctl.toys import logistic_cleaning

    prob = logistic_cleaning(n_train=2000, n_val=200, dim=8, classes=4, noise=0.3, lam=1e-4, batch_size=1)
    v = torch.ones(2000, dtype=torch.float64)
    theta = prob.theta0.clone()
    full = prob.full_batch()
    for _ in range(30):  # Newton to the exact inner optimum
        H = torch.func.hessian(lambda t: prob.inner_loss(t, v, full))(theta)
        theta = theta - torch.linalg.solve(H, inner_grad(prob, theta, v, full))
    truth = make_method("exact").hypergradient(prob, theta, v, step=0).h
    lam = prob.info["lambda"]
    steps = 1000 if quick else 4000
    configs = [(f"efim beta={b} lambda0={l0}", {"curvature": "efim", "beta": b, "efim_lambda0": l0, "cross": "full"})
               for b in (0.99, 0.999) for l0 in (1e-4, 1e-2)]
    configs += [(f"gn damping={d}", {"curvature": "gn", "damping": d, "cross": "full", "gn_rows": 64, "gn_window": 64}) for d in (1e-6, 1e-3, 1e-1)]
    configs += [(f"kfac damping={d}", {"curvature": "kfac", "damping": d, "beta": 0.99, "cross": "full"}) for d in (2 * lam, 1e-1)]
    configs += [(f"{c} damping={d} refine=0", {"curvature": c, "damping": d, "refine": 0, "cross": "full", **extra})
                for c, extra in (("gn", {"gn_rows": 64, "gn_window": 64}), ("kfac", {"beta": 0.99})) for d in (1e-3, 1e-1)]
    print(f"(a) logistic regression, p = {theta.numel()}, per-sample SGD steps = {steps}")
    rows = evaluate(prob, theta, v, truth, configs, steps, lr=0.005, optimizer="sgd")
    return {"problem": "logistic_cleaning(n=2000, d=8, C=4, label noise 0.3, lambda=1e-4), weights 1, per-sample SGD lr 0.005",
            "steps": steps, "rows": rows}


def heat2d_part(quick: bool) -> dict:
    from pinnctl.discovery import discover
    from pinnctl.hypergrad.exact import exact_ihvp
    from pinnctl.hypergrad.autodiff import cross_vjp, outer_grads
    from pinnctl.problem import compile_problem

    pde = discover().get("heat2d").build()
    prob = compile_problem(pde, seed=0)
    v = prob.v0.clone()
    state = InnerState.create(prob.theta0, InnerCfg(lr=1e-3))
    pre = 1000 if quick else 4000
    t0 = time.perf_counter()
    loss = train_state(prob, state, v, pre)
    print(f"(b) heat2d: state pretrained {pre} Adam steps ({time.perf_counter() - t0:.0f} s), inner loss {loss:.3e}")
    theta = state.theta.detach()
    gv, gt, _ = outer_grads(prob, theta, v)
    truths = {}
    for lam in (1e-2, 1e-4, 1e-6):
        w, info = exact_ihvp(prob, theta, v, gt, matrix="gn", solver="cg", damping=lam, tol=1e-8, maxiter=500 if quick else 3000)
        truths[lam] = (gv - cross_vjp(prob, theta, v, prob.full_batch(), w.float())).double()
        print(f"  exact GN, damping {lam:g}: |h| {truths[lam].norm():.3e}  CG {info['cg_iterations']} it, residual {info['cg_residual']:.1e}")
    ref_lam = 1e-6
    truth = truths[ref_lam]
    steps = 20 if quick else 50
    n_rows = sum(x.shape[0] for x in prob.full_batch().values())
    configs = [(f"efim beta={b} lambda0={l0}", {"curvature": "efim", "beta": b, "efim_lambda0": l0, "M": 1})
               for b in (0.95,) for l0 in (1e-3, 1.0)]
    configs += [(f"gn damping={d} rows=512 window={steps}", {"curvature": "gn", "damping": d, "refine": 0, "gn_rows": 512, "gn_window": steps}) for d in (1e-4, 1e-2)]
    configs += [(f"gn damping={d} full batch", {"curvature": "gn", "damping": d, "refine": 0, "gn_rows": n_rows, "gn_window": 1}) for d in (1e-4, 1e-2)]
    configs += [(f"kfac damping={d} refine={k}", {"curvature": "kfac", "damping": d, "beta": 0.95, "refine": k})
                for d in (1e-4, 1e-2) for k in (0, 5, 20)]
    rows = evaluate(prob, theta, v, truth, configs, steps, lr=1e-3, optimizer="adam", step0=state.step, same_damping=truths)
    return {
        "problem": "heat2d (nu=0.001), state pretrained", "pretrain_steps": pre, "inner_loss": loss, "steps": steps,
        "truth": f"exact Gauss-Newton, damping {ref_lam:g}, CG",
        "truth_sensitivity": {str(k): cosine(t, truth) for k, t in truths.items()},
        "truth_norms": {str(k): float(t.norm()) for k, t in truths.items()},
        "rows": rows,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="shorter trajectories (minutes)")
    ap.add_argument("--part", choices=("logistic", "heat2d", "both"), default="both")
    args = ap.parse_args()
    out = {"quick": args.quick}
    if args.part in ("logistic", "both"):
        out["logistic"] = logistic_part(args.quick)
    if args.part in ("heat2d", "both"):
        out["heat2d"] = heat2d_part(args.quick)
    path = write_result("hypergrad_accuracy", out)
    best = {k: max(out[k]["rows"], key=lambda r: r["cosine"]) for k in ("logistic", "heat2d") if k in out}
    efim = {k: [r for r in out[k]["rows"] if r["estimator"].startswith("efim")] for k in best}
    summary = "; ".join(
        f"{k}: best {b['estimator']} cos {b['cosine']:.3f}, efim |h|/|h*| {min(r['norm_ratio'] for r in efim[k]):.1e}..{max(r['norm_ratio'] for r in efim[k]):.1e}"
        for k, b in best.items())
    print(f"hypergrad_accuracy: {summary} -> {path}")


if __name__ == "__main__":
    main()
