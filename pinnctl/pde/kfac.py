"""K-FAC factors of PINN losses (Dangel et al., 2024, "K-FAC expand").

Each condition's Taylor-mode forward is a weight-shared net over its derivative channels:
per linear layer the inputs z (C, N, in+1) and the output gradients g (C, N, out) give the
per-sample Jacobian Σ_s g_s z_sᵀ, and the Kronecker factors A = mean z zᵀ, B ∝ Σ g gᵀ.
A condition with several residual components (a PDE system) is one term per component,
sharing that condition's inputs z.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from ..core import Batch
from ..nets import Jet


def layer_inputs_and_grads(r: Tensor, jet: Jet, retain_graph: bool = False) -> list[tuple[Tensor, Tensor]]:
    """Per linear layer: inputs z (C, N, in+1) and g = ∂r_n/∂(output) (C, N, out).

    One backward of Σ_n r_n gives every per-sample g at once, because sample n's
    residual depends only on sample n's activations. Σ_s g_{s,n} z_{s,n}ᵀ is then the
    per-sample Jacobian ∂r_n/∂[W | b] of that layer.
    """
    grads = torch.autograd.grad(r.sum(), jet.layer_outputs, retain_graph=retain_graph, allow_unused=True)
    out = []
    for z, a, g in zip(jet.layer_inputs, jet.layer_outputs, grads):
        g = torch.zeros_like(a) if g is None else g  # a component that does not reach this layer's outputs
        out.append((z, g.detach().view(z.shape[0], z.shape[1], -1)))
    return out


def kfac_expand_factors(zg: list[tuple[Tensor, Tensor]], weight: float) -> list[tuple[Tensor, Tensor]]:
    """K-FAC expand for one term w·mean_n(r_n²): A = mean_{n,s} z zᵀ, B = (2w/N) Σ_{n,s} g gᵀ (float64)."""
    out = []
    for z, g in zg:
        S, n = z.shape[0], z.shape[1]
        zf = z.reshape(-1, z.shape[-1]).double()
        gf = g.reshape(-1, g.shape[-1]).double()
        out.append((zf.T @ zf / (n * S), (2.0 * weight / n) * (gf.T @ gf)))
    return out


def combine_kfac_terms(terms: list[list[tuple[Tensor, Tensor]]]) -> list[tuple[Tensor, Tensor]]:
    """One Kronecker product per layer for a sum of terms Σ_c A_c ⊗ B_c.

    A = Σ_c tr(B_c) A_c / Σ_c tr(B_c), B = Σ_c B_c: exact when the input factors agree
    across terms, and it keeps the Gauss–Newton scale (which the hypergradient needs).
    """
    out = []
    for pieces in zip(*terms):
        traces = torch.stack([torch.trace(B) for _, B in pieces])
        total = traces.sum()
        tw = traces / total if total > 0 else torch.full_like(traces, 1.0 / len(pieces))
        out.append((sum(w * A for w, (A, _) in zip(tw, pieces)), sum(B for _, B in pieces)))
    return out


def pde_kfac_factors(
    condition_residual: Callable[..., tuple[dict[str, Tensor], Jet]],
    weights: dict[str, float], theta: Tensor, v: Tensor, batch: Batch,
) -> list[tuple[Tensor, Tensor]]:
    """Per-layer K-FAC factors of the Gauss–Newton matrix of Σ_terms w·mean(r²)."""
    terms = []
    for cname, p in batch.items():
        comps, jet = condition_residual(cname, theta, v, p, record=True)
        for k, r in enumerate(comps.values()):
            zg = layer_inputs_and_grads(r, jet, retain_graph=k < len(comps) - 1)
            terms.append(kfac_expand_factors(zg, weights[cname]))
    return combine_kfac_terms(terms)
