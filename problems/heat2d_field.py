"""heat2d with a space-time control field f(x,y,t) (a 4.5k-parameter control net); exact optimum J* = 0."""

from dataclasses import replace

from pinnctl.nets import MLP
from pinnctl.problem import FieldControl, PDEProblem
from pinnctl.problems import heat2d


def make(nu: float = 0.001) -> PDEProblem:
    # the same PDE, conditions, state net and target as heat2d; only the control (and so the reference) differs
    return replace(heat2d.make(nu), name="heat2d_field", control=FieldControl(MLP([3, 64, 64, 1])), reference="heat2d_field")
