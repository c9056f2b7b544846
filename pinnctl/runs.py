"""The HDF5 run file (DESIGN.md §4): everything a run produced, readable with plain h5py.

Layout of ``<run dir>/run.h5``::

    /                      attrs: config (JSON), versions (JSON), seed, problem, method,
                                  status, format, J_star and measure (when a reference exists:
                                  the exact optimum and the certified measure it is on)
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
import os
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


def create(run_dir: Path, *, config: Mapping[str, Any], j_star: float | None = None, measure: str = "grid") -> Path:
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
        fh.attrs["measure"] = measure
        if j_star is not None:
            fh.attrs["J_star"] = float(j_star)
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


def history_arrays(path: Path) -> dict[str, np.ndarray]:
    """/history as flat 'group/name' arrays (what a checkpoint carries, so run.h5 can be rebuilt)."""
    return dict(read(path)["history"])


def optimum_of(attrs: Mapping[str, Any]) -> tuple[float | None, str]:
    """(J*, measure) of a run file's attributes; files written before the measure was stored are
    on the grid measure (``J_star_grid``)."""
    value = attrs.get("J_star", attrs.get("J_star_grid"))
    return (None if value is None else float(value)), str(attrs.get("measure", "grid"))


def rebuild(run_dir: Path, *, config: Mapping[str, Any], history: Mapping[str, Any], j_star: float | None = None,
            measure: str = "grid") -> Path:
    """A run file re-created from a checkpoint (config and history rows up to its step), for a
    run whose run.h5 was deleted or is unreadable; the next checkpoint rewrites /state and /control."""
    path = create(run_dir, config=config, j_star=j_star, measure=measure)
    arrays = {k: np.asarray(v, dtype="f8") for k, v in history.items()}
    rows = min((len(a) for a in arrays.values()), default=0)
    with _writing(path) as fh:
        hist = fh["history"]
        for name, a in arrays.items():
            group, _, leaf = name.rpartition("/")
            target = hist.require_group(group) if group else hist
            target.create_dataset(leaf, data=a[:rows], maxshape=(None,), chunks=(256,), fillvalue=np.nan)
        hist.attrs["rows"] = rows
    return path


# ----------------------------------------------------------------------------- run folders

LOCK_FILE = "run.lock"
# What a run writes into its folder (removed by --overwrite; anything else there is left alone).
ARTEFACTS = (RUN_FILE, "checkpoint.pt", "summary.json", "config.json", "error.txt")


def check_out(path: str | Path) -> Path:
    """A path usable as a run folder, checked without writing anything: not a file, not under one."""
    path = Path(path)
    for part in (path, *path.parents):
        if part.exists():
            if not part.is_dir():
                where = "is a file" if part == path else f"is under {part}, which is a file"
                raise PinnctlError(f"run folder {path} {where}; choose another --out")
            break
    return path


def default_dir(base: Path) -> Path:
    """A new folder for a run without --out: ``base``, or ``base-2``, ``base-3``, … when taken
    (claimed by mkdir, so two runs started in the same second get different folders)."""
    for i in range(1, 1000):
        path = base if i == 1 else base.with_name(f"{base.name}-{i}")
        try:
            path.mkdir(parents=True)
            return path
        except FileExistsError:
            continue
        except OSError as e:
            raise PinnctlError(f"cannot create run folder {path}: {e.strerror or e}") from None
    raise PinnctlError(f"no free run folder name next to {base}; pass --out")


def _holder(lock: Path) -> str:
    try:
        pid = lock.read_text().strip()
    except OSError:
        pid = ""
    return f"pid {pid}" if pid else "an unknown process"


@contextlib.contextmanager
def hold(run_dir: str | Path, *, fresh: bool, overwrite: bool = False) -> Iterator[Path]:
    """The run folder, locked for the life of the run (a second writer gets a one-line error
    naming the holder's pid; the lock dies with its process, even on SIGKILL).

    ``fresh``: a new run, so the folder must be empty, or, with ``overwrite``, the previous
    run's files are removed first. A folder this call created is removed again on refusal."""
    run_dir = check_out(run_dir)
    created = not run_dir.exists()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PinnctlError(f"cannot create run folder {run_dir}: {e.strerror or e}; choose another --out") from None
    fd = _lock(run_dir)
    ok = False
    try:
        if fresh:
            _make_fresh(run_dir, overwrite)
        ok = True
        yield run_dir
    finally:
        (run_dir / LOCK_FILE).unlink(missing_ok=True)  # unlink while still holding it (see _lock)
        os.close(fd)
        if not ok and created:
            with contextlib.suppress(OSError):
                run_dir.rmdir()


def _lock(run_dir: Path) -> int:
    import fcntl

    lock = run_dir / LOCK_FILE
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise PinnctlError(f"cannot write into run folder {run_dir}: {e.strerror or e}; choose another --out") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise PinnctlError(f"run folder {run_dir} is in use by another pinnctl run ({_holder(lock)}); "
                               "wait for it to finish or choose another --out") from None
        # The holder unlinks the file before releasing it: a lock on an unlinked file is stale, retry.
        try:
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            return fd
        os.close(fd)


def _make_fresh(run_dir: Path, overwrite: bool) -> None:
    present = sorted(p.name for p in run_dir.iterdir() if p.name != LOCK_FILE)
    if not present:
        return
    if not overwrite:
        shown = ", ".join(present[:4]) + (", …" if len(present) > 4 else "")
        raise PinnctlError(f"run folder {run_dir} is not empty ({shown}); pass --overwrite to replace the run in it, "
                           f"--resume {run_dir} to continue it, or choose another --out")
    for name in present:
        if name in ARTEFACTS or name.endswith(".png") or name.startswith(".checkpoint.pt.tmp"):
            (run_dir / name).unlink(missing_ok=True)
