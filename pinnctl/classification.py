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

from . import PinnctlError
from .core import Batch, BilevelProblem, HessianOperator


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
        # (W xᵀ)ᵀ, not x Wᵀ: the same product, 2.8× faster on a CPU minibatch of 1 024 × 784 (measured)
        return (theta[: c * d].view(c, d) @ x.to(theta.dtype).T).T + theta[c * d:]

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

    def jacobian_rows(self, theta: Tensor, x: Tensor, w: Tensor | None) -> Tensor:
        """The rows of ``residuals`` scaled so that JᵀJ is the Gauss–Newton (= Hessian) of ``terms``,
        in closed form: row (n, k) = √(w_n/N)·(L_n[:, k] ⊗ [x_n, 1]), then √(2λ)·I for the l2 term
        (p rows: p² entries, the price of an exact l2 block). jacrev of the residual vector took
        minutes and gigabytes on MNIST for the same matrix."""
        c, d = self.classes, self.dim
        z = self.logits(theta, x).detach()
        p = torch.softmax(z, 1)
        evals, evecs = torch.linalg.eigh(torch.diag_embed(p) - p[:, :, None] * p[:, None, :])
        L = evecs * evals.clamp(min=0).sqrt()[:, None, :]  # (N, c, k)
        n = x.shape[0]
        scale = (z.new_ones(n) if w is None else w.detach().to(z.dtype)) / n
        Ls = L * scale.sqrt()[:, None, None]
        xw = torch.einsum("nck,nd->nkcd", Ls, x.to(z.dtype)).reshape(n * c, c * d)
        rows = torch.cat([xw, Ls.transpose(1, 2).reshape(n * c, c)], 1)
        l2 = math.sqrt(2 * self.lam) * torch.eye(self.size, dtype=rows.dtype, device=rows.device)
        return torch.cat([rows, l2])

    def hessian_operator(self, theta: Tensor, x: Tensor, y: Tensor, w: Tensor | None) -> HessianOperator:
        """H·x, ∇_θ and the value of ``terms`` in closed form from one logits pass: the NLL's Hessian
        is Σ_n (w_n/N) Λ_n ⊗ x̃_n x̃_nᵀ with Λ_n = diag p_n − p_n p_nᵀ, so a product is two matmuls
        with the batch instead of a double-backward pass (the stochastic baselines take thousands,
        most on a fresh batch, so the gradient is formed only when asked for)."""
        c, d = self.classes, self.dim
        x = x.detach().to(theta.dtype)
        theta = theta.detach()
        logp = torch.log_softmax(self.logits(theta, x), 1)
        p = logp.exp()
        n = x.shape[0]
        s = (p.new_ones(n) if w is None else w.detach().to(p.dtype)) / n
        ps = p * s[:, None]

        def matvec(vec: Tensor) -> Tensor:
            vec = vec.to(theta.dtype)
            u = ps * (dz := self.logits(vec, x)) - ps * (p * dz).sum(1, keepdim=True)
            return self._pullback(u, x) + 2 * self.lam * vec

        def gradient() -> Tensor:
            return self._pullback(ps - F.one_hot(y, c).to(p.dtype) * s[:, None], x) + 2 * self.lam * theta

        value = -(s * logp.gather(1, y[:, None]).squeeze(1)).sum() + self.lam * (theta**2).sum()
        return HessianOperator(matvec, gradient, float(value))

    @staticmethod
    def _pullback(u: Tensor, x: Tensor) -> Tensor:
        """Σ_n u_n ⊗ [x_n, 1]: the θ-gradient of Σ_n u_n·z_n, laid out like θ."""
        return torch.cat([(u.T @ x).reshape(-1), u.sum(0)])

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

    def test_metrics(self, theta: Tensor, x: Tensor, y: Tensor) -> dict[str, float]:
        """Accuracy and mean NLL from one pass over the logits."""
        with torch.no_grad():
            z = self.logits(theta, x)
            return {"test_accuracy": float((z.argmax(1) == y).double().mean()), "test_loss": float(F.cross_entropy(z, y))}


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
                     classes: int | None = None, project: bool = False) -> BilevelProblem:
    """Hyper-data cleaning: per-sample weights σ(v_i) = clip(v_i, 0, 1) inside, clean validation NLL outside.

    ``project``: v is put back onto [0, 1] after each outer step (BOME's clamp of w); without it a
    v_i that leaves [0, 1] has zero gradient through the clip and keeps its weight 0 or 1 for good.
    Everything lives on the device of ``x_tr`` (the problem file places the data)."""
    classes = classes or int(max(y_tr.max(), y_val.max())) + 1
    model = LinearSoftmax(classes, x_tr.shape[1], lam)
    n = x_tr.shape[0]
    dtype, device = x_tr.dtype, x_tr.device
    all_idx = torch.arange(n, device=device)

    def sample(step: int) -> Batch:
        idx = _minibatch(n, batch_size, step, seed, device)
        idx = all_idx if idx is None else idx
        # index_select, not x_tr[idx]: the same rows, 4× faster on CPU (measured, 1 024 of 50 000 images)
        return {"x": torch.index_select(x_tr, 0, idx), "y": torch.index_select(y_tr, 0, idx), "idx": idx}

    full = {"x": x_tr, "y": y_tr, "idx": all_idx}

    def weights(v: Tensor, idx: Tensor) -> Tensor:
        return v[idx].clamp(0.0, 1.0)

    def metrics(theta: Tensor, v: Tensor) -> dict[str, float]:
        out = {"val_accuracy": model.accuracy(theta, x_val, y_val)}
        if x_test is not None:
            out.update(model.test_metrics(theta, x_test, y_test))
        return out

    return BilevelProblem(
        name=name, theta0=torch.zeros(model.size, dtype=dtype, device=device), v0=torch.full((n,), v0, dtype=dtype, device=device),
        inner_terms=lambda theta, v, b: model.terms(theta, b["x"], b["y"], weights(v, b["idx"])),
        outer_loss=lambda theta, v: F.cross_entropy(model.logits(theta, x_val), y_val),
        sample=sample, full_batch=lambda: full,
        residuals=lambda theta, v, b: model.residuals(theta, b["x"], weights(v, b["idx"])),
        jacobian_rows=lambda theta, v, b: model.jacobian_rows(theta, b["x"], weights(v, b["idx"])),
        kfac_factors=lambda theta, v, b: model.kfac(theta, b["x"], weights(v, b["idx"])),
        hessian_operator=lambda theta, v, b: model.hessian_operator(theta, b["x"], b["y"], weights(v.detach(), b["idx"])),
        layer_shapes=[(model.classes, model.dim)], metrics=metrics, info={"lambda": lam, **(info or {})},
        aligned_batch=True, project_v=(lambda v: v.clamp_(0.0, 1.0)) if project else None,
    )


# how the synthetic images start: random real images of each class, or N(0, 1)/pixels (jaxopt's example)
DISTILLATION_INITS = ("real", "noise")


def check_distillation_init(init: str) -> None:
    if init not in DISTILLATION_INITS:
        raise PinnctlError(f"unknown distillation init '{init}'; known: {', '.join(DISTILLATION_INITS)}")


def distillation_problem(x_real: Tensor, y_real: Tensor, x_test: Tensor, y_test: Tensor, *, per_class: int,
                         lam: float, outer_batch: int | None = None, batch_size: int | None = None, seed: int = 0,
                         name: str = "distillation", image_shape: tuple[int, int] = (28, 28),
                         init: str = "real") -> BilevelProblem:
    """Data distillation: v = per_class synthetic images per class (``init``: from real ones, or noise);
    inner: the classifier trained on them (minibatches of ``batch_size`` synthetic images, None:
    full batch); outer: NLL on real training data.
    Everything lives on the device of ``x_real``; the random picks are drawn on the CPU."""
    classes = int(y_real.max()) + 1
    model = LinearSoftmax(classes, x_real.shape[1], lam)
    device = x_real.device
    g = torch.Generator().manual_seed(seed)
    picks = [torch.nonzero(y_real == c).squeeze(1)[torch.randperm(int((y_real == c).sum()), generator=g, device=g.device)
                                                   [:per_class].to(device)] for c in range(classes)]
    check_distillation_init(init)
    if init == "real":
        start = x_real[torch.cat(picks)]
    else:  # noise, as jaxopt's dataset-distillation example: N(0, 1)/pixels
        start = torch.randn(classes * per_class, x_real.shape[1], generator=g).to(device, x_real.dtype) / x_real.shape[1]
    n_syn = classes * per_class
    y_syn = torch.arange(classes, device=device).repeat_interleave(per_class)
    n_real = x_real.shape[0]
    outer_idx = _minibatch(n_real, outer_batch, 0, seed + 1, device)  # a fixed subset: the outer loss stays deterministic
    x_out, y_out = (x_real, y_real) if outer_idx is None else (x_real[outer_idx], y_real[outer_idx])
    all_idx = torch.arange(n_syn, device=device)

    def images(v: Tensor, idx: Tensor) -> Tensor:
        return v.view(n_syn, -1)[idx]

    def metrics(theta: Tensor, v: Tensor) -> dict[str, float]:
        return model.test_metrics(theta, x_test, y_test)

    full = {"y": y_syn, "idx": all_idx}

    def sample(step: int) -> Batch:
        idx = _minibatch(n_syn, batch_size, step, seed, device)
        return full if idx is None else {"y": y_syn[idx], "idx": idx}

    return BilevelProblem(
        name=name, theta0=torch.zeros(model.size, dtype=x_real.dtype, device=device), v0=start.reshape(-1).clone(),
        inner_terms=lambda theta, v, b: model.terms(theta, images(v, b["idx"]), b["y"], None),
        outer_loss=lambda theta, v: F.cross_entropy(model.logits(theta, x_out), y_out),
        sample=sample, full_batch=lambda: full,
        residuals=lambda theta, v, b: model.residuals(theta, images(v, b["idx"]), None),
        jacobian_rows=lambda theta, v, b: model.jacobian_rows(theta, images(v, b["idx"]).detach(), None),
        kfac_factors=lambda theta, v, b: model.kfac(theta, images(v, b["idx"]), None),
        hessian_operator=lambda theta, v, b: model.hessian_operator(theta, images(v.detach(), b["idx"]), b["y"], None),
        layer_shapes=[(classes, model.dim)], metrics=metrics,
        info={"lambda": lam, "v_image_shape": [classes, per_class, *image_shape]}, aligned_batch=True,
    )


@dataclass
class ClassificationProblem:
    """What a classification problem file builds: a name, parameters and a compile step.

    ``paper_rows`` are the paper's table rows (preset ``paper``): row name → dotted config keys,
    with ``method.name`` saying the method; ``--preset paper --method X`` takes the row named X
    (or the first row of method X). ``paper_results`` are the paper's (outer loss, test accuracy) per row."""

    name: str
    description: str
    build: Callable[[int, str], BilevelProblem]  # (seed, device) → compiled problem (loads the data onto device)
    params: dict[str, Any] = field(default_factory=dict)
    reference: str | None = None
    defaults: dict[str, Any] = field(default_factory=dict)  # dotted config keys: the task's own setup
    preset_defaults: dict[str, dict[str, Any]] = field(default_factory=dict)  # per preset (budgets)
    method_defaults: dict[str, dict[str, Any]] = field(default_factory=dict)  # per method: its options
    paper_rows: dict[str, dict[str, Any]] = field(default_factory=dict)
    paper_results: dict[str, tuple[float, float]] = field(default_factory=dict)

    def compile(self, seed: int = 0, device: str = "cpu") -> BilevelProblem:
        return self.build(seed, device)

    def paper_row(self, method: str, row: str | None = None) -> dict[str, Any]:
        """The paper's settings for ``row`` (default: the row named ``method``, else the first row of it)."""
        if row is None:
            row = method if method in self.paper_rows else next(
                (k for k, r in self.paper_rows.items() if r["method.name"] == method), None)
            if row is None:
                return {}
        if row not in self.paper_rows:
            raise PinnctlError(f"{self.name} has no paper row '{row}'; known: {', '.join(self.paper_rows)}")
        keys = dict(self.paper_rows[row])
        if keys.pop("method.name") != method:
            raise PinnctlError(f"paper row '{row}' of {self.name} is for method {self.paper_rows[row]['method.name']}, not {method}")
        return keys

    def config_defaults(self, preset: str, method: str, row: str | None = None) -> dict[str, Any]:
        out = {**self.defaults, **self.preset_defaults.get(preset, {})}
        out.update({f"method.options.{k}": v for k, v in self.method_defaults.get(method, {}).items()})
        if preset == "paper":
            out.update(self.paper_row(method, row))
        return out


def paper_row(method: str, eta: float, alpha: float, /, **options: Any) -> dict[str, Any]:
    """One row of a paper table as config keys: the method, inner step η, outer step α and the
    method's options (the problem files' ``paper_rows``)."""
    return {"method.name": method, "inner.lr": eta, "outer.lr": alpha, **{f"method.options.{k}": v for k, v in options.items()}}


def corrupt_labels(y: np.ndarray, p: float, seed: int, classes: int = 10, exact: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Labels replaced by uniformly random ones (which may equal the old label): each with
    probability p, or (``exact``, as BOME's data cleaning does) exactly ⌊p·n⌋ of them chosen at
    random. Returns (labels, replaced mask)."""
    rng = np.random.default_rng(seed)
    if exact:
        flip = np.zeros(y.shape[0], dtype=bool)
        flip[rng.permutation(y.shape[0])[: int(p * y.shape[0])]] = True
    else:
        flip = rng.random(y.shape[0]) < p
    out = y.copy()
    out[flip] = rng.integers(0, classes, int(flip.sum()))
    return out, flip


def standardise(*arrays: np.ndarray, reference: np.ndarray) -> list[np.ndarray]:
    """(x − mean)/(std + 1e-4) with one scalar mean and std over all pixels of ``reference`` (the
    training images), as BOME's data cleaning normalises: mean 0 and std 1 over the training set."""
    mean, std = float(reference.mean()), float(reference.std())
    return [((a - mean) / (std + 1e-4)).astype(np.float32) for a in arrays]
