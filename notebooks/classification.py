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
# # Hyper-data cleaning on MNIST: accuracy against time
#
# Learn per-sample weights of a training set whose labels are 50 % corrupted (paper App. E.1):
# NHGD with the paper's empirical Fisher against CG and the Newton-based NBO, same inner
# loop. The data are read from `$PINNCTL_DATA` (MNIST IDX files). The stored outputs use a
# 2000-sample subset and 30 outer steps.

# %%
import os

import matplotlib.pyplot as plt

import pinnctl

SMOKE = os.environ.get("PINNCTL_SMOKE") == "1"
OUT = os.environ.get("PINNCTL_NOTEBOOK_OUT", "runs/notebook-cleaning")
SIZE = {"n_train": 500, "n_val": 200} if SMOKE else {"n_train": 2000, "n_val": 500}
BUDGET = {"preset": "smoke"} if SMOKE else {"outer": {"steps": 30}}

# %%
runs = {method: pinnctl.solve("data_cleaning", method, out=f"{OUT}/{method}", params=SIZE, overwrite=True, **BUDGET)
        for method in ("nhgd", "cg", "nbo")}

# %%
fig, ax = plt.subplots(figsize=(6, 3.5))
for name, run in runs.items():
    h = run.history
    ax.plot(h["wall_time"], h["metrics/val_accuracy"], label=name)
ax.set(xlabel="wall-clock [s]", ylabel="validation accuracy")
ax.legend();

# %%
pinnctl.compare(list(runs.values()), out=f"{OUT}/compare.png")
