"""The HDF5 run file (DESIGN.md §4): everything a run produced, readable with plain h5py.

Layout of ``<run dir>/run.h5``::

    /                      attrs: config (JSON), versions (JSON), seed, problem, method,
                                  status, format, J_star_grid (when a reference exists)
    /history/<field>       one row per outer step: step, outer_loss (PINN), hypergrad_norm,
                           inner_time, curvature_time, hypergrad_time, wall_time
    /history/certified/<measure>   certified J (exact reference; NaN on steps not certified)
    /history/inner_terms/<name>    inner loss terms by condition name
    /history/info/<key>            method diagnostics (solver residuals, norms; NaN when absent)
    /history/metrics/<key>         problem metrics (classification: val/test accuracy, test loss)
    /control/t, /control/f         the control sampled on a time grid (latest checkpoint / end)
    /control/v                     the control parameters (outer variable)
    /control/images                v as images (distillation: classes × per class × 28 × 28)
    /reference/t, /reference/f     the exact optimum f* (when a reference exists)
    /state/theta                   the state-PINN parameters (latest checkpoint / end)

The file is opened, appended and closed at every outer step, so a crash (even SIGKILL)
loses at most the step being written and never leaves the file open for writing.
Checkpoints live beside it (``checkpoint.pt``, see ``pinnctl.checkpoint``).
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np

from . import PinnctlError

RUN_FILE = "run.h5"
FORMAT = "pinnctl-run/1"
SCALARS = ("step", "outer_loss", "hypergrad_norm", "inner_time", "curvature_time", "hypergrad_time", "wall_time")
GROUPS = ("certified", "inner_terms", "info", "metrics")


def _h5():
    import h5py

    return h5py


def versions() -> dict[str, str]:
    import platform

    import h5py
    import scipy
    import torch

    from . import __version__

    return {"pinnctl": __version__, "torch": torch.__version__, "numpy": np.__version__, "scipy": scipy.__version__,
            "h5py": h5py.__version__, "python": platform.python_version()}


def create(run_dir: Path, *, config: Mapping[str, Any], j_star: float | None = None) -> Path:
    """A new run file (an existing one is replaced: a fresh run, not a resume)."""
    path = Path(run_dir) / RUN_FILE
    with _h5().File(path, "w") as fh:
        fh.attrs["format"] = FORMAT
        fh.attrs["config"] = json.dumps(config, sort_keys=True)
        fh.attrs["versions"] = json.dumps(versions(), sort_keys=True)
        fh.attrs["seed"] = int(config.get("seed", 0))
        fh.attrs["problem"] = str(config.get("problem", ""))
        fh.attrs["method"] = str(config.get("method", {}).get("name", ""))
        fh.attrs["status"] = "running"
        if j_star is not None:
            fh.attrs["J_star_grid"] = float(j_star)
        fh.create_group("history")
    return path


@contextlib.contextmanager
def _writing(path: Path) -> Iterator[Any]:
    """The run file opened for appending; waits out a reader that holds HDF5's file lock
    (someone inspecting a running run with plain h5py) instead of failing the run."""
    for attempt in range(100):
        try:
            fh = _h5().File(path, "a")
            break
        except BlockingIOError:
            time.sleep(0.05)
        except OSError as e:
            if "lock" not in str(e).lower() or attempt == 99:
                raise
            time.sleep(0.05)
    try:
        yield fh
    finally:
        fh.close()


def _append(group: Any, name: str, value: float, rows: int) -> None:
    """Append ``value`` as row ``rows`` (0-based) of dataset ``name``, NaN-padding a new one."""
    if name not in group:
        group.create_dataset(name, shape=(rows,), maxshape=(None,), dtype="f8", chunks=(256,), fillvalue=np.nan)
    ds = group[name]
    ds.resize((rows + 1,))
    ds[rows] = value


def append(path: Path, record: Any) -> None:
    """One outer-step record (``bilevel.OuterRecord``) as a new row of every /history dataset."""
    with _writing(path) as fh:
        hist = fh["history"]
        rows = int(hist.attrs.get("rows", 0))
        for name in SCALARS:
            _append(hist, name, float(getattr(record, name)), rows)
        for group in GROUPS:
            values = {k: float(x) for k, x in getattr(record, group).items() if isinstance(x, (int, float))}
            sub = hist.require_group(group)
            for name in set(values) | set(sub):
                _append(sub, name, values.get(name, math.nan), rows)
        hist.attrs["rows"] = rows + 1


def truncate(path: Path, rows: int) -> None:
    """Drop history rows ≥ ``rows`` (a resume from a checkpoint older than the last rows)."""
    with _writing(path) as fh:
        hist = fh["history"]
        if int(hist.attrs.get("rows", 0)) <= rows:
            return

        def cut(name: str, obj: Any) -> None:
            if isinstance(obj, _h5().Dataset):
                obj.resize((rows,))

        hist.visititems(cut)
        hist.attrs["rows"] = rows


def _replace(group: Any, name: str, data: np.ndarray) -> None:
    if name in group:
        del group[name]
    group.create_dataset(name, data=data)


def write_state(path: Path, *, theta: np.ndarray, v: np.ndarray, control: tuple[np.ndarray, np.ndarray] | None,
                image_shape: list[int] | None = None) -> None:
    """The current θ, v and sampled control (at checkpoints and at the end)."""
    with _writing(path) as fh:
        _replace(fh.require_group("state"), "theta", np.asarray(theta))
        ctrl = fh.require_group("control")
        _replace(ctrl, "v", np.asarray(v))
        if image_shape is not None:
            _replace(ctrl, "images", np.asarray(v).reshape(image_shape))
        if control is not None:
            _replace(ctrl, "t", np.asarray(control[0]))
            _replace(ctrl, "f", np.asarray(control[1]))


def write_reference(path: Path, t: np.ndarray, f: np.ndarray) -> None:
    with _writing(path) as fh:
        ref = fh.require_group("reference")
        _replace(ref, "t", np.asarray(t))
        _replace(ref, "f", np.asarray(f))


def set_status(path: Path, status: str, **attrs: Any) -> None:
    with _writing(path) as fh:
        fh.attrs["status"] = status
        for k, v in attrs.items():
            fh.attrs[k] = json.dumps(v) if isinstance(v, (dict, list)) else v


def read(path: str | Path) -> dict[str, Any]:
    """The whole run file as plain Python/numpy: attrs, history (flat 'group/name' keys), arrays."""
    path = Path(path)
    if path.is_dir():
        path = path / RUN_FILE
    if not path.exists():
        raise PinnctlError(f"no run file at {path}")
    for attempt in range(20):  # a running run holds the file for a few ms per outer step
        try:
            return _read(path)
        except OSError as e:
            error = e
            time.sleep(0.1)
    raise PinnctlError(f"cannot read run file {path}: {error}") from None


def _read(path: Path) -> dict[str, Any]:
    with _h5().File(path, "r", locking=False) as fh:
        attrs = {k: (v.item() if hasattr(v, "item") else v) for k, v in fh.attrs.items()}
        rows = int(fh["history"].attrs.get("rows", 0))
        history: dict[str, np.ndarray] = {}

        def take(name: str, obj: Any) -> None:
            if isinstance(obj, _h5().Dataset):
                history[name] = obj[:rows]

        fh["history"].visititems(take)
        arrays = {f"{g}/{n}": fh[g][n][()] for g in ("control", "reference", "state") if g in fh for n in fh[g]}
    for key in ("config", "versions"):
        attrs[key] = json.loads(attrs[key]) if key in attrs else {}
    return {"path": path, "attrs": attrs, "rows": rows, "history": history, "arrays": arrays}


def history_records(data: Mapping[str, Any]) -> list[dict[str, Any]]:
    """/history as one dict per outer step (the shape ``compare`` works with); NaN → absent."""
    hist = data["history"]
    out = []
    for i in range(data["rows"]):
        rec: dict[str, Any] = {name: float(hist[name][i]) for name in SCALARS if name in hist}
        for group in GROUPS:
            rec[group] = {k.split("/", 1)[1]: float(a[i]) for k, a in hist.items()
                          if k.startswith(group + "/") and not math.isnan(float(a[i]))}
        out.append(rec)
    return out
