"""Build the notebooks from their jupytext sources and execute them with nbclient.

    python notebooks/regenerate.py            # real (short) runs; writes notebooks/*.ipynb with outputs
    python notebooks/regenerate.py --smoke    # tiny budgets, outputs discarded (what the tests do)
    python notebooks/regenerate.py --reuse compare_broyden   # keep its finished runs (after a later cell failed)

The ``.py`` files (py:percent) are the sources; the ``.ipynb`` files are what users open, with
the outputs of the last real run. Runs go to runs/notebook-* under the working directory.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
NOTEBOOKS = ("compare_broyden", "define_a_problem", "classification")


def execute(name: str, *, smoke: bool, workdir: Path, timeout: int = 3600, reuse: bool = False):
    """The notebook ``name`` built from its source and executed in ``workdir`` (``reuse``: a
    notebook that supports it keeps the finished runs of an earlier execution)."""
    import jupytext
    from nbclient import NotebookClient

    nb = jupytext.read(HERE / f"{name}.py")
    env = {"PINNCTL_SMOKE": "1" if smoke else "0", "PINNCTL_REUSE": "1" if reuse else "0"}
    if smoke:
        env["PINNCTL_NOTEBOOK_OUT"] = str(workdir / f"runs-{name}")
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the kernel inherits this process's environment
    try:
        NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(workdir)}}).execute()
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return nb


def tidy(nb) -> None:
    """Stored outputs as a notebook front-end shows them: consecutive stream outputs joined,
    progress-bar redraws (carriage returns) reduced to their last state."""
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        merged: list = []
        for out in cell.outputs:
            if out.output_type == "stream" and merged and merged[-1].output_type == "stream" and merged[-1].name == out.name:
                merged[-1].text += out.text
            else:
                merged.append(out)
        for out in merged:
            if out.output_type == "stream":
                out.text = "\n".join(line.rstrip().rsplit("\r", 1)[-1] for line in out.text.split("\n"))
        cell.outputs = merged


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", default=list(NOTEBOOKS), help="notebooks to build (default: all)")
    parser.add_argument("--smoke", action="store_true", help="tiny budgets; do not write the .ipynb files")
    parser.add_argument("--reuse", action="store_true", help="keep finished runs of an earlier execution (where supported)")
    args = parser.parse_args(argv)
    import jupytext

    for name in args.names:
        nb = execute(name, smoke=args.smoke, workdir=Path.cwd(), reuse=args.reuse)
        if not args.smoke:
            tidy(nb)
            jupytext.write(nb, HERE / f"{name}.ipynb")
            print(f"wrote {HERE / f'{name}.ipynb'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
