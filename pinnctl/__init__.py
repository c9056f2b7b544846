"""pinnctl: PDE-constrained optimal control with PINNs as bilevel optimisation.

Importing the package is cheap and silent: deepxde and matplotlib are imported
only where they are used.
"""

__version__ = "0.1.0"


class PinnctlError(Exception):
    """A user-facing error: its message is one line saying what was wrong and what to do."""


class RunError(PinnctlError):
    """A run that started and then failed (divergence, a dead worker): exit code 1, where
    bad input is exit code 2."""


def one_line(e: BaseException, typed: bool = True) -> str:
    """The first line of an exception's message (at most 200 characters, torch's colour codes
    removed), prefixed by its type when ``typed``: how a foreign error becomes part of a
    one-line PinnctlError."""
    import re

    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip()
    if not text:
        return type(e).__name__
    first = text.splitlines()[0][:200]
    return f"{type(e).__name__}: {first}" if typed else first


class PinnctlWarning(UserWarning):
    """Warnings raised by pinnctl itself (tests turn them into errors)."""


# The Python API (pinnctl.api), imported on first use so that `import pinnctl` stays cheap.
_API = ("solve", "load_run", "compare", "problems", "reference", "Run", "Comparison", "History")
# API names that are also subpackages (bundled problems, reference solvers): importing a
# subpackage sets it as this attribute, so those packages are callable (see ``_callable_package``).
_SUBPACKAGES = ("problems", "reference")
__all__ = ["PinnctlError", "PinnctlWarning", "RunError", "__version__", *_API]


def __getattr__(name: str):
    import importlib

    if name in _SUBPACKAGES:
        return importlib.import_module(f"{__name__}.{name}")
    if name in _API:
        return getattr(importlib.import_module(f"{__name__}.api"), name)
    raise AttributeError(f"module 'pinnctl' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))


def _callable_package(module_name: str, api_name: str) -> None:
    """Make the package ``module_name`` callable as ``pinnctl.api.<api_name>``, so that
    ``pinnctl.problems()`` and ``pinnctl.reference(...)`` work whether or not the subpackage
    was imported (which rebinds the attribute to the package)."""
    import sys
    import types

    def call(self, *args, **kwargs):
        from . import api

        return getattr(api, api_name)(*args, **kwargs)

    module = sys.modules[module_name]
    module.__class__ = type("CallablePackage", (types.ModuleType,), {"__call__": call, "__doc__": module.__doc__})
