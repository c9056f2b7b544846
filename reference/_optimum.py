"""What every reference's ``optimum(**params)`` returns (shared; not a reference itself)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np


@dataclass(frozen=True)
class Optimum:
    """J* on a measure and, when the optimal control is a curve, its samples (t, f) for plots
    and comparisons; ``t`` is time for time controls, space for an initial-value control."""

    measure: str
    J: float
    t: np.ndarray | None = None
    f: np.ndarray | None = None

    def control(self) -> Callable[[np.ndarray], np.ndarray]:
        return lambda tt: np.interp(np.asarray(tt, dtype=np.float64), self.t, self.f)
