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
# # Define a problem in a cell, solve it, plot it
#
# A rod on [0, 1] heated by a source f(t); ends held at 0, the rod starts cold; we want the
# temperature to follow sin(πx)·t. The residual is a plain function of the points, the state
# and the control (docs/define-a-problem.md explains each piece).

# %%
import os

import matplotlib.pyplot as plt
import torch

import pinnctl
from pinnctl.geometry import Box
from pinnctl.nets import MLP
from pinnctl.problem import Boundary, Grid, Initial, Interior, PDEProblem, TimeControl, Tracking

SMOKE = os.environ.get("PINNCTL_SMOKE") == "1"
OUT = os.environ.get("PINNCTL_NOTEBOOK_OUT", "runs/notebook-define")


def residual(x, u, f, ops):  # u_t − ν u_xx − f(t) = 0, ν = 0.1
    return ops.dt(u, x) - 0.1 * ops.laplacian(u, x, space=(0,)) - f


heat1d = PDEProblem(
    name="heat1d",
    domain=Box([0.0], [1.0]),
    time=(0.0, 1.0),
    conditions={"pde": Interior(residual, n=256), "boundary": Boundary(value=0.0, n_per_side=64),
                "initial": Initial(value=0.0, n=64)},
    state=MLP([2, 32, 32, 1]),
    control=TimeControl(MLP([1, 16, 1])),
    objective=Tracking(lambda x: torch.sin(torch.pi * x[:, 0]) * x[:, 1], points=Grid(21, 21)),
)

# %% [markdown]
# Solve with NHGD (K-FAC curvature). There is no reference solver here, so the run reports
# the PINN-measured objective only. The stored outputs are a short run (12 outer steps).

# %%
budget = {"preset": "smoke"} if SMOKE else {"pretrain": {"steps": 200}, "outer": {"steps": 12}, "inner": {"steps": 5}}
run = pinnctl.solve(heat1d, "nhgd", out=f"{OUT}/heat1d", overwrite=True, **budget)
run.summary["final_outer_loss"], run.summary["wall_time_s"]

# %% [markdown]
# The history is a set of named arrays, one entry per outer step:

# %%
hist = run.history
fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.5))
a1.semilogy(hist["step"], hist["outer_loss"], label="objective J (PINN)")
for name in ("pde", "boundary", "initial"):
    a1.semilogy(hist["step"], hist[f"inner_terms/{name}"], lw=0.8, label=f"loss/{name}")
a1.set(xlabel="outer step")
a1.legend(fontsize=8)
t = torch.linspace(0, 1, 101).numpy()
a2.plot(t, run.control(t))
a2.set(xlabel="t", ylabel="f(t)", title="learned control");
