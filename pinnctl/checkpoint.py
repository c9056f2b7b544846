"""Atomic, checksummed checkpoints: everything needed to continue a run to the same numbers.

A checkpoint is a dict of tensors, numbers, strings, lists and dicts only (θ, v, both
optimiser states, the estimator's curvature state, RNG states, the outer step, the run's
config and its history so far), written to a temporary file in the same directory and
renamed over the old one, so a crash while writing leaves the previous checkpoint intact.
It is loaded with ``weights_only=True``: no arbitrary pickle is ever executed. A SHA-256
of every value (tensor bytes, dtypes, shapes, and the plain values) is stored with it and
checked on load, because torch's zip container does not verify its records: flipped bytes
inside a tensor would otherwise load as a silently different curvature or θ.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import torch

from . import PinnctlError, one_line

CHECKPOINT = "checkpoint.pt"
FORMAT = "pinnctl-checkpoint/2"
OLD_FORMATS = ("pinnctl-checkpoint/1",)  # before checksums: loaded unverified


def checksum(payload: Any) -> str:
    """SHA-256 of a checkpoint payload, independent of how torch lays out the file."""
    h = hashlib.sha256()
    _feed(h, payload)
    return h.hexdigest()


def _feed(h: Any, obj: Any) -> None:
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    elif isinstance(obj, dict):
        h.update(f"D{len(obj)}".encode())
        for key in sorted(obj, key=repr):
            _feed(h, key)
            _feed(h, obj[key])
    elif isinstance(obj, (list, tuple)):
        h.update(f"L{len(obj)}".encode())
        for item in obj:
            _feed(h, item)
    else:
        h.update(f"S{type(obj).__name__}:{obj!r};".encode())


def save(path: str | Path, payload: dict[str, Any]) -> Path:
    path = Path(path)
    body = {"format": FORMAT, **payload}
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        torch.save({**body, "checksum": checksum(body)}, tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path



def load(path: str | Path) -> dict[str, Any]:
    """The checkpoint's payload; a missing, empty, truncated, foreign or corrupted file is a
    one-line PinnctlError naming it."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT
    if not path.exists():
        raise PinnctlError(f"no checkpoint at {path} (runs write one after pretraining and every `checkpoint_every` "
                           "outer steps)")
    if path.stat().st_size == 0:
        raise PinnctlError(f"checkpoint {path} is empty (0 bytes: a crashed copy?); restore it or start a new run")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for truncated, corrupt or foreign files
        raise PinnctlError(f"checkpoint {path} is unreadable, truncated or not a pinnctl checkpoint: "
                           f"{one_line(e, typed=False)}") from None
    if not isinstance(payload, dict) or payload.get("format") not in (FORMAT, *OLD_FORMATS):
        raise PinnctlError(f"{path} is not a {FORMAT} checkpoint")
    if payload["format"] == FORMAT:
        stored = payload.pop("checksum", None)
        if stored != checksum(payload):
            raise PinnctlError(f"checkpoint {path} is corrupted (its checksum does not match its contents); "
                               "restore it from a backup or start a new run")
    return payload
