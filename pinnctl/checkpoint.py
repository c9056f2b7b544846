"""Atomic checkpoints: everything needed to continue a run to the same numbers.

A checkpoint is a dict of tensors, numbers, strings, lists and dicts only (θ, v, both
optimiser states, the estimator's curvature state, RNG states, the outer step), written
to a temporary file in the same directory and renamed over the old one, so a crash while
writing leaves the previous checkpoint intact. It is loaded with ``weights_only=True``:
no arbitrary pickle is ever executed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from . import PinnctlError

CHECKPOINT = "checkpoint.pt"
FORMAT = "pinnctl-checkpoint/1"


def save(path: str | Path, payload: dict[str, Any]) -> Path:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        torch.save({"format": FORMAT, **payload}, tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def load(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT
    if not path.exists():
        raise PinnctlError(f"no checkpoint at {path} (runs write one every `checkpoint_every` outer steps)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for corrupt or foreign files
        raise PinnctlError(f"checkpoint {path} is unreadable or not a pinnctl checkpoint: {str(e).splitlines()[0]}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise PinnctlError(f"{path} is not a {FORMAT} checkpoint")
    return payload
