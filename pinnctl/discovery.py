"""Find problem files: bundled ones, then ./problems/, then $PINNCTL_PROBLEMS.

A problem file is a plain Python file defining ``problem`` (a PDEProblem or any object
with ``name`` and ``compile``) or a factory ``make(**params)`` whose keyword defaults
are the problem's parameters. Files whose name starts with ``_`` are templates and are
skipped. Loading is by file path, so a non-editable install works from any directory.

Listing imports each file but builds nothing: a ``make()`` file's name is the file name and
its description the first line of the module docstring, so ``pinnctl list`` and
``pinnctl solve heat2d`` run no reference solver and import no deepxde for other problems.
``build`` calls ``make`` for the one problem asked for and checks what it returns.
"""

from __future__ import annotations

import importlib.util
import inspect
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import PinnctlError

ENV_VAR = "PINNCTL_PROBLEMS"


@dataclass
class ProblemEntry:
    name: str
    path: Path
    description: str
    module: Any = field(repr=False)

    def build(self, **params: Any) -> Any:
        """The problem object, built with parameter overrides when the file has ``make``."""
        make = getattr(self.module, "make", None)
        if make is None:
            if params:
                raise PinnctlError(f"problem '{self.name}' takes no parameters (its file defines no make())")
            return self.module.problem
        unknown = set(params) - set(inspect.signature(make).parameters)
        if unknown:
            raise PinnctlError(
                f"problem '{self.name}' has no parameter(s) {', '.join(sorted(unknown))}; "
                f"known: {', '.join(inspect.signature(make).parameters) or 'none'}"
            )
        try:
            obj = make(**params)
        except PinnctlError as e:
            raise PinnctlError(f"{self.path}: {e}") from None
        except Exception as e:
            raise PinnctlError(f"{self.path}: make() raised {type(e).__name__}: {e}".splitlines()[0]) from None
        if not hasattr(obj, "name") or not (hasattr(obj, "conditions") or hasattr(obj, "compile")):
            raise PinnctlError(f"{self.path}: make() returned {type(obj).__name__}, not a problem (PDEProblem or an object with compile)")
        if obj.name != self.name:
            raise PinnctlError(f"{self.path}: make() built a problem named '{obj.name}'; the name must be the file name '{self.name}'")
        return obj


@dataclass
class Discovery:
    entries: dict[str, ProblemEntry]
    errors: list[str]

    def get(self, name: str) -> ProblemEntry:
        if name in self.entries:
            return self.entries[name]
        msg = f"unknown problem '{name}'; known: {', '.join(sorted(self.entries)) or 'none'}"
        if self.errors:
            msg += f" (and {len(self.errors)} file(s) failed to load: run 'pinnctl list')"
        raise PinnctlError(msg)


def bundled_dir() -> Path:
    import pinnctl.problems

    return Path(pinnctl.problems.__file__).resolve().parent


def candidate_files(cwd: Path | None = None) -> list[Path]:
    """Problem files in search order, each once, templates and package files skipped.

    A file byte-identical to a bundled one of the same name is the bundled problem itself
    (e.g. ./problems/ of a source checkout after a non-editable install), not a duplicate.
    """
    bundled = {f.name: f.read_bytes() for f in bundled_dir().glob("*.py")}
    dirs_or_files = [bundled_dir(), (cwd or Path.cwd()) / "problems"]
    dirs_or_files += [Path(p) for p in os.environ.get(ENV_VAR, "").split(os.pathsep) if p]
    seen, out = set(), []
    for item in dirs_or_files:
        files = sorted(item.glob("*.py")) if item.is_dir() else [item] if item.suffix == ".py" else []
        for f in files:
            real = f.resolve()
            if f.name.startswith("_") or real in seen:
                continue
            if real.parent != bundled_dir() and bundled.get(f.name) == real.read_bytes():
                continue
            seen.add(real)
            out.append(real)
    return out


def _describe(module: Any, obj: Any) -> str:
    text = getattr(obj, "description", "") or (module.__doc__ or "")
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[0] if lines else ""


def _name_and_object(module: Any, path: Path) -> tuple[str, Any]:
    """(name, problem object or None): a module-level ``problem`` names itself; a ``make`` file is
    named after the file, unbuilt."""
    if hasattr(module, "problem"):
        obj = module.problem
        if not hasattr(obj, "name"):
            raise PinnctlError(f"{path}: 'problem' is a {type(obj).__name__}, not a problem")
        return obj.name, obj
    if callable(getattr(module, "make", None)):
        return path.stem, None
    raise PinnctlError(f"{path}: defines neither 'problem' nor 'make()' returning a problem")


def load_file(path: Path) -> ProblemEntry:
    """Import one problem file; any failure becomes a one-line PinnctlError naming the file."""
    mod_name = f"pinnctl_problem_{path.stem}_{abs(hash(str(path))) % 10**8}"
    try:
        spec = importlib.util.spec_from_file_location(mod_name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[mod_name] = module
        spec.loader.exec_module(module)
    except PinnctlError as e:
        raise PinnctlError(f"{path}: {e}") from None
    except Exception as e:
        raise PinnctlError(f"{path}: {type(e).__name__}: {e}".splitlines()[0]) from None
    name, obj = _name_and_object(module, path)
    return ProblemEntry(name=name, path=path, description=_describe(module, obj), module=module)


def discover(cwd: Path | None = None) -> Discovery:
    entries: dict[str, ProblemEntry] = {}
    errors: list[str] = []
    for path in candidate_files(cwd):
        try:
            entry = load_file(path)
        except PinnctlError as e:
            errors.append(str(e))
            continue
        if entry.name in entries:
            raise PinnctlError(
                f"problem '{entry.name}' is defined twice: {entries[entry.name].path} and {entry.path}; rename one"
            )
        entries[entry.name] = entry
    return Discovery(entries, errors)
