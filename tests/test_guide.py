"""docs/define-a-problem.md works verbatim: its file is written, its commands are run in order."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "define-a-problem.md"


def blocks(text: str, marker: str) -> list[tuple[str, str]]:
    return re.findall(rf"<!-- {marker}:?[ ]*([^>]*?) -->\n```\w*\n(.*?)```", text, flags=re.S)


def test_guide_walkthrough_runs_verbatim(tmp_path):
    text = GUIDE.read_text()
    files = blocks(text, "file")
    commands = [body for _, body in blocks(text, "run")]
    assert [name for name, _ in files] == ["problems/heat1d.py", "problems/plate.py", "problems/osc.py"]
    assert len(commands) == 5
    for name, body in files:
        assert len(body.splitlines()) <= 40  # the promise: a problem in ≤ 40 lines
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(body)
    pinnctl = shutil.which("pinnctl") or str(Path(sys.executable).parent / "pinnctl")
    env = {**os.environ, "PATH": f"{Path(pinnctl).parent}{os.pathsep}{os.environ['PATH']}", "OMP_NUM_THREADS": "1"}
    outputs = [subprocess.run(["bash", "-c", cmd], cwd=tmp_path, env=env, capture_output=True, text=True) for cmd in commands]
    for cmd, out in zip(commands, outputs):
        assert out.returncode == 0, f"{cmd}\n{out.stderr[-2000:]}"
    assert re.search(r"^heat1d\s+1-D heat equation", outputs[0].stdout, flags=re.M)
    assert "outer   10" in outputs[1].stdout
    for png in ("objective.png", "loss_terms.png", "control.png"):
        assert (tmp_path / "runs" / "heat1d" / png).stat().st_size > 10_000
    # the boundary control: certified through the file's own reference, and it falls below J(v = 0)
    import json

    import numpy as np

    plate = json.loads((tmp_path / "runs" / "plate" / "summary.json").read_text())
    grid = np.stack(np.meshgrid(np.linspace(0, 1, 11), np.linspace(0, 1, 11), indexing="ij"), -1).reshape(-1, 2)
    k = np.array([1, 2])
    z = (np.sin(np.pi * np.outer(grid[:, 0], k)) * np.sinh(np.pi * np.outer(grid[:, 1], k)) / np.sinh(np.pi * k)) @ [1, -0.5]
    assert plate["J_star"] == 0.0 and plate["certified"]["grid"] < 0.9 * np.mean(z**2)
    # the system: one loss term per residual component
    assert "pde.a=" in outputs[4].stdout and "pde.b=" in outputs[4].stdout


def test_template_builds_and_compiles():
    """problems/_template.py is a valid problem as shipped (discovery skips it by its "_")."""
    import importlib.util

    import torch

    from pinnctl.problem import compile_problem

    path = GUIDE.parents[1] / "problems" / "_template.py"
    spec = importlib.util.spec_from_file_location("template", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    prob = compile_problem(module.make(nu=0.2), seed=0)
    loss = prob.inner_loss(prob.theta0, prob.v0, prob.sample(0))
    assert torch.isfinite(loss) and set(prob.inner_terms(prob.theta0, prob.v0, prob.sample(0))) == {"pde", "left", "right", "initial"}
