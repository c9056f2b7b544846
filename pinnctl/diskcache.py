"""A disk memo for expensive, deterministic reference computations (J*, modal systems).

Why: a reference's optimum or its assembled system is the same in every process, yet each run
recomputed it (heat2d's continuum system 8 CPU s, ns_inlet's J* 19 s). ``disk_cached`` stores a
function's result as an ``.npz`` (no pickle) under a key made of the function's name, its
arguments, the source text of its module and of the modules it names in ``depends``, and the
numpy/scipy/pinnctl versions; so editing the solver, or upgrading what it computes with,
recomputes instead of reading a stale value.

Where: ``$PINNCTL_CACHE`` (``off`` disables it), else ``$XDG_CACHE_HOME/pinnctl``, else
``~/.cache/pinnctl``; entries are small (a few MB at most) and safe to delete. A cache that cannot be read or written is skipped silently: the value is
computed as without it, never an error.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import inspect
import os
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Iterable

import numpy as np

from . import __version__

_OFF = {"off", "0", "none", "false"}


def cache_dir() -> Path | None:
    """The folder the memo uses, or None when ``$PINNCTL_CACHE`` turns it off."""
    env = os.environ.get("PINNCTL_CACHE")
    if env is not None:
        return None if env.strip().lower() in _OFF or not env.strip() else Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "pinnctl"


def _source_digest(modules: Iterable[ModuleType | str]) -> str:
    h = hashlib.sha256()
    for m in modules:
        mod = importlib.import_module(m) if isinstance(m, str) else m
        h.update(f"{mod.__name__} {getattr(mod, '__version__', '')}".encode())
        try:
            h.update(Path(inspect.getsourcefile(mod) or "").read_bytes())
        except (OSError, TypeError):
            pass
    return h.hexdigest()


def _versions() -> str:
    import scipy

    return f"numpy {np.__version__} scipy {scipy.__version__} pinnctl {__version__}"


def _encode(result: Any) -> dict[str, np.ndarray]:
    """A result is a tuple (or one item) of arrays, floats, ints and bools; kinds keep which."""
    items, single = (result, False) if isinstance(result, tuple) else ((result,), True)
    out: dict[str, np.ndarray] = {}
    kinds = []
    for i, x in enumerate(items):
        if isinstance(x, (bool, np.bool_)):
            kinds.append("bool")
        elif isinstance(x, (int, np.integer)):
            kinds.append("int")
        elif isinstance(x, (float, np.floating)):
            kinds.append("float")
        elif isinstance(x, np.ndarray) and x.dtype != object:
            kinds.append("array")
        else:
            raise TypeError(f"disk_cached results hold arrays and numbers only; item {i} is {type(x).__name__}")
        out[f"r{i}"] = np.asarray(x)
    out["kinds"] = np.array(kinds + (["single"] if single else []))
    return out


def _decode(data: Any) -> Any:
    kinds = [str(k) for k in data["kinds"]]
    single = kinds[-1:] == ["single"]
    kinds = kinds[:-1] if single else kinds
    cast = {"bool": lambda a: bool(a), "int": lambda a: int(a), "float": lambda a: float(a), "array": lambda a: a.copy()}
    items = tuple(cast[k](data[f"r{i}"]) for i, k in enumerate(kinds))
    return items[0] if single else items


def disk_cached(fn: Callable[..., Any] | None = None, *, depends: tuple[ModuleType | str, ...] = ()) -> Any:
    """Decorator: memo ``fn`` on disk (see the module docstring). Arguments must have a stable
    ``repr`` (numbers, strings, tuples); use it under ``lru_cache`` for the in-process memo."""

    def deco(f: Callable[..., Any]) -> Callable[..., Any]:
        modules = (f.__module__, *depends)

        @functools.wraps(f)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            root = cache_dir()
            if root is None:
                return f(*args, **kwargs)
            key = hashlib.sha256("\n".join([
                f"{f.__module__}.{f.__qualname__}", repr(args), repr(sorted(kwargs.items())),
                _source_digest(modules), _versions()]).encode()).hexdigest()[:32]
            path = root / f"{f.__qualname__.replace('<', '').replace('>', '')}-{key}.npz"
            try:
                with np.load(path, allow_pickle=False) as data:
                    return _decode(data)
            except (OSError, ValueError, KeyError, EOFError):
                pass  # absent, unreadable or corrupt: compute
            result = f(*args, **kwargs)
            arrays = _encode(result)
            tmp = None
            try:
                root.mkdir(parents=True, exist_ok=True)
                with tempfile.NamedTemporaryFile(dir=root, suffix=".tmp", delete=False) as tmp:
                    np.savez(tmp, **arrays)
                os.replace(tmp.name, path)  # atomic: a crash never leaves a half-written entry
            except OSError:
                if tmp is not None:
                    Path(tmp.name).unlink(missing_ok=True)
            return result

        wrapper.uncached = f  # type: ignore[attr-defined]
        return wrapper

    return deco if fn is None else deco(fn)
