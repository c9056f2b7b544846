"""Data-parallel inner training under torchrun: K data ranks share the collocation points.

``torchrun --nproc-per-node K+1 -m pinnctl solve … --parallel --set parallel.data_ranks=K``:
ranks 0…K−1 train the state, each on every K-th point of every condition (``x[rank::K]``), and
rank K is the curvature worker (pinnctl.parallel). Each rank's inner loss is its shard's
loss; the θ-gradient is averaged over the data ranks by an all-reduce inside autograd (the
wrapper below), so every data rank takes the same optimiser step and θ stays identical
everywhere. With equal shards the average of the shard losses is the full-batch loss, so
the numbers are those of one rank up to float reassociation.

Only rank 0 talks to the worker (``stream=theta``: the worker rebuilds each step's full batch
and computes the K-FAC statistics itself, so no statistic needs reducing) and broadcasts
each hypergradient to the other data ranks (``Follower``). Only rank 0 writes run files,
checkpoints and certified objectives. Multi-node runs are torchrun's job.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from . import PinnctlError
from .core import Batch, BilevelProblem, HyperResult

_GROUP: list[Any] = []  # the data ranks' process group, once the process group is up


def set_group(group: Any) -> None:
    _GROUP[:] = [group]


def group() -> Any:
    if not _GROUP:
        raise PinnctlError("data-parallel training needs the torch.distributed group (run under torchrun with --parallel)")
    return _GROUP[0]


def check(par: Any, method_optimizer: str) -> None:
    """parallel.data_ranks settings that cannot work, before any process group exists."""
    if par.data_ranks < 1:
        raise PinnctlError(f"parallel.data_ranks must be ≥ 1, got {par.data_ranks}")
    if par.data_ranks == 1:
        return
    if "WORLD_SIZE" not in os.environ:
        raise PinnctlError(f"parallel.data_ranks={par.data_ranks} needs torchrun: "
                           f"torchrun --nproc-per-node {par.data_ranks + 1} -m pinnctl solve … --parallel")
    if par.stream != "theta":
        raise PinnctlError("parallel.data_ranks > 1 needs parallel.stream=theta (the worker computes the statistics)")
    if method_optimizer not in ("adam", "sgd"):
        raise PinnctlError(f"parallel.data_ranks > 1 supports inner.optimizer adam or sgd, not '{method_optimizer}'")


class _AverageGrad(torch.autograd.Function):
    """Identity forward; backward averages the gradient over the data ranks (one all-reduce)."""

    @staticmethod
    def forward(ctx: Any, theta: Tensor) -> Tensor:
        return theta.view_as(theta)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, group=group())
        return grad / dist.get_world_size(group())


def _average_value(x: Tensor) -> Tensor:
    """The term's value averaged over the data ranks (for logging and line searches); its
    gradient is the local one (``_AverageGrad`` averages it once, at θ)."""
    total = x.detach().clone()
    dist.all_reduce(total, group=group())
    return x + (total / dist.get_world_size(group()) - x).detach()


def shard(batch: Batch, rank: int, ranks: int) -> Batch:
    out = {}
    for name, x in batch.items():
        if x.shape[0] % ranks:
            raise PinnctlError(f"parallel.data_ranks={ranks} needs every batch entry's size divisible by {ranks}; "
                               f"'{name}' has {x.shape[0]} points")
        out[name] = x[rank::ranks]
    return out


def sharded(problem: BilevelProblem, rank: int, ranks: int) -> BilevelProblem:
    """The problem as data rank ``rank`` of ``ranks`` sees it: its shard of every batch, the
    inner terms averaged over the ranks. The outer loss, certification and metrics are whole."""

    def inner_terms(theta: Tensor, v: Tensor, batch: Batch) -> dict[str, Tensor]:
        terms = problem.inner_terms(_AverageGrad.apply(theta), v, batch)
        return {k: _average_value(x) for k, x in terms.items()}

    return dataclasses.replace(
        problem, inner_terms=inner_terms, sample=lambda step: shard(problem.sample(step), rank, ranks),
        full_batch=lambda: shard(problem.full_batch(), rank, ranks), residuals=None, jacobian_rows=None,
        kfac_factors=None)


def broadcast_reply(reply: Any) -> Any:
    """Rank 0 sends the worker's reply to the other data ranks (they call ``Follower.hypergradient``)."""
    box = [reply]
    dist.broadcast_object_list(box, src=0, group=group())
    return box[0]


class Follower:
    """Data ranks 1…K−1: no curvature of their own; the hypergradient comes from rank 0."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def collect(self, problem: Any, step: Any) -> dict[str, Tensor]:
        return {}

    def observe(self, stats: dict[str, Tensor]) -> None:
        pass

    def hypergradient(self, problem: Any, theta: Tensor, v: Tensor, step: int) -> HyperResult:
        reply = broadcast_reply(None)
        step_ = reply["theta_step"]
        return HyperResult(reply["h"].to(self.device), reply["outer_loss"], diagnostics=reply["diagnostics"],
                           theta_step=None if step_ is None else step_.to(self.device))

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


def follower_main(config: dict[str, Any]) -> None:
    """Data rank 1…K−1 under torchrun: the same loop as rank 0 on its shard, writing nothing."""
    from . import config as configmod
    from .bilevel import run
    from .parallel import _init_group, backend_for, threads_per_process
    from .solve_setup import build

    cfg = configmod.from_dict(config)
    torch.set_num_threads(threads_per_process(cfg))
    _init_group(int(os.environ["RANK"]), backend_for(cfg.device, cfg.curvature_device), None, None,
                data_ranks=cfg.parallel.data_ranks)
    setup = build(cfg)
    run(setup.problem, Follower(setup.problem.theta0.device), pretrain=cfg.pretrain, inner=cfg.inner, outer=cfg.outer,
        certify_every=0)
    dist.destroy_process_group()
