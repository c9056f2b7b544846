# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # NHGD against Broyden on heat2d
#
# Same problem, seed, pretraining and inner loop; only the hypergradient differs: NHGD
# (K-FAC curvature kept up to date during the inner loop) against the Broyden solve of
# Bi-level PINN (Hao et al., ICLR 2023), faithful (`bpn`) and batched (`fast`). Every run is
# *certified*: its control is plugged into the exact reference solver, and J* is the exact
# optimum. The stored outputs come from a very short run (6 outer steps, budget below), not
# the paper's 500: they show the workflow, not the methods' final accuracy (docs/heat2d-methods.md
# has that). `PINNCTL_SMOKE=1` shrinks the budget further (the tests run it that way).

# %%
import os

import matplotlib.pyplot as plt

import pinnctl

SMOKE = os.environ.get("PINNCTL_SMOKE") == "1"
OUT = os.environ.get("PINNCTL_NOTEBOOK_OUT", "runs/notebook-compare")
BUDGET = {"preset": "smoke"} if SMOKE else {"preset": "quick", "pretrain": {"steps": 300}, "outer": {"steps": 6},
                                            "inner": {"steps": 10}, "certify_every": 2}
METHODS = {"nhgd": ("nhgd", {}), "broyden-bpn": ("broyden", {"variant": "bpn"}),
           "broyden-fast": ("broyden", {"variant": "fast"})}
if SMOKE:  # a few Broyden iterations exercise the code path
    METHODS = {name: (m, {**o, "threshold": 4} if m == "broyden" else o) for name, (m, o) in METHODS.items()}

# %%
def solve(name, method, opts):
    """A fresh run, or (PINNCTL_REUSE=1: regenerate.py --reuse) the finished one already in OUT."""
    if os.environ.get("PINNCTL_REUSE") == "1" and os.path.exists(f"{OUT}/{name}/summary.json"):
        done = pinnctl.load_run(f"{OUT}/{name}")
        if done.status == "done":
            return done
    return pinnctl.solve("heat2d", method, seed=0, out=f"{OUT}/{name}", options=opts, overwrite=True, **BUDGET)


runs = {name: solve(name, method, opts) for name, (method, opts) in METHODS.items()}

# %% [markdown]
# Certified J (thick) and PINN-measured J (thin) against wall-clock; the controls against f*.

# %%
pinnctl.compare(list(runs.values()), out=f"{OUT}/compare.png")

# %% [markdown]
# The learned controls f(t) against the exact optimal control f*:

# %%
optimum = pinnctl.reference("heat2d")
fig, ax = plt.subplots(figsize=(6, 3.5))
ax.plot(optimum.t, optimum.f, "k--", label="f* (exact)")
for name, run in runs.items():
    ax.plot(optimum.t, run.control(optimum.t), label=f"{name}: J = {run.certified['grid'] / optimum.J:.2f}·J*")
ax.set(xlabel="t", ylabel="f(t)")
ax.legend();
