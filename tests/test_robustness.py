"""Bad input and lost runs (issue 21): every user mistake is one line on stderr with exit code 2
before anything is written, a run folder is a unit (locked, never silently replaced, never
bricked by a resume), checkpoints are checksummed, and SIGTERM ends a run like Ctrl-C.

The table drives the real CLI in-process (``pinnctl.cli.main``); subprocesses only where a
signal or a second real process is the point. One tiny finished heat2d run (smoke preset,
2 pretraining steps, 1 outer step, no certification) is the "existing run folder" that
rows must leave byte-for-byte untouched; each row works on its own copy.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch

from pinnctl import checkpoint, runs
from pinnctl.cli import main

TINY = ["--preset", "smoke", "--quiet", "--set", "pretrain.steps=2", "--set", "outer.steps=1", "--set", "certify_every=0"]

USER = textwrap.dedent('''
    """A user problem with a hook for each mistake (tests/test_robustness.py)."""
    import torch
    from pinnctl.geometry import Box
    from pinnctl.nets import MLP
    from pinnctl.problem import CONTROL, Boundary, Grid, Interior, PDEProblem, Tracking, VectorControl

    def make(k: int = 1):
        if k > 1:
            raise ValueError("k must be 1 for this problem")

        def residual(x, u, f, ops):
            r = ops.laplacian(u, x) + f[0]
            {residual}

        return PDEProblem(name="{name}", domain=Box([0], [1]), time=None,
                          conditions={{"pde": Interior(residual, n=8), "boundary": Boundary({bvalue}, n_per_side={nbnd})}},
                          state=MLP([1, 4, 1]), control=VectorControl({nctrl}),
                          objective=Tracking(lambda x: {target}, Grid(5)))
''')


def user_problem(name: str, residual: str = "return r", bvalue: str = "0.0", nbnd: int = 1, nctrl: int = 1,
                 target: str = "x[:, 0]") -> str:
    return USER.format(name=name, residual=residual, bvalue=bvalue, nbnd=nbnd, nctrl=nctrl, target=target)


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("finished") / "run"
    assert main(["solve", "heat2d", *TINY, "--out", str(out)]) == 0
    return out


@pytest.fixture
def work(tmp_path, monkeypatch, finished):
    """A fresh cwd with ./problems and a private copy of the finished run (``run``)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "problems").mkdir()
    (tmp_path / "extra").mkdir()
    monkeypatch.setenv("PINNCTL_PROBLEMS", str(tmp_path / "extra"))
    shutil.copytree(finished, tmp_path / "run")
    return tmp_path


@dataclass
class Row:
    id: str
    argv: list[str]  # {run} is the finished run's copy, {new} a path that must stay absent
    match: str  # a fragment of the one stderr line
    code: int = 2
    prepare: Callable[[Path], None] | None = None
    marks: list = field(default_factory=list)


def _write(name: str, text: str) -> Callable[[Path], None]:
    def prepare(root: Path) -> None:
        (root / "problems" / f"{name}.py").write_text(text)
    return prepare


def _flip_checkpoint(root: Path) -> None:
    """64 flipped bytes inside the largest tensor record (a K-FAC factor or an Adam moment)."""
    import zipfile

    path = root / "run" / checkpoint.CHECKPOINT
    with zipfile.ZipFile(path) as zf:
        rec = max(zf.infolist(), key=lambda i: i.file_size)
        offset = rec.header_offset + 30 + len(rec.filename.encode()) + len(rec.extra) + rec.file_size // 2
    data = bytearray(path.read_bytes())
    for i in range(offset, offset + 64):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncate_checkpoint(size: int | None) -> Callable[[Path], None]:
    def prepare(root: Path) -> None:
        path = root / "run" / checkpoint.CHECKPOINT
        path.write_bytes(path.read_bytes()[: size if size is not None else path.stat().st_size // 2])
    return prepare


def _empty_run(root: Path) -> None:
    """A run folder whose run file has no history rows (stopped in pretraining)."""
    (root / "norows").mkdir()
    runs.create(root / "norows", config={"problem": "heat2d", "method": {"name": "nhgd"}})


def _config_dir(root: Path) -> None:
    (root / "cfgdir").mkdir()


def _config_binary(root: Path) -> None:
    (root / "bad.toml").write_bytes(b"\xff\xfe\x00garbage\x80")


def _a_file(root: Path) -> None:
    (root / "afile").write_text("not a folder")


HEAT = ["solve", "heat2d", *TINY, "--out", "{new}"]

ROWS = [
    # --- data loss / corruption (the concurrency one is test_two_processes_one_folder) ---
    Row("fresh-solve-into-finished-run", ["solve", "heat2d", *TINY, "--out", "{run}"], "is not empty"),
    Row("typo-option-against-finished-run", ["solve", "heat2d", *TINY, "--out", "{run}", "--set", "method.options.nope=1"],
        "nope"),
    Row("resume-changes-curvature", ["solve", "--resume", "{run}", "--quiet", "--set", "method.options.curvature=gn"],
        "'method.options.curvature' would change"),
    Row("resume-flipped-checkpoint", ["solve", "--resume", "{run}", "--quiet"], "is corrupted", prepare=_flip_checkpoint),
    Row("resume-truncated-checkpoint", ["solve", "--resume", "{run}", "--quiet"], "truncated",
        prepare=_truncate_checkpoint(None)),
    Row("resume-empty-checkpoint", ["solve", "--resume", "{run}", "--quiet"], "is empty", prepare=_truncate_checkpoint(0)),
    # --- raw tracebacks before ---
    Row("negative-outer-lr", [*HEAT, "--set", "outer.lr=-1"], "'outer.lr' must be ≥ 0"),
    Row("param-wrong-type", [*HEAT, "--set", "params.nu=abc"], "parameter 'nu' expects float"),
    Row("huge-seed", [*HEAT, "--seed", "99999999999999999999999"], "'seed' must be an integer in"),
    Row("config-is-directory", [*HEAT, "--config", "cfgdir"], "is a directory", prepare=_config_dir),
    Row("config-not-utf8", [*HEAT, "--config", "bad.toml"], "not UTF-8", prepare=_config_binary),
    Row("out-is-a-file", ["solve", "heat2d", *TINY, "--out", "afile"], "is a file", prepare=_a_file),
    Row("out-under-a-file", ["solve", "heat2d", *TINY, "--out", "afile/run"], "which is a file", prepare=_a_file),
    Row("residual-raises", ["solve", "u_raise", *TINY, "--out", "{new}"], "pde",
        prepare=_write("u_raise", user_problem("u_raise", residual="raise ValueError('oops')"))),
    Row("residual-returns-none", ["solve", "u_none", *TINY, "--out", "{new}"], "pde",
        prepare=_write("u_none", user_problem("u_none", residual="return None"))),
    Row("target-wrong-size", ["solve", "u_target", *TINY, "--out", "{new}"], "target",
        prepare=_write("u_target", user_problem("u_target", target="x[:3, 0]"))),
    Row("vector-control-size-mismatch", ["solve", "u_vec", *TINY, "--out", "{new}"], "boundary",
        prepare=_write("u_vec", user_problem("u_vec", bvalue="CONTROL", nbnd=4, nctrl=3))),
    Row("make-returns-junk", ["solve", "u_junk", *TINY, "--out", "{new}"], "u_junk",
        prepare=_write("u_junk", "def make():\n    return 42\n")),
    Row("make-raises-for-params", ["solve", "u_ok", *TINY, "--out", "{new}", "--set", "params.k=2"], "k must be 1",
        prepare=_write("u_ok", user_problem("u_ok"))),
    Row("data-cleaning-n-train-too-large", ["solve", "data_cleaning", *TINY, "--out", "{new}", "--set",
                                            "params.n_train=100000"], "data_cleaning"),
    Row("parallel-broyden", [*HEAT, "--method", "broyden", "--parallel"], "", code=0,  # a good run (issue 20's fix)
        marks=[pytest.mark.slow]),
    Row("plot-run-without-rows", ["plot", "norows"], "nothing to plot", prepare=_empty_run),
    # --- silently accepted before ---
    Row("residual-scalar", ["solve", "u_scalar", *TINY, "--out", "{new}"], "pde",
        prepare=_write("u_scalar", user_problem("u_scalar", residual="return r.sum()"))),
    Row("residual-slice", ["solve", "u_slice", *TINY, "--out", "{new}"], "pde",
        prepare=_write("u_slice", user_problem("u_slice", residual="return r[:2]"))),
    Row("residual-two-columns", ["solve", "u_cols", *TINY, "--out", "{new}"], "pde",
        prepare=_write("u_cols", user_problem("u_cols", residual="return torch.stack([r, r], 1)"))),
    Row("vector-control-broadcast", ["solve", "u_bcast", *TINY, "--out", "{new}"], "boundary",
        prepare=_write("u_bcast", user_problem("u_bcast", bvalue="CONTROL", nbnd=4, nctrl=1))),
    Row("negative-outer-steps", [*HEAT, "--set", "outer.steps=-5"], "'outer.steps' must be > 0"),
    Row("zero-inner-steps", [*HEAT, "--set", "inner.steps=0"], "'inner.steps' must be > 0"),
    Row("negative-checkpoint-every", [*HEAT, "--set", "checkpoint_every=-1"], "'checkpoint_every' must be ≥ 0"),
    Row("negative-certify-every", [*HEAT, "--set", "certify_every=-2"], "'certify_every' must be ≥ 0"),
    Row("negative-viscosity", [*HEAT, "--set", "params.nu=-1"], "nu"),
    Row("reference-negative-viscosity", ["reference", "heat2d", "--nu", "-1"], "nu"),
    Row("resume-switches-method", ["solve", "--resume", "{run}", "--quiet", "--set", "method.name=broyden"],
        "'method.name' would change from 'nhgd' to 'broyden'"),
    # --- misleading before ---
    Row("bad-inner-optimizer", [*HEAT, "--set", "inner.optimizer=adamw"], "'inner.optimizer' must be one of"),
    Row("duplicate-name-asked-for", ["solve", "u_dup", *TINY, "--out", "{new}"], "'u_dup' is defined twice",
        prepare=lambda root: (_write("u_dup", user_problem("u_dup"))(root),
                              (root / "extra" / "u_dup.py").write_text(user_problem("u_dup", nbnd=2)))),
    Row("problem-file-exits", ["solve", "u_exit", *TINY, "--out", "{new}"], "sys.exit(3)",
        prepare=_write("u_exit", "import sys\nsys.exit(3)\n")),
    Row("unknown-method-option-new-folder", [*HEAT, "--set", "method.options.nope=1"], "nope"),
    # --- a few more a new user meets ---
    Row("resume-nothing-there", ["solve", "--resume", "{new}"], "no checkpoint at"),
    Row("unknown-outer-optimizer", [*HEAT, "--set", "outer.optimizer=lbfgsx"], "'outer.optimizer' must be one of"),
    Row("nan-learning-rate", [*HEAT, "--set", "inner.lr=NaN"], "'inner.lr' must be a finite number"),
    Row("bad-sampling-scheme", [*HEAT, "--set", "sampling.scheme=halton"], "'sampling.scheme' must be one of"),
]


@pytest.mark.parametrize("row", [pytest.param(row, id=row.id, marks=row.marks) for row in ROWS])
def test_bad_input_is_one_line_and_touches_nothing(row: Row, work: Path, capsys, monkeypatch):
    if row.prepare is not None:
        row.prepare(work)
    before = _digest(work / "run")
    argv = [a.replace("{run}", str(work / "run")).replace("{new}", str(work / "new")) for a in row.argv]
    code = main(argv)
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert "Traceback" not in out + err
    assert code == row.code, err
    if row.code == 2:
        assert len(lines) == 1 and lines[0].startswith("pinnctl: error: ") and row.match in lines[0], lines
    assert _digest(work / "run") == before, "the existing run folder was modified"
    if row.code != 0:
        assert not (work / "new").exists(), "a run folder was created for bad input"


# ----------------------------------------------------------------------------- run folders


def test_resume_rebuilds_a_deleted_run_file(finished, tmp_path):
    """run.h5 deleted: the checkpoint's config and history rebuild it, then the run continues."""
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    rows = runs.read(run)["history"]
    (run / runs.RUN_FILE).unlink()
    assert main(["solve", "--resume", str(run), "--quiet", "--set", "outer.steps=2"]) == 0
    data = runs.read(run)
    assert data["rows"] == 2 and data["attrs"]["status"] == "done" and data["attrs"]["config"]["outer"]["steps"] == 2
    for key, old in rows.items():  # the rebuilt first row is the original one, bit for bit
        np.testing.assert_array_equal(data["history"][key][:1], old[:1], err_msg=key)


def test_overwrite_replaces_the_run_and_default_names_never_collide(finished, tmp_path, monkeypatch):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    (run / "notes.txt").write_text("mine")
    old = checkpoint.load(run)["theta"]
    assert main(["solve", "heat2d", *TINY, "--out", str(run), "--overwrite", "--seed", "1"]) == 0
    assert not torch.equal(checkpoint.load(run)["theta"], old) and runs.read(run)["attrs"]["seed"] == 1
    assert (run / "notes.txt").read_text() == "mine"  # only a run's own files are replaced
    monkeypatch.chdir(tmp_path)
    base = Path("runs") / "x"
    first, second = runs.default_dir(base), runs.default_dir(base)
    assert (first.name, second.name) == ("x", "x-2")


def test_checkpoint_checksum_names_the_file(tmp_path):
    path = checkpoint.save(tmp_path / "c.pt", {"theta": torch.arange(4.0), "n": 3, "opt": {"lr": 0.1}})
    assert checkpoint.load(path)["n"] == 3
    payload = torch.load(path, weights_only=True)
    payload["theta"][1] = 7.0  # a changed tensor value with the old checksum
    torch.save(payload, path)
    with pytest.raises(Exception, match=r"c\.pt is corrupted"):
        checkpoint.load(path)


def test_interrupt_during_pretraining_does_not_promise_a_resume(tmp_path, monkeypatch, capsys):
    import pinnctl.bilevel as bl

    real, calls = bl.inner_step, {"n": 0}

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(bl, "inner_step", interrupted)
    out = tmp_path / "run"
    assert main(["solve", "heat2d", *TINY, "--out", str(out)]) == 130
    text = capsys.readouterr().out
    assert "nothing to resume" in text and "--resume" not in text
    assert json.loads((out / "summary.json").read_text())["status"] == "interrupted"
    assert runs.read(out)["attrs"]["status"] == "interrupted" and not (out / checkpoint.CHECKPOINT).exists()


def test_unexpected_error_during_a_run_is_one_line_and_closes_the_run(tmp_path, monkeypatch, capsys):
    """A bug surfacing mid-run: RunError (exit 1), status failed, summary.json, traceback kept in error.txt."""
    import pinnctl.bilevel as bl

    def broken(*args, **kwargs):
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr(bl, "inner_step", broken)
    out = tmp_path / "run"
    assert main(["solve", "heat2d", *TINY, "--out", str(out)]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "run failed: RuntimeError: boom" in lines[0] and "error.txt" in lines[0]
    assert json.loads((out / "summary.json").read_text())["status"] == "failed"
    assert runs.read(out)["attrs"]["status"] == "failed" and "Traceback" in (out / "error.txt").read_text()


def test_discovery_isolates_broken_and_duplicate_files(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "problems").mkdir()
    (tmp_path / "extra").mkdir()
    monkeypatch.setenv("PINNCTL_PROBLEMS", str(tmp_path / "extra"))
    _write("u_exit", "import sys\nsys.exit(3)\n")(tmp_path)
    _write("u_dup", user_problem("u_dup"))(tmp_path)
    (tmp_path / "extra" / "u_dup.py").write_text(user_problem("u_dup", nbnd=2))
    _write("u_ok", user_problem("u_ok"))(tmp_path)
    assert main(["list"]) == 1
    out, err = capsys.readouterr()
    assert "heat2d" in out and "u_ok" in out and "u_dup" not in out
    err = err.strip().splitlines()
    assert len(err) == 2 and "u_exit.py: called sys.exit(3)" in err[0] and "'u_dup' is defined twice" in err[1]


# ----------------------------------------------------------------------------- real processes


def _start(cwd: Path, out: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "pinnctl", "solve", "u_ok", "--preset", "smoke", "--quiet",
                             "--set", "pretrain.steps=2", "--set", "checkpoint_every=1", "--out", str(out), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=cwd)


def _wait_for_rows(proc: subprocess.Popen, out: Path, rows: int, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        try:
            if (out / runs.RUN_FILE).exists() and runs.read(out)["rows"] >= rows:
                return
        except Exception:
            pass
        time.sleep(0.5)
    proc.kill()
    pytest.fail(f"run did not reach {rows} rows")


def test_two_processes_one_folder_and_sigterm(tmp_path):
    """A second real process cannot write into a folder a run holds (one line naming the pid),
    and SIGTERM then stops the holder like Ctrl-C: final checkpoint, status, summary, exit 143."""
    (tmp_path / "problems").mkdir()
    _write("u_ok", user_problem("u_ok"))(tmp_path)  # tiny and without a reference: the processes start fast
    out = tmp_path / "run"
    first = _start(tmp_path, out, "--set", "outer.steps=100000")
    try:
        _wait_for_rows(first, out, 1)
        second = subprocess.run([sys.executable, "-m", "pinnctl", "solve", "u_ok", "--preset", "smoke", "--quiet",
                                 "--out", str(out), "--overwrite", "--seed", "1"], capture_output=True, text=True,
                                env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300, cwd=tmp_path)
        lines = second.stderr.strip().splitlines()
        assert second.returncode == 2 and len(lines) == 1, second.stderr
        assert f"is in use by another pinnctl run (pid {first.pid})" in lines[0]
        first.send_signal(signal.SIGTERM)
        _, err = first.communicate(timeout=300)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 143 and "Traceback" not in err and err.strip().splitlines()[-1] == "pinnctl: terminated"
    data = runs.read(out)
    steps = data["rows"]
    assert data["attrs"]["status"] == "interrupted" and steps >= 1 and int(data["attrs"]["seed"]) == 0
    assert set(data["history"]["step"].tolist()) == set(range(steps))  # one seed's rows, in order, no interleaving
    # the last completed step (one less when SIGTERM fell between a row's append and its checkpoint:
    # resume then drops that row)
    assert checkpoint.load(out)["outer_step"] in (steps - 1, steps)
    assert json.loads((out / "summary.json").read_text())["status"] == "interrupted"
    assert not (out / runs.LOCK_FILE).exists()


@pytest.mark.slow
def test_ctrl_c_in_parallel_mode_is_quiet(tmp_path):
    """Ctrl-C reaches the whole process group (rank 0 and the worker): one line, no traceback, no process left."""
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "pinnctl", "solve", "heat2d", "--preset", "smoke", "--quiet",
                             "--parallel", "--set", "parallel.threads=1", "--set", "pretrain.steps=2",
                             "--set", "certify_every=0", "--set", "outer.steps=100000", "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        _wait_for_rows(proc, out, 1)
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130 and "Traceback" not in err, err
    assert runs.read(out)["attrs"]["status"] == "interrupted"
    time.sleep(1.0)
    with pytest.raises(ProcessLookupError):
        os.killpg(proc.pid, 0)  # the worker is gone too
