"""From a resolved config to the compiled problem and the estimator: one place, used by
the CLI (rank 0) and by the curvature worker (rank 1), so both build the same objects."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from . import PinnctlError
from .hypergrad.base import Estimator
from .core import BilevelProblem
from .problem import SamplingConfig


@dataclass
class Setup:
    problem_obj: Any  # the user's problem definition (PDEProblem or a bilevel problem)
    problem: BilevelProblem
    estimator: Estimator


def sampling_config(cfg: Any) -> SamplingConfig:
    return SamplingConfig(seed=cfg.sampling.seed, scheme=cfg.sampling.scheme, resample=cfg.sampling.resample)


def check_devices(cfg: Any) -> None:
    """The transport already picks NCCL for two CUDA devices (pinnctl.parallel), but the problem
    compilers still create every tensor on the CPU: refuse GPU devices rather than pretend."""
    for key in ("device", "curvature_device"):
        if getattr(cfg, key) != "cpu":
            raise PinnctlError(f"{key} '{getattr(cfg, key)}': only 'cpu' is supported so far (the problem compilers "
                               "place θ, v and the batches on the CPU)")


def build(cfg: Any, problem_obj: Any | None = None) -> Setup:
    from .discovery import find
    from .hypergrad import make_method
    from .problem import compile_problem

    check_devices(cfg)
    if problem_obj is None:
        problem_obj = find(cfg.problem).build(**cfg.params)
    estimator = make_method(cfg.method.name, cfg.method.options)
    if hasattr(problem_obj, "compile"):  # non-PDE problems (classification) compile themselves
        problem = problem_obj.compile(seed=cfg.seed)
    else:
        problem = compile_problem(problem_obj, sampling_config(cfg), seed=cfg.seed)
    return Setup(problem_obj, problem, estimator)
