"""What a problem file imports: the declarations of :mod:`pinnctl.pde` in one place.

``from pinnctl.problem import Boundary, Interior, PDEProblem, ...`` is the user-facing path;
the code lives in ``pinnctl.pde`` (declare, conditions, compile, taylor, kfac, reference).
"""

from .geometry import Box, DeepXDEGeometry
from .nets import MLP
from .pde.compile import DEFAULT_TIME_SAMPLES, SamplingConfig, compile_problem, objective_points, sample_conditions
from .pde.conditions import (
    CONTROL, At, Boundary, BoundaryEquation, Condition, ControlRef, Data, Initial, Interior, Neumann, Robin,
)
from .pde.declare import (
    Basis, Control, FieldControl, Functional, Grid, Objective, Part, PDEProblem, PiecewiseLinear, Points, TimeControl,
    Tracking, VectorControl, constant_control, control_params, control_values, relu_penalty, tikhonov,
)
from .pde.kfac import combine_kfac_terms, kfac_expand_factors, layer_inputs_and_grads, pde_kfac_factors
from .pde.reference import (
    ControlVector, FieldSamples, Optimum, Reference, TimeSamples, as_reference, load_reference, reference_of,
)
from .pde.taylor import ChannelRecorder, Fields, JetOps

__all__ = [
    "Box", "DeepXDEGeometry", "MLP", "DEFAULT_TIME_SAMPLES", "SamplingConfig", "compile_problem", "objective_points",
    "sample_conditions", "CONTROL", "At", "Boundary", "BoundaryEquation", "Condition", "ControlRef", "Data", "Initial", "Interior", "Neumann",
    "Robin", "Basis", "Control", "FieldControl", "Functional", "Grid", "Objective", "Part", "PDEProblem", "PiecewiseLinear",
    "Points", "TimeControl", "Tracking", "VectorControl", "constant_control", "control_params", "control_values",
    "relu_penalty", "tikhonov", "combine_kfac_terms", "kfac_expand_factors", "layer_inputs_and_grads",
    "pde_kfac_factors", "ControlVector", "FieldSamples", "Optimum", "Reference", "TimeSamples", "as_reference",
    "load_reference", "reference_of", "ChannelRecorder", "Fields", "JetOps",
]
