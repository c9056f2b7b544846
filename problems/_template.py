"""One line that `pinnctl list` shows: what is controlled, and what the objective tracks.

Copy this file to ./problems/<name>.py (or a folder in $PINNCTL_PROBLEMS), rename, and fill in
the places marked ►. Files starting with "_" are skipped by discovery, so this template
never shows up itself. The walk-through is docs/define-a-problem.md.
"""

import torch

from pinnctl.geometry import Box
from pinnctl.nets import MLP
from pinnctl.problem import Boundary, Grid, Initial, Interior, Neumann, PDEProblem, TimeControl, Tracking


def target(x):  # ► the state you want, at points x = (space..., time), one row per point
    return x.new_zeros(x.shape[0])


def make(nu: float = 0.1) -> PDEProblem:  # keyword defaults become `--set params.nu=...`
    def residual(x, u, f, ops):  # ► the PDE residual; f is the control at each point
        # a system: state=MLP([2, 32, 32, 2]), outputs=("u", "w"); then u is u["u"], u["w"], ops.dx(u["w"], x, 0),
        # and returning {"u": ..., "w": ...} makes two named loss terms ("pde.u", "pde.w")
        return ops.dt(u, x) - nu * ops.laplacian(u, x, space=(0,)) - f

    return PDEProblem(
        name="template",  # ► must equal the file name
        domain=Box([0.0], [1.0]),  # ► Box for boxes; pinnctl.geometry.DeepXDEGeometry for other shapes
        time=(0.0, 1.0),  # None for a steady problem
        conditions={  # named terms of the inner loss; names show up in logs, run files and plots
            "pde": Interior(residual, n=256),
            # where= picks a boundary part: a face ("x=lo", "y=hi", ...), a list of faces, or a predicate on points
            "left": Boundary(value=0.0, where="x=lo", n_per_side=64),  # Dirichlet u = value (value=CONTROL: boundary control)
            "right": Neumann(value=0.0, where="x=hi", n_per_side=64),  # ∂u/∂n = value (outward normal); Robin(a, b, value)
            "initial": Initial(value=0.0, n=64),
        },
        state=MLP([2, 32, 32, 1]),  # inputs = space dims + 1 (time); outputs=("u", ...) names several outputs
        control=TimeControl(MLP([1, 16, 1])),  # FieldControl(...) for f(x, t); VectorControl(n, profile=...) for parameters
        objective=Tracking(target, points=Grid(21, 21)),  # grid per axis (space..., time)
        reference=None,  # a bundled reference's name, or an object of your own (see pinnctl.pde.reference.Reference)
        params={"nu": nu},
    )
