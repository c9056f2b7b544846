"""Algorithm 2: the state PINN trains on rank 0 while a curvature worker (rank 1) keeps the
NHGD curvature and computes the hypergradient, over ``torch.distributed``.

Rank 0 sees the worker as an ordinary estimator (``RemoteEstimator``), so the bilevel
loop, checkpoints and run files are the same code inline and in parallel. Per inner
step rank 0 sends one message and never waits for the worker except under back-pressure:

- ``stream="theta"`` (default): the message is θ_t, g_t, the loss and the step number; the
  worker rebuilds that step's batch (``problem.sample(step)`` is deterministic) and runs
  the estimator's ``collect`` and ``observe`` itself. The K-FAC factor statistics of a
  PINN are *not* by-products of our inner step (they need per-layer Taylor-mode inputs
  and output gradients of every derivative channel), so computing them on rank 0 would
  put the curvature work on the inner loop's critical path. θ (13k floats for heat2d) is
  also a smaller message than the factors (about 330 kB in float64).
- ``stream="stats"``: rank 0 runs ``collect`` and streams its result (K-FAC factors, EFIM
  gradients, Gauss–Newton Jacobian rows); only ``observe`` runs on the worker.

Back-pressure: sends are asynchronous (``isend``); at most ``max_inflight`` messages may be
outstanding. When the worker falls that far behind, rank 0 waits for the oldest send to
complete, so memory is bounded by ``max_inflight`` messages and nothing is dropped (the
curvature is the same as inline). At the end of the inner loop rank 0 sends the request
for the hypergradient and waits for the reply.

Faults: every wait on rank 0 polls with a deadline (``timeout_s``) and checks that the
worker process is alive; a dead or hung worker becomes a ``WorkerError`` naming it, the
worker is killed, and the caller's usual error path (checkpoint of the last good step,
run-file status, exit 1) runs. The worker exits when its parent disappears.

Backend: NCCL when the two roles are on two different CUDA devices, gloo otherwise: either
role on the CPU, or both on one GPU (NCCL refuses two ranks on one device; messages then go
through host memory). Each side decodes a message onto its own device (``map_location``):
rank 0 onto ``device``, the worker onto ``curvature_device``, where it also builds its
problem. Launch:
``pinnctl solve heat2d --parallel`` spawns the worker; under ``torchrun --nproc-per-node 2``
(``RANK``/``WORLD_SIZE`` set) rank 1 serves and rank 0 solves.
"""

from __future__ import annotations

import datetime
import io
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch
import torch.distributed as dist
from torch import Tensor

from . import PinnctlError, RunError
from .core import HyperResult
from .devices import curvature_device
from .hypergrad.base import Estimator, StepInfo

OBSERVE, HYPERGRAD, GET_STATE, LOAD_STATE, STOP, REPLY, ERROR, READY = range(1, 9)
STARTUP_TIMEOUT_S = 300.0  # a fresh interpreter importing torch and building the problem, on a loaded machine
STREAMS = ("theta", "stats")
# Every wait passes its own deadline; "no deadline" (the worker waiting for the inner loop) is this long.
FOREVER_S = 7 * 24 * 3600


class WorkerError(RunError):
    """The curvature worker died, hung past the timeout, or failed."""


def check_config(par: Any) -> None:
    """parallel.* keys, checked before any process is started."""
    if par.stream not in STREAMS:
        raise PinnctlError(f"unknown parallel.stream '{par.stream}'; known: {', '.join(STREAMS)}")
    if par.max_inflight < 1 or not par.timeout_s > 0 or par.threads < 0:
        raise PinnctlError(f"parallel needs max_inflight ≥ 1, timeout_s > 0 and threads ≥ 0; got max_inflight="
                           f"{par.max_inflight}, timeout_s={par.timeout_s}, threads={par.threads}")


def threads_per_process(cfg: Any) -> int:
    return cfg.parallel.threads if cfg.parallel.threads > 0 else max(1, (os.cpu_count() or 2) // 2)


def torchrun_rank() -> int | None:
    """This process's rank under torchrun, or None when not launched by it."""
    return int(os.environ["RANK"]) if "RANK" in os.environ and "WORLD_SIZE" in os.environ else None


def backend_for(device: str, curvature_device: str) -> str:
    state, curv = torch.device(device), torch.device(curvature_device or device)
    return "nccl" if state.type == curv.type == "cuda" and state != curv else "gloo"


def encode(obj: Any) -> Tensor:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8)


def decode(data: Tensor, map_location: torch.device | str = "cpu") -> Any:
    """A message onto the receiver's compute device (a θ sent from cuda:0 arrives on the worker's)."""
    return torch.load(io.BytesIO(data.cpu().numpy().tobytes()), map_location=map_location, weights_only=True)


@dataclass
class Channel:
    """Framed messages to and from one peer rank: a [kind, nbytes] header, then the payload."""

    peer: int
    name: str
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))  # where the bytes travel
    compute: torch.device = field(default_factory=lambda: torch.device("cpu"))  # where messages are decoded
    max_inflight: int = 8
    timeout_s: float = 600.0
    alive: Callable[[], bool] = lambda: True
    pending: deque = field(default_factory=deque)
    peak_inflight: int = 0
    sent: int = 0
    waited_s: float = 0.0  # time rank 0 spent blocked by back-pressure

    def _wait(self, work: Any, what: str) -> None:
        """Block on one transfer. Gloo's send/recv only progress inside ``wait`` (``is_completed``
        is never set by polling), so the deadline is gloo's own timeout; a dead peer closes its
        sockets, which fails the wait at once."""
        seconds = self.timeout_s if math.isfinite(self.timeout_s) else FOREVER_S
        self._guard(lambda: work.wait(timeout=datetime.timedelta(seconds=seconds)), what)

    def _guard(self, fn: Callable[[], Any], what: str) -> Any:
        """Run a transport call; its RuntimeError becomes a WorkerError naming the peer."""
        try:
            return fn()
        except RuntimeError as e:
            detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            if self.alive() and "timed out" in detail.lower():
                raise WorkerError(f"{self.name} did not respond within {self.timeout_s:g} s while {what} "
                                  "(raise parallel.timeout_s if the worker is just slow)") from None
            raise WorkerError(f"{self.name} died or disconnected while {what} ({detail[:160]})") from None

    def send(self, kind: int, obj: Any) -> None:
        """Asynchronous; waits only when ``max_inflight`` sends are outstanding (back-pressure).
        A send completes when the peer has taken it, so the count is how far the peer lags."""
        payload = encode(obj).to(self.device)
        header = torch.tensor([kind, payload.numel()], dtype=torch.int64, device=self.device)
        t0 = time.perf_counter()
        while len(self.pending) >= self.max_inflight:
            self._complete_oldest("taking a message (back-pressure)")
        self.waited_s += time.perf_counter() - t0
        works = self._guard(lambda: (dist.isend(header, self.peer), dist.isend(payload, self.peer)), "taking a message")
        self.pending.append((works, header, payload))  # buffers stay alive until sent
        self.sent += 1
        self.peak_inflight = max(self.peak_inflight, len(self.pending))

    def _complete_oldest(self, what: str) -> None:
        for w in self.pending[0][0]:
            self._wait(w, what)
        self.pending.popleft()

    def drain(self) -> None:
        while self.pending:
            self._complete_oldest("taking the last messages")

    def recv(self, what: str) -> tuple[int, Any]:
        header = torch.zeros(2, dtype=torch.int64, device=self.device)
        self._wait(self._guard(lambda: dist.irecv(header, self.peer), what), what)
        kind, nbytes = (int(x) for x in header.tolist())
        payload = torch.empty(nbytes, dtype=torch.uint8, device=self.device)
        self._wait(self._guard(lambda: dist.irecv(payload, self.peer), what), what)
        return kind, decode(payload, self.compute)


class RemoteEstimator:
    """Rank 0's view of the worker: the Estimator protocol, implemented by messages."""

    def __init__(self, local: Estimator, channel: Channel, stream: str = "theta", followers: bool = False) -> None:
        self.local, self.channel, self.stream = local, channel, stream
        self.followers = followers  # data-parallel: the other data ranks get each reply (pinnctl.dataparallel)

    def collect(self, problem: Any, step: StepInfo) -> dict[str, Any]:
        wants = getattr(self.local, "wants", None)
        if wants is not None and not wants(step.step):
            return {}  # a step the estimator skips (e.g. NHGD's `every`): nothing to send
        if self.stream == "stats":
            return {"stats": self.local.collect(problem, step)}
        return {"step": step.step, "theta": step.theta.detach(), "v": step.v.detach(), "grad": step.grad.detach(), "loss": step.loss}

    def observe(self, message: dict[str, Any]) -> None:
        if message:
            self.channel.send(OBSERVE, message)

    def _call(self, kind: int, obj: Any, what: str) -> Any:
        self.channel.send(kind, obj)
        reply_kind, reply = self.channel.recv(what)
        if reply_kind == ERROR:
            raise WorkerError(f"{self.channel.name} failed: {reply['message']}")
        return reply

    def hypergradient(self, problem: Any, theta: Tensor, v: Tensor, step: int) -> HyperResult:
        reply = self._call(HYPERGRAD, {"theta": theta.detach(), "v": v.detach(), "step": step}, "computing the hypergradient")
        if self.followers:
            from .dataparallel import broadcast_reply

            broadcast_reply(reply)
        step_ = reply["theta_step"]
        return HyperResult(reply["h"].to(theta.device), reply["outer_loss"], diagnostics=reply["diagnostics"],
                           theta_step=None if step_ is None else step_.to(theta.device))

    def state_dict(self) -> dict[str, Any]:
        return self._call(GET_STATE, {}, "sending its curvature state")

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.channel.send(LOAD_STATE, state)

    def close(self) -> None:
        self.channel.send(STOP, {})
        self.channel.drain()


def serve(problem: Any, estimator: Estimator, channel: Channel, stream: str) -> int:
    """Rank 1: fold messages into the curvature, answer requests, until STOP. Returns messages served."""
    served = 0
    while True:
        kind, msg = channel.recv("waiting for the inner loop")
        served += 1
        try:
            if kind == OBSERVE:
                if stream == "stats":
                    stats = msg["stats"]
                else:
                    info = StepInfo(step=msg["step"], theta=msg["theta"], v=msg["v"], batch=problem.sample(msg["step"]),
                                    loss=msg["loss"], grad=msg["grad"])
                    stats = estimator.collect(problem, info)
                estimator.observe(stats)
            elif kind == HYPERGRAD:
                res = estimator.hypergradient(problem, msg["theta"], msg["v"], msg["step"])
                channel.send(REPLY, {"h": res.h.detach(), "outer_loss": res.outer_loss, "diagnostics": res.diagnostics,
                                     "theta_step": None if res.theta_step is None else res.theta_step.detach()})
            elif kind == GET_STATE:
                channel.send(REPLY, estimator.state_dict())
            elif kind == LOAD_STATE:
                estimator.load_state_dict(msg)
            elif kind == STOP:
                channel.drain()
                return served
        except Exception as e:  # reported to rank 0, which owns the run and its error path
            channel.send(ERROR, {"message": f"{type(e).__name__}: {e}"})
            channel.drain()
            raise


# ----------------------------------------------------------------------------- processes


def _listen_local() -> socket.socket:
    """The rendezvous socket, bound to 127.0.0.1 (torch's own TCPStore listens on every interface)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock


def _loopback_interface() -> str:
    return next((name for _, name in socket.if_nameindex() if name.startswith("lo")), "lo")


def _init_group(rank: int, backend: str, addr: str | None, port: int | None, sock: socket.socket | None = None,
                data_ranks: int = 1) -> None:
    """Our own rendezvous on 127.0.0.1 when we spawned the worker (the store on ``sock``, gloo's
    pairs on the loopback interface); torchrun's store (env://) under torchrun, where a
    multi-node launch is the user's choice. With data ranks, every rank (the worker too) joins
    the creation of the data ranks' group."""
    timeout = datetime.timedelta(seconds=STARTUP_TIMEOUT_S)  # rendezvous; waits set their own
    if addr is None:
        dist.init_process_group(backend, timeout=timeout)
    else:
        store = dist.TCPStore(addr, port, 2, rank == 0, timeout=timeout, wait_for_workers=False,
                              **({"master_listen_fd": sock.detach()} if sock is not None else {}))  # the store owns it now
        saved = os.environ.get("GLOO_SOCKET_IFNAME")
        os.environ["GLOO_SOCKET_IFNAME"] = _loopback_interface()
        try:
            dist.init_process_group(backend, store=store, rank=rank, world_size=2, timeout=timeout)
        finally:
            if saved is None:
                os.environ.pop("GLOO_SOCKET_IFNAME", None)
            else:
                os.environ["GLOO_SOCKET_IFNAME"] = saved
    if data_ranks > 1:
        from .dataparallel import set_group

        set_group(dist.new_group(list(range(data_ranks))))


def _parent_alive(parent_pid: int) -> Callable[[], bool]:
    return lambda: os.getppid() == parent_pid


def worker_main(config: dict[str, Any], addr: str | None = None, port: int | None = None,
                parent_pid: int | None = None) -> None:
    """Rank 1's entry point (spawned, or rank 1 of torchrun): build the same problem and estimator."""
    from . import config as configmod
    from .solve_setup import build

    # Ctrl-C reaches the whole process group; rank 0 owns the run and stops this process itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    cfg = configmod.from_dict(config)
    torch.set_num_threads(threads_per_process(cfg))
    here = torch.device(curvature_device(cfg))
    if here.type == "cuda":
        torch.cuda.set_device(here)  # NCCL binds a rank to the current device
    _init_group(1, backend_for(cfg.device, cfg.curvature_device), addr, port, data_ranks=cfg.parallel.data_ranks)
    setup = build(cfg, device=str(here), role="worker")  # the worker's problem (batches, θ, v) lives on its device
    problem, estimator = setup.problem, setup.estimator
    alive = _parent_alive(parent_pid) if parent_pid is not None else (lambda: True)
    channel = Channel(peer=0, name="rank 0 (inner loop)", device=_comm_device(cfg, here), compute=here,
                      max_inflight=cfg.parallel.max_inflight, timeout_s=float("inf"), alive=alive)
    try:
        channel.send(READY, {})
        serve(problem, estimator, channel, cfg.parallel.stream)
    except WorkerError:
        os._exit(3)  # the parent is gone: nothing to report to
    dist.destroy_process_group()


def worker_entry() -> None:
    """``python -c 'from pinnctl.parallel import worker_entry; worker_entry()' CONFIG ADDR PORT PARENT_PID``."""
    config, addr, port, parent = sys.argv[1:5]
    worker_main(json.loads(config), addr, int(port), int(parent))


def _comm_device(cfg: Any, device: torch.device | str) -> torch.device:
    return torch.device(device) if backend_for(cfg.device, cfg.curvature_device) == "nccl" else torch.device("cpu")


@contextmanager
def parallel_estimator(cfg: Any, local: Estimator, config_dict: dict[str, Any]) -> Iterator[RemoteEstimator]:
    """Start (or join, under torchrun) the curvature worker and yield rank 0's proxy for it.

    On any error the worker is stopped hard (kill + join), so no process is left behind."""
    check_config(cfg.parallel)
    backend = backend_for(cfg.device, cfg.curvature_device)
    proc = None
    if torchrun_rank() is not None:
        check_torchrun_world(cfg.parallel.data_ranks)
        addr, port, sock = None, None, None
        alive: Callable[[], bool] = lambda: True
    else:
        # A fresh interpreter, not multiprocessing: spawn would re-run the caller's main module
        # (a notebook or script calling pinnctl.cli.main without a __main__ guard).
        sock = _listen_local()
        addr, port = "127.0.0.1", sock.getsockname()[1]
        proc = subprocess.Popen([sys.executable, "-c", "from pinnctl.parallel import worker_entry; worker_entry()",
                                 json.dumps(config_dict), addr, str(port), str(os.getpid())])
        alive = lambda: proc.poll() is None
    if torch.device(cfg.device).type == "cuda":
        torch.cuda.set_device(torch.device(cfg.device))  # NCCL binds a rank to the current device
    threads = torch.get_num_threads()
    torch.set_num_threads(threads_per_process(cfg))
    name = f"curvature worker (rank 1{f', pid {proc.pid}' if proc else ''}, {curvature_device(cfg)})"
    ok = False
    try:
        try:
            _init_group(0, backend, addr, port, sock, data_ranks=cfg.parallel.data_ranks)
        except RuntimeError as e:
            raise WorkerError(f"{name} did not join within {STARTUP_TIMEOUT_S:g} s: {str(e).splitlines()[0][:160]}") from None
        channel = Channel(peer=cfg.parallel.data_ranks, name=name, device=_comm_device(cfg, cfg.device), compute=torch.device(cfg.device),
                          max_inflight=cfg.parallel.max_inflight,
                          timeout_s=cfg.parallel.timeout_s, alive=alive)
        remote = RemoteEstimator(local, channel, cfg.parallel.stream, followers=cfg.parallel.data_ranks > 1)
        channel.timeout_s = max(cfg.parallel.timeout_s, STARTUP_TIMEOUT_S)  # start-up is not a hang
        kind, _ = channel.recv("starting (importing torch, building the problem)")
        channel.timeout_s = cfg.parallel.timeout_s
        if kind != READY:
            raise WorkerError(f"{name} sent message kind {kind} instead of READY")
        yield remote
        remote.close()
        ok = True
    finally:
        torch.set_num_threads(threads)
        if sock is not None:
            sock.close()
        if proc is not None:
            if ok:
                try:
                    proc.wait(timeout=cfg.parallel.timeout_s)
                except subprocess.TimeoutExpired:
                    pass
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if dist.is_initialized():
            if ok:
                dist.destroy_process_group()
            else:
                _abort_group()


def check_torchrun_world(data_ranks: int = 1) -> None:
    """torchrun's world: the data ranks (0…K−1) and the curvature worker (rank K)."""
    if int(os.environ["WORLD_SIZE"]) != data_ranks + 1:
        raise PinnctlError(f"--parallel under torchrun with parallel.data_ranks={data_ranks} needs exactly {data_ranks + 1} "
                           f"processes, got WORLD_SIZE={os.environ['WORLD_SIZE']}")


def _abort_group() -> None:
    """Tear down a group whose peer may be dead without waiting on it."""
    try:
        dist.distributed_c10d._get_default_group().abort()
    except Exception:
        pass
    try:
        dist.destroy_process_group()
    except Exception:
        pass
