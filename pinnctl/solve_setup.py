"""From a resolved config to the compiled problem and the estimator: one place, used by
the CLI (rank 0) and by the curvature worker (rank 1), so both build the same objects."""

from __future__ import annotations

from dataclasses import dataclass
import os
from typing import Any

import torch

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
    """Both devices exist on this machine (one-line errors naming the device and the CUDA count)."""
    from .devices import check_config

    check_config(cfg)


def build(cfg: Any, problem_obj: Any | None = None, device: str | None = None, role: str = "state") -> Setup:
    """The compiled problem on ``device`` (default ``cfg.device``; the curvature worker passes its
    own and ``role="worker"``) and the estimator. Inline, an NHGD curvature on another device is
    placed there; a data rank (parallel.data_ranks > 1) sees its shard of the problem."""
    from .devices import curvature_device
    from .discovery import find
    from .hypergrad import make_method
    from .hypergrad.curvature import Placed
    from .problem import compile_problem

    check_devices(cfg)
    device = device or cfg.device
    if problem_obj is None:
        problem_obj = find(cfg.problem).build(**cfg.params)
    estimator = make_method(cfg.method.name, cfg.method.options)
    curv_dev = torch.device(curvature_device(cfg))
    if not cfg.parallel.enabled and hasattr(estimator, "curvature") and curv_dev != torch.device(device):
        estimator.curvature = Placed(estimator.curvature, curv_dev)
    if hasattr(problem_obj, "compile"):  # non-PDE problems (classification) compile themselves
        problem = problem_obj.compile(seed=cfg.seed, device=device)
    else:
        problem = compile_problem(problem_obj, sampling_config(cfg), seed=cfg.seed, device=device)
    if role == "state" and cfg.parallel.enabled and cfg.parallel.data_ranks > 1:
        from .dataparallel import sharded

        problem = sharded(problem, int(os.environ["RANK"]), cfg.parallel.data_ranks)
    return Setup(problem_obj, problem, estimator)
