"""Run configuration: one dataclass per component, presets, ``--set a.b=v`` and TOML files.

Defaults live here and nowhere else. Presets are overrides on top of the defaults:
``quick`` (default for ``solve``: minutes on a laptop CPU) and ``paper`` (the paper's /
BPN's heat2d setup, DESIGN.md §6). Method options are free-form here and validated by
the method's own options dataclass (see ``pinnctl.hypergrad``).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

from . import PinnctlError


@dataclass
class SamplingCfg:
    seed: int = 0  # collocation-point seed (independent of the net init seed)
    scheme: str = "scipy"  # "scipy" (scrambled Sobol) or "sobol_seq" (BPN's unscrambled)
    resample: bool = False  # fresh points every inner step (stochastic inner loop)


@dataclass
class PretrainCfg:
    steps: int = 2000  # paper: state pretrained 2000 epochs for the initial control
    lr: float = 1e-3


@dataclass
class InnerCfg:
    steps: int = 50  # T inner steps per outer step (BPN: 50)
    lr: float = 1e-3
    optimizer: str = "adam"  # "adam", "sgd", or natural gradient: "kfac" (K-FAC for PINNs), "engd" (dense Gauss–Newton)
    radius: float = 0.0  # projected SGD onto ‖θ‖ ≤ radius when > 0 (the paper's ball)
    damping: float = 1e-3  # λ of the natural-gradient optimisers (kfac, engd); lr is their largest step
    warm_steps: int = 0  # inner steps per outer step after the first (θ warm-started); 0 = steps
    # adaptive stop: end the inner loop once the mean loss of the last `settle_window` steps is within
    # `settle` (relative) of the mean of the window before; 0 disables (always the full budget)
    settle: float = 0.0
    settle_window: int = 5
    # Gauss–Newton (ENGD) steps on θ at the start of each inner loop after v moved, through the last gn step's
    # Woodbury factorisation (outer.ihvp=woodbury: no new Jacobian), line search on the full-batch inner loss; 0 disables
    polish: int = 0


@dataclass
class OuterCfg:
    steps: int = 500  # K outer steps (BPN: 500)
    lr: float = 0.01  # adam/sgd
    optimizer: str = "adam"  # pinnctl.outer: "adam", "sgd", "lbfgs" or "gn" (Gauss–Newton / Levenberg–Marquardt)
    clip: float = 0.1  # adam/sgd: clip each hypergradient entry to ±clip (BPN: 0.1); 0 disables
    options: dict[str, Any] = field(default_factory=dict)  # the optimizer's own (docs/heat2d-methods.md)
    predict: bool = False  # move θ with v by the implicit prediction dθ = −H⁻¹Lᵀ Δv
    ihvp_steps: int = -1  # refinement steps of the IHVPs of gn/predict; -1 = the method's own
    # the IHVP inside gn's Jacobian products and the θ prediction: "method" (the estimator's own solver) or
    # "woodbury" (the full-batch Gauss–Newton + ihvp_damping·I, factored once per outer step: exact and linear)
    ihvp: str = "method"
    ihvp_damping: float = 1e-3


@dataclass
class MethodCfg:
    name: str = "nhgd"
    options: dict[str, Any] = field(default_factory=dict)  # validated by the method


@dataclass
class ForwardCfg:
    control: float = 1.0  # constant control for `--method forward`


@dataclass
class ParallelCfg:
    """Algorithm 2 (``pinnctl.parallel``): the curvature worker in a second process."""

    enabled: bool = False  # --parallel
    stream: str = "theta"  # what rank 0 sends per inner step: "theta" (worker collects) or "stats"
    max_inflight: int = 8  # outstanding messages before the inner loop waits (back-pressure)
    timeout_s: float = 600.0  # a worker silent this long while rank 0 waits is declared hung
    threads: int = 0  # torch threads per process; 0 = half the CPU cores (at least 1)
    data_ranks: int = 1  # K > 1: data-parallel inner training on K ranks under torchrun (pinnctl.dataparallel)


@dataclass
class Config:
    problem: str = "heat2d"
    seed: int = 0
    device: str = "cpu"
    curvature_device: str = ""  # the NHGD curvature / the --parallel worker; "" = the same as device
    certify_every: int = 1  # certified J (reference solver) every N outer steps; 0 disables
    # problem metrics (classification: test accuracy on 10 000 images) every N outer steps, and at each of the
    # last ``metrics_tail`` steps (the paper's last-50 average and the drift before it): a full test-set pass per
    # step was a fifth of a cleaning run's time
    metrics_every: int = 1
    metrics_tail: int = 100
    checkpoint_every: int = 10  # atomic checkpoint every N outer steps (and at the end, on Ctrl-C, on divergence)
    params: dict[str, Any] = field(default_factory=dict)  # problem parameters (e.g. nu)
    sampling: SamplingCfg = field(default_factory=SamplingCfg)
    pretrain: PretrainCfg = field(default_factory=PretrainCfg)
    inner: InnerCfg = field(default_factory=InnerCfg)
    outer: OuterCfg = field(default_factory=OuterCfg)
    method: MethodCfg = field(default_factory=MethodCfg)
    forward: ForwardCfg = field(default_factory=ForwardCfg)
    parallel: ParallelCfg = field(default_factory=ParallelCfg)


PRESETS: dict[str, dict[str, Any]] = {
    "paper": {},
    # heat2d: 20 inner steps per outer step (θ is warm-started; early progress per outer step matches 50,
    # docs/heat2d-methods.md), and the nhgd options below
    "quick": {"pretrain.steps": 1000, "outer.steps": 200, "inner.steps": 20},
    "smoke": {"pretrain.steps": 20, "inner.steps": 3, "outer.steps": 2, "certify_every": 1},
    # tracking problems with a least-squares inner loss (heat2d): the Gauss–Newton outer step through the
    # exact linear (Woodbury) IHVP; each inner loop starts with 2 Gauss–Newton polish steps through that
    # factorisation, then Adam until the loss settles (2 % between windows of 10 steps, 20–120 steps);
    # heat2d seeds 0/1/2: 1.065/1.086/1.202·J* after 14 outer steps (was 1.116/1.121/–), ≈ 150–175 CPU s (docs/heat2d-methods.md)
    "gn": {"pretrain.steps": 1000, "outer.steps": 14, "inner.steps": 120, "inner.settle": 0.02, "inner.settle_window": 10,
           "inner.polish": 2, "outer.optimizer": "gn", "outer.ihvp": "woodbury",
           "outer.options.radius": 0.3, "outer.options.max_radius": 0.6, "outer.options.cg_steps": 5},
}
# gn with the hypergradient from the gn step's own factorisation (method exact, the damped Gauss–Newton by
# Woodbury: consistent with the J of the outer step, no K-FAC, no refinement); heat2d seeds 0/1/2:
# 1.083/1.082/1.084·J*, 6.9 CPU s per outer step against NHGD's 8.6 (docs/heat2d-methods.md)
PRESETS["gn-exact"] = {**PRESETS["gn"], "method.name": "exact", "method.options.matrix": "gn",
                       "method.options.solver": "woodbury", "method.options.damping": 1e-3}
# Method options a preset sets for one method, under the user's own: the key is set only when the
# run's config does not set it (--set, TOML), and not for problems that state their own method options.
# nhgd every=5: K-FAC updated at every 5th inner step, as accurate and 40 % cheaper per outer step
# (docs/heat2d-methods.md); warm_start: the IHVP refinement starts from the last outer step's solution.
PRESET_METHOD_OPTIONS: dict[str, dict[str, dict[str, Any]]] = {
    "quick": {"nhgd": {"every": 5, "warm_start": True}},
    "gn": {"nhgd": {"every": 5, "warm_start": True}},
}


def _parse_scalar(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        low = text.lower()
        if low in ("true", "false"):
            return low == "true"
        return text


def _coerce(key: str, value: Any, typ: Any) -> Any:
    name = getattr(typ, "__name__", str(typ))
    if typ is bool:
        if isinstance(value, bool):
            return value
    elif typ is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif typ is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif typ is str:
        if isinstance(value, str):
            return value
    else:
        return value
    raise PinnctlError(f"config key '{key}' expects {name}, got {value!r}")


def set_key(cfg: Config, key: str, value: Any) -> None:
    """Set a dotted key; unknown keys and wrong types are one-line errors naming the key."""
    parts = key.split(".")
    obj: Any = cfg
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(obj, dict):
            if last:
                obj[part] = value
                return
            obj = obj.setdefault(part, {})
            continue
        if not dataclasses.is_dataclass(obj) or part not in {f.name for f in dataclasses.fields(obj)}:
            where = ".".join(parts[:i]) or "top level"
            known = ", ".join(f.name for f in dataclasses.fields(obj)) if dataclasses.is_dataclass(obj) else ""
            raise PinnctlError(f"unknown config key '{key}' ({where} has: {known})")
        if last:
            typ = get_type_hints(type(obj))[part]
            if dataclasses.is_dataclass(getattr(obj, part)) or typ == dict[str, Any]:
                raise PinnctlError(f"config key '{key}' is a section; set one of its keys, e.g. '{key}.x=…'")
            setattr(obj, part, _coerce(key, value, typ))
            return
        obj = getattr(obj, part)


def _flatten(table: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in table.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and not key.endswith(("method.options", "outer.options", "params")):
            out.update(_flatten(v, key + "."))
        elif isinstance(v, dict):
            out.update({f"{key}.{kk}": vv for kk, vv in v.items()})
        else:
            out[key] = v
    return out


def load_toml(path: str | Path) -> dict[str, Any]:
    import tomllib

    try:
        with open(path, "rb") as fh:
            return _flatten(tomllib.load(fh))
    except FileNotFoundError:
        raise PinnctlError(f"config file not found: {path}") from None
    except IsADirectoryError:
        raise PinnctlError(f"--config {path} is a directory; give a TOML file") from None
    except UnicodeDecodeError:
        raise PinnctlError(f"config file {path} is not UTF-8 text; give a TOML file") from None
    except OSError as e:
        raise PinnctlError(f"cannot read config file {path}: {e.strerror or e}") from None
    except tomllib.TOMLDecodeError as e:
        raise PinnctlError(f"config file {path} is not valid TOML: {e}") from None


def parse_sets(items: list[str]) -> dict[str, Any]:
    out = {}
    for item in items:
        if "=" not in item:
            raise PinnctlError(f"--set expects key=value, got '{item}'")
        key, text = item.split("=", 1)
        out[key.strip()] = _parse_scalar(text.strip())
    return out


def resolve(preset: str = "quick", toml: str | Path | None = None, sets: dict[str, Any] | None = None,
            problem_defaults: dict[str, Any] | None = None, **top: Any) -> Config:
    """Defaults → preset → the problem's own defaults → TOML file → --set overrides → explicit top-level keys.

    ``problem_defaults`` are what a problem file says its setup is (the classification tasks
    use the paper's inner/outer optimisers and budgets, not heat2d's); the user still wins."""
    if preset not in PRESETS:
        raise PinnctlError(f"unknown preset '{preset}'; known: {', '.join(PRESETS)}")
    cfg = Config()
    layers = [PRESETS[preset], problem_defaults or {}, load_toml(toml) if toml else {}, sets or {},
              {k: v for k, v in top.items() if v is not None}]
    for layer in layers:
        for key, value in layer.items():
            set_key(cfg, key, value)
    if not any(key.startswith("method.options.") for key in problem_defaults or {}):  # the problem's own method setup wins
        for key, value in PRESET_METHOD_OPTIONS.get(preset, {}).get(cfg.method.name, {}).items():
            cfg.method.options.setdefault(key, value)
    return cfg


def from_dict(data: dict[str, Any]) -> Config:
    """A config stored by a run (``to_dict``) back as a Config, checked key by key."""
    cfg = Config()
    for key, value in _flatten(data).items():
        set_key(cfg, key, value)
    return cfg


def to_dict(cfg: Config) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def to_json(cfg: Config) -> str:
    return json.dumps(to_dict(cfg), sort_keys=True)


SEED_MAX = 2**32 - 1  # numpy's legacy seeding (Sobol scrambling) takes 32-bit seeds


def _check(ok: bool, key: str, value: Any, what: str) -> None:
    if not ok:
        raise PinnctlError(f"config key '{key}' must be {what}, got {value!r}")


def validate(cfg: Config, *, bilevel: bool = True) -> None:
    """Every value a run reads, checked before anything is built or written: counts and
    learning rates positive, floats finite, seeds in range, names known. ``bilevel`` is
    False for solve modes without an outer loop (``forward``), where outer/inner keys are unused."""
    import math

    from .bilevel import OPTIMIZERS

    for key in _leaf_keys(cfg):
        value = get_key(cfg, key)
        if isinstance(value, float):
            _check(math.isfinite(value), key, value, "a finite number")
    for key in ("seed", "sampling.seed"):
        value = get_key(cfg, key)
        _check(0 <= value <= SEED_MAX, key, value, f"an integer in [0, {SEED_MAX}]")
    positive = ["pretrain.lr", "metrics_every"] + (["inner.lr", "inner.steps", "outer.steps"] if bilevel else [])
    for key in positive:
        value = get_key(cfg, key)
        _check(value > 0, key, value, "> 0")
    zero_means = {"checkpoint_every": "disables", "certify_every": "disables", "inner.radius": "disables",
                  "outer.clip": "disables", "outer.lr": "freezes the control: a baseline"}
    for key in ("pretrain.steps", "checkpoint_every", "certify_every", "inner.radius", "inner.damping", "outer.clip",
                "outer.lr", "metrics_tail"):
        value = get_key(cfg, key)
        _check(value >= 0, key, value, "≥ 0" + (f" (0 {zero_means[key]})" if key in zero_means else ""))
    for key, known in (("inner.optimizer", sorted(OPTIMIZERS)), ("outer.optimizer", _outer_optimizers())):
        value = get_key(cfg, key)
        _check(value in known, key, value, f"one of {', '.join(known)}")
    from .outer import IHVP_KINDS
    from .sampling import SCHEMES

    _check(cfg.outer.ihvp in IHVP_KINDS, "outer.ihvp", cfg.outer.ihvp, f"one of {', '.join(IHVP_KINDS)}")
    _check(cfg.outer.ihvp_damping > 0, "outer.ihvp_damping", cfg.outer.ihvp_damping, "> 0")
    _check(cfg.inner.polish >= 0, "inner.polish", cfg.inner.polish, "≥ 0 (0 disables)")
    _check(cfg.inner.polish == 0 or cfg.outer.ihvp == "woodbury", "inner.polish", cfg.inner.polish,
           "0 unless outer.ihvp=woodbury (it reuses that factorisation)")

    _check(cfg.sampling.scheme in SCHEMES, "sampling.scheme", cfg.sampling.scheme, f"one of {', '.join(SCHEMES)}")


def _outer_optimizers() -> list[str]:
    """The outer optimisers' registry (``pinnctl.outer``, issue 18) or, before it, the shared table."""
    try:
        from .outer import known
    except ImportError:
        from .bilevel import OPTIMIZERS

        return sorted(OPTIMIZERS)
    return sorted(known())


def _leaf_keys(obj: Any, prefix: str = "") -> list[str]:
    """Dotted keys of every typed field (free-form dicts such as params are the problem's to check)."""
    out = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            out += _leaf_keys(value, f"{prefix}{f.name}.")
        elif not isinstance(value, dict):
            out.append(prefix + f.name)
    return out


def get_key(cfg: Config, key: str) -> Any:
    obj: Any = cfg
    for part in key.split("."):
        obj = obj[part] if isinstance(obj, dict) else getattr(obj, part)
    return obj


# What defines a run's numbers: a resume may not change it (the checkpoint's state would not fit,
# or the history would silently mix two setups). Everything else (outer.steps, learning rates,
# checkpoint_every, certify_every, parallel.*) may change.
RESUME_FIXED = ("problem", "params", "seed", "sampling", "method", "inner.optimizer", "outer.optimizer")


def check_resume(old: Config, new: Config, run_dir: str | Path) -> None:
    """A resumed config compatible with the run it continues, or a one-line error naming the key."""
    before, after = _flatten(to_dict(old)), _flatten(to_dict(new))
    unset = "its default"
    for key in sorted(set(before) | set(after)):
        if any(key == f or key.startswith(f + ".") for f in RESUME_FIXED) and before.get(key) != after.get(key):
            was, now = (repr(d[key]) if key in d else unset for d in (before, after))
            raise PinnctlError(f"--resume {run_dir}: '{key}' would change from {was} to {now}, "
                               "but a resume keeps the run's problem, method and optimisers; start a new run "
                               "(another --out) to change it")
