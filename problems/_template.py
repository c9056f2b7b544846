"""One line that `pinnctl list` shows: what is controlled, and what the objective tracks.

Copy this file to ./problems/<name>.py (or a folder in $PINNCTL_PROBLEMS), rename, and fill in
the four places marked ►. Files starting with "_" are skipped by discovery, so this template
never shows up itself. The walk-through is docs/define-a-problem.md.
"""

import torch

from pinnctl.geometry import Box
from pinnctl.nets import MLP
from pinnctl.problem import Boundary, Grid, Initial, Interior, PDEProblem, TimeControl, Tracking


def target(x):  # ► the state you want, at points x = (space..., time), one row per point
    return torch.zeros(x.shape[0])


def make(nu: float = 0.1) -> PDEProblem:  # keyword defaults become `--set params.nu=...`
    def residual(x, u, f, ops):  # ► the PDE residual; f is the control at each point
        return ops.dt(u, x) - nu * ops.laplacian(u, x, space=(0,)) - f

    return PDEProblem(
        name="template",  # ► must equal the file name
        domain=Box([0.0], [1.0]),  # ► Box for boxes; pinnctl.geometry.DeepXDEGeometry for other shapes
        time=(0.0, 1.0),  # None for a steady problem
        conditions={  # named terms of the inner loss; names show up in logs, run files and plots
            "pde": Interior(residual, n=256),
            "boundary": Boundary(value=0.0, n_per_side=64),
            "initial": Initial(value=0.0, n=64),
        },
        state=MLP([2, 32, 32, 1]),  # inputs = space dims + 1 (time)
        control=TimeControl(MLP([1, 16, 1])),  # FieldControl(...) for f(x, t); VectorControl(n) for plain parameters
        objective=Tracking(target, points=Grid(21, 21)),  # grid per axis (space..., time)
        reference=None,  # name of a module in reference/ giving the exact objective, if you have one
        params={"nu": nu},
    )
