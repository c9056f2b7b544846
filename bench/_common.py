"""Shared bits of the benchmark scripts: machine facts and writing the JSON result."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any, Callable

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict[str, Any]:
    import numpy
    import scipy
    import torch

    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "scipy": scipy.__version__,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def write_result(name: str, payload: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), **payload}, indent=1, default=float))
    return path


class CapReached(Exception):
    """Raised by a ``capped`` callback: the run has used its wall-clock budget."""


def capped(cap_s: float, records: list) -> Callable[[Any], None]:
    """A ``bilevel.run`` callback that collects the outer records and stops the run (raising
    CapReached) after the first step that ends more than ``cap_s`` seconds from now."""
    start = time.perf_counter()

    def callback(rec: Any) -> None:
        records.append(rec)
        if time.perf_counter() - start > cap_s:
            raise CapReached

    return callback
