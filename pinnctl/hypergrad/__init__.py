"""Hypergradient estimators, one module per method, registered by name (see ``base.register``)."""

from ..core import HyperResult
from .base import Estimator, StepInfo, batch_id, known_methods, make_method, register

__all__ = ["Estimator", "HyperResult", "StepInfo", "batch_id", "known_methods", "make_method", "register"]
