"""Classification bilevel problems (paper Appendix E.1–E.2): a linear softmax classifier inside.

θ is laid out like one MLP layer (W row-major, then b), so K-FAC sees one linear layer
and the Gauss–Newton rows are those of the softmax Fisher (= the Hessian of the NLL, the
logits being linear in θ). Problem files (``problems/data_cleaning.py``,
``problems/distillation.py``) return a ``ClassificationProblem``; ``compile`` turns it
into the generic ``BilevelProblem`` every method works on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .core import Batch, BilevelProblem


@dataclass
class LinearSoftmax:
    """Weighted NLL of a linear softmax classifier, with its Gauss–Newton rows and K-FAC factors."""

    classes: int
    dim: int
    lam: float  # λ‖θ‖² regulariser

    @property
    def size(self) -> int:
        return self.classes * (self.dim + 1)

    def logits(self, theta: Tensor, x: Tensor) -> Tensor:
        c, d = self.classes, self.dim
        return x.to(theta.dtype) @ theta[: c * d].view(c, d).T + theta[c * d:]

    def terms(self, theta: Tensor, x: Tensor, y: Tensor, w: Tensor | None) -> dict[str, Tensor]:
        nll = F.cross_entropy(self.logits(theta, x), y, reduction="none")
        data = (nll if w is None else w * nll).mean()
        return {"nll": data, "l2": self.lam * (theta**2).sum()}

    def residuals(self, theta: Tensor, x: Tensor, w: Tensor | None) -> dict[str, tuple[Tensor, float]]:
        """Rows r_n = √(w_n/2)·L_nᵀ z_n with Λ_n = diag p − ppᵀ = L_n L_nᵀ held fixed, so that
        Σ (2·classes/N) JᵀJ over the rows is the weighted Fisher; the l2 block gives 2λI."""
        z = self.logits(theta, x)
        p = torch.softmax(z.detach(), 1)
        lam_mat = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
        evals, evecs = torch.linalg.eigh(lam_mat)
        L = evecs * evals.clamp(min=0).sqrt()[:, None, :]
        scale = z.new_ones(x.shape[0]) if w is None else w.detach().to(z.dtype)
        r = torch.einsum("nck,nc->nk", L, z) * (scale / 2).sqrt()[:, None]
        return {"data": (r.reshape(-1), float(self.classes)), "l2": (theta * math.sqrt(self.lam * theta.numel()), 1.0)}

    def kfac(self, theta: Tensor, x: Tensor, w: Tensor | None) -> list[tuple[Tensor, Tensor]]:
        """E[x̃x̃ᵀ] ⊗ E[w_n Λ_n] (the K-FAC Fisher of one linear layer)."""
        xt = torch.cat([x, torch.ones_like(x[:, :1])], 1).double()
        p = torch.softmax(self.logits(theta, x).detach(), 1).double()
        lam_mat = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
        wd = p.new_ones(x.shape[0]) if w is None else w.detach().double()
        return [(xt.T @ xt / xt.shape[0], (wd[:, None, None] * lam_mat).mean(0))]

    def accuracy(self, theta: Tensor, x: Tensor, y: Tensor) -> float:
        with torch.no_grad():
            return float((self.logits(theta, x).argmax(1) == y).double().mean())


def _minibatch(n: int, size: int | None, step: int, seed: int, device: torch.device) -> Tensor | None:
    """Indices of the minibatch for a global sample id (None: the full set); drawn on the CPU
    (the same indices on every device), then moved to ``device``."""
    if size is None or size >= n:
        return None
    g = torch.Generator().manual_seed(seed * 1_000_003 + step)
    return torch.randint(0, n, (size,), generator=g, device=g.device).to(device)


def cleaning_problem(x_tr: Tensor, y_tr: Tensor, x_val: Tensor, y_val: Tensor, *, lam: float = 1e-4,
                     batch_size: int | None = 1024, x_test: Tensor | None = None, y_test: Tensor | None = None,
                     v0: float = 0.5, seed: int = 0, name: str = "data_cleaning", info: dict | None = None,
                     classes: int | None = None) -> BilevelProblem:
    """Hyper-data cleaning: per-sample weights σ(v_i) = clip(v_i, 0, 1) inside, clean validation NLL outside.

    Everything lives on the device of ``x_tr`` (the problem file places the data)."""
    classes = classes or int(max(y_tr.max(), y_val.max())) + 1
    model = LinearSoftmax(classes, x_tr.shape[1], lam)
    n = x_tr.shape[0]
    dtype, device = x_tr.dtype, x_tr.device
    all_idx = torch.arange(n, device=device)

    def sample(step: int) -> Batch:
        idx = _minibatch(n, batch_size, step, seed, device)
        idx = all_idx if idx is None else idx
        return {"x": x_tr[idx], "y": y_tr[idx], "idx": idx}

    full = {"x": x_tr, "y": y_tr, "idx": all_idx}

    def weights(v: Tensor, idx: Tensor) -> Tensor:
        return v[idx].clamp(0.0, 1.0)

    def metrics(theta: Tensor, v: Tensor) -> dict[str, float]:
        out = {"val_accuracy": model.accuracy(theta, x_val, y_val)}
        if x_test is not None:
            out["test_accuracy"] = model.accuracy(theta, x_test, y_test)
            with torch.no_grad():
                out["test_loss"] = float(F.cross_entropy(model.logits(theta, x_test), y_test))
        return out

    return BilevelProblem(
        name=name, theta0=torch.zeros(model.size, dtype=dtype, device=device), v0=torch.full((n,), v0, dtype=dtype, device=device),
        inner_terms=lambda theta, v, b: model.terms(theta, b["x"], b["y"], weights(v, b["idx"])),
        outer_loss=lambda theta, v: F.cross_entropy(model.logits(theta, x_val), y_val),
        sample=sample, full_batch=lambda: full,
        residuals=lambda theta, v, b: model.residuals(theta, b["x"], weights(v, b["idx"])),
        kfac_factors=lambda theta, v, b: model.kfac(theta, b["x"], weights(v, b["idx"])),
        layer_shapes=[(model.classes, model.dim)], metrics=metrics, info={"lambda": lam, **(info or {})},
    )


def distillation_problem(x_real: Tensor, y_real: Tensor, x_test: Tensor, y_test: Tensor, *, per_class: int,
                         lam: float, outer_batch: int | None = None, seed: int = 0,
                         name: str = "distillation", image_shape: tuple[int, int] = (28, 28)) -> BilevelProblem:
    """Data distillation: v = per_class synthetic images per class (initialised from real ones);
    inner: the classifier trained on them (full batch); outer: NLL on real training data.
    Everything lives on the device of ``x_real``; the random picks are drawn on the CPU."""
    classes = int(y_real.max()) + 1
    model = LinearSoftmax(classes, x_real.shape[1], lam)
    device = x_real.device
    g = torch.Generator().manual_seed(seed)
    picks = [torch.nonzero(y_real == c).squeeze(1)[torch.randperm(int((y_real == c).sum()), generator=g, device=g.device)
                                                   [:per_class].to(device)] for c in range(classes)]
    init = x_real[torch.cat(picks)]
    y_syn = torch.arange(classes, device=device).repeat_interleave(per_class)
    n_real = x_real.shape[0]
    outer_idx = _minibatch(n_real, outer_batch, 0, seed + 1, device)  # a fixed subset: the outer loss stays deterministic
    x_out, y_out = (x_real, y_real) if outer_idx is None else (x_real[outer_idx], y_real[outer_idx])

    def images(v: Tensor) -> Tensor:
        return v.view(classes * per_class, -1)

    def metrics(theta: Tensor, v: Tensor) -> dict[str, float]:
        with torch.no_grad():
            return {"test_accuracy": model.accuracy(theta, x_test, y_test),
                    "test_loss": float(F.cross_entropy(model.logits(theta, x_test), y_test))}

    batch = {"y": y_syn}
    return BilevelProblem(
        name=name, theta0=torch.zeros(model.size, dtype=x_real.dtype, device=device), v0=init.reshape(-1).clone(),
        inner_terms=lambda theta, v, b: model.terms(theta, images(v), b["y"], None),
        outer_loss=lambda theta, v: F.cross_entropy(model.logits(theta, x_out), y_out),
        sample=lambda step: batch, full_batch=lambda: batch,
        residuals=lambda theta, v, b: model.residuals(theta, images(v), None),
        kfac_factors=lambda theta, v, b: model.kfac(theta, images(v), None),
        layer_shapes=[(classes, model.dim)], metrics=metrics,
        info={"lambda": lam, "v_image_shape": [classes, per_class, *image_shape]},
    )


@dataclass
class ClassificationProblem:
    """What a classification problem file builds: a name, parameters and a compile step."""

    name: str
    description: str
    build: Callable[[int, str], BilevelProblem]  # (seed, device) → compiled problem (loads the data onto device)
    params: dict[str, Any] = field(default_factory=dict)
    reference: str | None = None
    defaults: dict[str, Any] = field(default_factory=dict)  # dotted config keys: the task's own setup
    preset_defaults: dict[str, dict[str, Any]] = field(default_factory=dict)  # per preset (budgets)
    method_defaults: dict[str, dict[str, Any]] = field(default_factory=dict)  # per method: its options

    def compile(self, seed: int = 0, device: str = "cpu") -> BilevelProblem:
        return self.build(seed, device)

    def config_defaults(self, preset: str, method: str) -> dict[str, Any]:
        out = {**self.defaults, **self.preset_defaults.get(preset, {})}
        out.update({f"method.options.{k}": v for k, v in self.method_defaults.get(method, {}).items()})
        return out


def corrupt_labels(y: np.ndarray, p: float, seed: int, classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Each label replaced by a uniformly random one with probability p; returns (labels, corrupted mask)."""
    rng = np.random.default_rng(seed)
    flip = rng.random(y.shape[0]) < p
    out = y.copy()
    out[flip] = rng.integers(0, classes, int(flip.sum()))
    return out, flip
