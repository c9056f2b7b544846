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


class PinnctlWarning(UserWarning):
    """Warnings raised by pinnctl itself (tests turn them into errors)."""


# The Python API (pinnctl.api), imported on first use so that `import pinnctl` stays cheap.
_API = ("solve", "load_run", "compare", "problems", "reference", "Run", "Comparison", "History")
__all__ = ["PinnctlError", "PinnctlWarning", "RunError", "__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'pinnctl' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
