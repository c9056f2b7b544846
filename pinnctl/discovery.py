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

from . import PinnctlError, one_line

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
        signature = inspect.signature(make)
        unknown = set(params) - set(signature.parameters)
        if unknown:
            raise PinnctlError(
                f"problem '{self.name}' has no parameter(s) {', '.join(sorted(unknown))}; "
                f"known: {', '.join(signature.parameters) or 'none'}"
            )
        for key, value in params.items():
            _check_param(self.name, key, value, signature.parameters[key])
        try:
            obj = make(**params)
        except PinnctlError as e:
            raise PinnctlError(f"{self.path}: {e}") from None
        except Exception as e:
            raise PinnctlError(f"{self.path}: make() raised {one_line(e)}") from None
        if not hasattr(obj, "name") or not (hasattr(obj, "conditions") or hasattr(obj, "compile")):
            raise PinnctlError(f"{self.path}: make() returned {type(obj).__name__}, not a problem (PDEProblem or an object with compile)")
        if obj.name != self.name:
            raise PinnctlError(f"{self.path}: make() built a problem named '{obj.name}'; the name must be the file name '{self.name}'")
        return obj


SIMPLE_TYPES = {"float": float, "int": int, "bool": bool, "str": str}


def _check_param(problem: str, key: str, value: Any, param: inspect.Parameter) -> None:
    """A parameter whose make() annotation (or default) is a plain number, bool or string must
    be one: ``--set params.nu=abc`` is a one-line error here, not a traceback deep in a residual."""
    hint = param.annotation if param.annotation is not inspect.Parameter.empty else (
        type(param.default) if param.default is not inspect.Parameter.empty and param.default is not None else None)
    typ = SIMPLE_TYPES.get(hint if isinstance(hint, str) else getattr(hint, "__name__", ""))
    if typ is None:
        return
    ok = isinstance(value, typ) and (typ is bool or not isinstance(value, bool))
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        ok = True
    if not ok:
        raise PinnctlError(f"problem '{problem}' parameter '{key}' expects {typ.__name__}, got {value!r}")



@dataclass
class Discovery:
    entries: dict[str, ProblemEntry]
    errors: list[str]
    duplicates: dict[str, list[Path]] = field(default_factory=dict)  # an error only for the name asked for

    def get(self, name: str) -> ProblemEntry:
        if name in self.duplicates:
            raise PinnctlError(f"problem '{name}' is defined twice: "
                               f"{' and '.join(str(p) for p in self.duplicates[name])}; rename one")
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
    except SystemExit as e:  # a script-style file: report it, never let it end pinnctl
        raise PinnctlError(f"{path}: called sys.exit({e.code!r}) at import; a problem file must not exit") from None
    except Exception as e:
        raise PinnctlError(f"{path}: {one_line(e)}") from None
    name, obj = _name_and_object(module, path)
    return ProblemEntry(name=name, path=path, description=_describe(module, obj), module=module)


def discover(cwd: Path | None = None, files: list[Path] | None = None) -> Discovery:
    """Every problem file loaded; a broken file, or two files defining one name, disable only
    themselves (and are reported by ``pinnctl list`` and when that name is asked for)."""
    entries: dict[str, ProblemEntry] = {}
    errors: list[str] = []
    duplicates: dict[str, list[Path]] = {}
    for path in candidate_files(cwd) if files is None else files:
        try:
            entry = load_file(path)
        except PinnctlError as e:
            errors.append(str(e))
            continue
        if entry.name in entries or entry.name in duplicates:
            first = entries.pop(entry.name, None)
            duplicates.setdefault(entry.name, [first.path] if first else []).append(entry.path)
            continue
        entries[entry.name] = entry
    return Discovery(entries, errors, duplicates)


def find(name: str, cwd: Path | None = None) -> ProblemEntry:
    """The problem called ``name``. Discovery executes problem files, so only the files named
    ``<name>.py`` are loaded when one of them defines it (a ``make()`` file is named after its
    file; a duplicate of the same name in another folder is still caught); otherwise every file is."""
    named = [p for p in candidate_files(cwd) if p.stem == name]
    if named:
        found = discover(cwd, files=named)
        if name in found.entries or name in found.duplicates:
            return found.get(name)
        if found.errors:  # <name>.py is the file meant, and it is broken: say so, not "unknown problem"
            raise PinnctlError(f"problem '{name}' failed to load: {found.errors[0]}")
    return discover(cwd).get(name)
