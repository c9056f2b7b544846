"""Where tensors live: checking the configured devices, the layout of the two roles, moving state.

Two roles: the *state* (θ, v, batches, the inner loop: ``device``) and the *curvature*
(the NHGD curvature and, with ``--parallel``, the worker process: ``curvature_device``,
empty = the same as ``device``). Everything else allocates like its inputs, so these two
strings are the only places a device is chosen (DESIGN.md §4).
"""

from __future__ import annotations

from typing import Any

import torch

from . import PinnctlError


def check(key: str, name: str) -> torch.device:
    """``name`` as a torch.device that exists on this machine, or a one-line error naming it."""
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise PinnctlError(f"{key} '{name}' is not a device name; use cpu, cuda or cuda:N") from None
    if dev.type == "cpu":
        return dev
    if dev.type != "cuda":
        raise PinnctlError(f"{key} '{name}': pinnctl runs on cpu or cuda[:N] devices")
    count = torch.cuda.device_count()
    if count == 0:
        build = "a CPU-only torch build" if torch.version.cuda is None else f"torch built for CUDA {torch.version.cuda}"
        raise PinnctlError(f"{key} '{name}': this machine has no CUDA device (torch.cuda.device_count() = 0, "
                           f"{build}); use {key}=cpu")
    if dev.index is not None and dev.index >= count:
        raise PinnctlError(f"{key} '{name}' does not exist: torch.cuda.device_count() = {count} "
                           f"(cuda:0 … cuda:{count - 1})")
    return dev


def curvature_device(cfg: Any) -> str:
    """Where the curvature lives: ``curvature_device``, or the state's device when it is empty."""
    return cfg.curvature_device or cfg.device


def check_config(cfg: Any) -> None:
    check("device", cfg.device)
    check("curvature_device", curvature_device(cfg))


def layout(cfg: Any) -> str:
    """A name for the configured layout (printed at start, recorded by bench/gpu_check.py)."""
    state, curv = torch.device(cfg.device), torch.device(curvature_device(cfg))
    where = "inline" if not cfg.parallel.enabled else "worker process"
    if state.type == curv.type == "cpu":
        return f"cpu ({where})"
    if state == curv:
        return f"one device {state} ({where}{', gloo over host memory' if cfg.parallel.enabled else ''})"
    return f"state on {state}, curvature on {curv} ({where})"


def to_device(obj: Any, device: torch.device | str) -> Any:
    """A copy of a nest of dicts/lists/tuples with every floating or integer tensor on ``device``
    (checkpoints are loaded onto the CPU; a resumed run puts its state back where it runs)."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: to_device(x, device) for k, x in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_device(x, device) for x in obj)
    return obj
