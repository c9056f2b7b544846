"""The notebooks: the stored .ipynb match their jupytext sources, carry figures from a real run,
and execute end to end in smoke mode with nbclient (so they never rot)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from pinnctl import PinnctlError
from pinnctl.data import find_file

nbformat = pytest.importorskip("nbformat")
jupytext = pytest.importorskip("jupytext")
pytest.importorskip("nbclient")

FOLDER = Path(__file__).resolve().parents[1] / "notebooks"
spec = importlib.util.spec_from_file_location("regenerate", FOLDER / "regenerate.py")
regenerate = importlib.util.module_from_spec(spec)
spec.loader.exec_module(regenerate)


def _has_mnist() -> bool:
    try:
        find_file("mnist", "train-images-idx3-ubyte")
        return True
    except PinnctlError:
        return False


def _images(nb) -> int:
    return sum("image/png" in out.get("data", {}) or "<img src='data:image/png" in out.get("data", {}).get("text/html", "")
               for cell in nb.cells if cell.cell_type == "code" for out in cell.get("outputs", []))


def _errors(nb) -> list[str]:
    return [out.get("ename", "") for cell in nb.cells if cell.cell_type == "code"
            for out in cell.get("outputs", []) if out.get("output_type") == "error"]


@pytest.mark.parametrize("name", regenerate.NOTEBOOKS)
def test_stored_notebook_matches_its_source_and_has_figures(name):
    stored = nbformat.read(FOLDER / f"{name}.ipynb", as_version=4)
    source = jupytext.read(FOLDER / f"{name}.py")
    assert [c.source for c in stored.cells] == [c.source for c in source.cells], "run notebooks/regenerate.py"
    assert all(c.get("execution_count") for c in stored.cells if c.cell_type == "code"), "stored without outputs"
    assert _images(stored) >= 1 and not _errors(stored)


@pytest.mark.parametrize("name", regenerate.NOTEBOOKS)
def test_notebook_executes_in_smoke_mode(name, tmp_path, monkeypatch):
    if name == "classification" and not _has_mnist():
        pytest.skip("MNIST IDX files not found (set $PINNCTL_DATA)")
    monkeypatch.chdir(tmp_path)
    nb = regenerate.execute(name, smoke=True, workdir=tmp_path, timeout=600)
    assert not _errors(nb) and _images(nb) >= 1
    assert sorted(p.name for p in (tmp_path / f"runs-{name}").iterdir() if p.is_dir())
