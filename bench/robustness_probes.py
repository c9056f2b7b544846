"""Re-measure issue 21's counts: each bad-input row of tests/test_robustness.py, run through the CLI
in-process, classified as a clear error, a traceback, silently accepted, or data loss.

    python bench/robustness_probes.py            # writes bench/results/robustness_probes.json

A row is *data loss* when the existing run folder changed, *traceback* when an exception escaped
``pinnctl.cli.main`` or a traceback was printed, *silent* when bad input exited 0, and *clear*
when it exited non-zero with one line on stderr. Anything else is *other*, for example several
lines or the wrong exit code. The signal and two-process cases are real-process tests in
tests/test_robustness.py and are not probed here.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _rows():
    spec = importlib.util.spec_from_file_location("robustness_rows", HERE.parent / "tests" / "test_robustness.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look themselves up there
    spec.loader.exec_module(module)
    return module


def probe(row, root: Path, finished: Path, mod) -> dict:
    from pinnctl.cli import main

    work = root / row.id
    (work / "problems").mkdir(parents=True)
    (work / "extra").mkdir()
    shutil.copytree(finished, work / "run")
    os.environ["PINNCTL_PROBLEMS"] = str(work / "extra")
    cwd = os.getcwd()
    os.chdir(work)
    try:
        if row.prepare is not None:
            row.prepare(work)
        before = mod._digest(work / "run")
        argv = [a.replace("{run}", str(work / "run")).replace("{new}", str(work / "new")) for a in row.argv]
        out, err, escaped = io.StringIO(), io.StringIO(), None
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(argv)
            except BaseException as e:  # what a user would see as a traceback
                code, escaped = 1, f"{type(e).__name__}: {e}"
        lines = err.getvalue().strip().splitlines()
        changed = mod._digest(work / "run") != before
    finally:
        os.chdir(cwd)
    if changed:
        kind = "data-loss"
    elif escaped or "Traceback" in out.getvalue() + err.getvalue():
        kind = "traceback"
    elif code == 0 and row.code != 0:
        kind = "silent"
    elif code != 0 and len(lines) == 1:
        kind = "clear"
    else:
        kind = "other"
    return {"row": row.id, "kind": kind, "exit": code, "stderr": lines[-1][:200] if lines else (escaped or ""),
            "left_folder": (work / "new").exists()}


def main() -> None:
    mod = _rows()
    from pinnctl.cli import main as cli

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        finished = root / "finished"
        with contextlib.redirect_stdout(io.StringIO()):
            assert cli(["solve", "heat2d", *mod.TINY, "--out", str(finished)]) == 0
        results = [probe(row, root, finished, mod) for row in mod.ROWS if row.id != "parallel-broyden"]
    counts = {k: sum(r["kind"] == k for r in results) for k in ("clear", "traceback", "silent", "data-loss", "other")}
    out = HERE / "results" / "robustness_probes.json"
    out.parent.mkdir(exist_ok=True)
    left = sum(r["left_folder"] for r in results)
    out.write_text(json.dumps({"probes": len(results), "counts": counts, "left_a_run_folder": left, "rows": results},
                              indent=1))
    for r in results:
        print(f"{r['kind']:<10} exit {r['exit']}  {r['row']:<36} {r['stderr'][:110]}")
    print(f"{len(results)} probes: " + ", ".join(f"{v} {k}" for k, v in counts.items())
          + f"; {left} left a run folder behind  ({out})")


if __name__ == "__main__":
    sys.exit(main())
