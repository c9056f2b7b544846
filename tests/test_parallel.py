"""The curvature worker over torch.distributed (gloo on CPU): equivalence with inline mode,
faults (killed and hung worker), bounded in-flight buffer. This machine has no GPU: the NCCL and
one-GPU layouts are checked for their backend choice and device placement of messages only."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

from pinnctl import checkpoint, runs
from pinnctl.cli import main
from pinnctl.parallel import backend_for, decode, encode

BASE = ["solve", "heat2d", "--preset", "smoke", "--quiet", "--set", "outer.steps=3", "--set", "checkpoint_every=1"]
TIMINGS = ("wall_time", "inner_time", "curvature_time", "hypergrad_time")


def _numbers(run_dir) -> dict[str, np.ndarray]:
    return {k: a for k, a in runs.read(run_dir)["history"].items() if k not in TIMINGS}


def _workers() -> list[int]:
    """Live (non-zombie) curvature-worker processes started by this process."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if int(fields[1]) == os.getpid() and fields[0] != "Z" and b"worker_entry" in cmdline:
            out.append(int(stat.parent.name))
    return out


@pytest.fixture(scope="module")
def inline_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("inline") / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the worker runs one thread: same reductions, same bits
    try:
        assert main([*BASE, "--out", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
    return out


def test_message_codec_roundtrip():
    msg = {"theta": torch.randn(5, dtype=torch.float64), "step": 3, "info": {"a": 1.5}, "shapes": [(2, 3)]}
    back = decode(encode(msg))
    assert torch.equal(back["theta"], msg["theta"]) and back["step"] == 3 and back["info"] == {"a": 1.5}


def test_backend_follows_devices():
    assert backend_for("cpu", "cpu") == "gloo" and backend_for("cuda:0", "cpu") == "gloo"
    assert backend_for("cuda:0", "cuda:1") == "nccl"
    # one GPU: NCCL refuses two ranks on one device, so the bytes go through host memory
    assert backend_for("cuda:0", "cuda:0") == "gloo" and backend_for("cuda:0", "") == "gloo"


def test_messages_decode_onto_the_receivers_device():
    """A message saved on one device is loaded onto the receiver's (map_location); "meta" stands
    in for a second device on a machine without one."""
    back = decode(encode({"theta": torch.ones(3), "info": {"a": 1.0}}), torch.device("meta"))
    assert back["theta"].device.type == "meta" and back["theta"].shape == (3,) and back["info"] == {"a": 1.0}


@pytest.mark.parametrize("stream", ["theta", "stats"])
def test_parallel_matches_inline(inline_run, tmp_path, stream):
    out = tmp_path / "run"
    assert main([*BASE, "--out", str(out), "--parallel", "--set", "parallel.threads=1", "--set", f"parallel.stream={stream}"]) == 0
    a, b = _numbers(inline_run), _numbers(out)
    assert set(a) == set(b)
    for key in a:
        np.testing.assert_allclose(b[key], a[key], rtol=1e-6, atol=0, err_msg=key)
    va, vb = (runs.read(p)["arrays"]["control/v"] for p in (inline_run, out))
    np.testing.assert_allclose(vb, va, rtol=1e-6, atol=1e-9)
    worker = json.loads((out / "summary.json").read_text())["curvature_worker"]
    # 3 outer steps × (3 observe + 1 request) + a state request after pretraining and after each step
    assert worker["messages"] == 3 * 4 + 4 and worker["stream"] == stream
    assert not _workers()


def test_parallel_nbo_moves_theta_like_inline(tmp_path):
    """NBO's Newton step comes back from the worker as a tensor in the reply and moves θ on rank 0."""
    nbo = ["--method", "nbo", "--set", "method.options.steps=3"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main([*BASE, *nbo, "--out", str(tmp_path / "inline")]) == 0
    finally:
        torch.set_num_threads(threads)
    assert main([*BASE, *nbo, "--out", str(tmp_path / "par"), "--parallel", "--set", "parallel.threads=1"]) == 0
    a, b = _numbers(tmp_path / "inline"), _numbers(tmp_path / "par")
    assert (a["info/newton_scale"] > 0).any()
    for key in a:
        np.testing.assert_allclose(b[key], a[key], rtol=1e-6, atol=0, err_msg=key)
    assert not _workers()


def _at_inner_call(monkeypatch, n: int, action) -> None:
    import pinnctl.bilevel as bl

    real, calls = bl.inner_step, {"n": 0}

    def patched(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == n:
            action()
        return real(*args, **kwargs)

    monkeypatch.setattr(bl, "inner_step", patched)


def _signal_worker(sig: int):
    def action():
        (pid,) = _workers()
        os.kill(pid, sig)

    return action


def test_killed_worker_stops_run_with_checkpoint(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    _at_inner_call(monkeypatch, 20 + 3 + 2, _signal_worker(signal.SIGKILL))  # inside outer step 2
    assert main([*BASE, "--out", str(out), "--parallel", "--set", "parallel.threads=1"]) == 1
    err = capsys.readouterr().err
    assert "curvature worker (rank 1, pid" in err and "died or disconnected" in err
    assert checkpoint.load(out)["outer_step"] == 1
    assert runs.read(out)["attrs"]["status"] == "failed"
    assert not _workers()


def test_hung_worker_times_out(tmp_path, monkeypatch, capsys):
    """The worker is stopped inside outer step 2. The run's timeout is long, so a worker that is
    merely slow on a loaded machine is never called hung; the short deadline that must fire is
    set on rank 0's channel at the moment the worker is stopped."""
    import pinnctl.parallel as par

    channels = []

    class Recorded(par.Channel):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            channels.append(self)

    monkeypatch.setattr(par, "Channel", Recorded)
    stop = _signal_worker(signal.SIGSTOP)

    def stop_and_shorten() -> None:
        stop()
        (rank0,) = [ch for ch in channels if ch.peer == 1]
        rank0.timeout_s = 5.0

    out = tmp_path / "run"
    _at_inner_call(monkeypatch, 20 + 3 + 1, stop_and_shorten)
    assert main([*BASE, "--out", str(out), "--parallel", "--set", "parallel.threads=1", "--set", "parallel.timeout_s=600"]) == 1
    assert "did not respond within 5 s" in capsys.readouterr().err
    assert checkpoint.load(out)["outer_step"] == 1
    assert not _workers()


def test_backpressure_bounds_the_buffer_over_500_inner_steps(tmp_path):
    """The worker (K-FAC statistics per step) is slower than the inner loop: the buffer
    fills to max_inflight, the inner loop waits, nothing grows and nothing is dropped."""
    out = tmp_path / "run"
    sets = ["pretrain.steps=0", "inner.steps=500", "outer.steps=1", "certify_every=0", "parallel.max_inflight=4",
            "parallel.threads=1"]
    assert main(["solve", "heat2d", "--preset", "smoke", "--quiet", "--out", str(out), "--parallel",
                 *[a for s in sets for a in ("--set", s)]]) == 0
    worker = json.loads((out / "summary.json").read_text())["curvature_worker"]
    assert worker["messages"] == 500 + 1 + 2  # observe ×500, hypergradient, 2 state requests
    assert worker["peak_inflight"] == 4 and worker["backpressure_wait_s"] > 0


def test_cuda_devices_on_a_machine_without_cuda_are_one_line_errors(capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    assert main(["solve", "heat2d", "--preset", "smoke", "--parallel", "--set", "device=cpu",
                 "--set", "curvature_device=cuda:1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "curvature_device 'cuda:1'" in err and "device_count() = 0" in err
    assert not _workers()


@pytest.mark.parametrize("key, value, match", [("parallel.stream", "grads", "unknown parallel.stream 'grads'"),
                                               ("parallel.max_inflight", "0", "max_inflight ≥ 1")])
def test_bad_parallel_settings_are_one_line_errors(tmp_path, capsys, key, value, match):
    assert main([*BASE, "--out", str(tmp_path / "run"), "--parallel", "--set", f"{key}={value}"]) == 2
    assert match in capsys.readouterr().err and not _workers() and not (tmp_path / "run").exists()
