"""The disk memo of reference computations: hits return the stored value exactly, and a change of
arguments or of the solver's source recomputes instead of reading a stale value."""

import importlib
import sys

import numpy as np
import pytest

from pinnctl import diskcache

SOLVER = '''
import numpy as np
from pinnctl.diskcache import disk_cached

CALLS = []

@disk_cached
def system(n, scale=1.0):
    CALLS.append(n)
    a = np.random.default_rng(n).standard_normal((n, n)) * scale
    return a, float(np.trace(a)), n, True
'''


def _load(tmp_path, text, name="cached_solver"):
    (tmp_path / f"{name}.py").write_text(text)
    sys.path.insert(0, str(tmp_path))
    try:
        sys.modules.pop(name, None)
        importlib.invalidate_caches()
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(tmp_path))


def test_hit_returns_the_stored_value_with_its_types(tmp_path, monkeypatch):
    monkeypatch.setenv("PINNCTL_CACHE", str(tmp_path / "cache"))
    mod = _load(tmp_path, SOLVER)
    first = mod.system(5, scale=2.0)
    again = _load(tmp_path, SOLVER)  # a new process's view: the module's own memo is gone
    second = again.system(5, scale=2.0)
    assert again.CALLS == []  # read from disk, not computed
    assert np.array_equal(first[0], second[0]) and second[1:] == first[1:]
    assert [type(x) for x in second] == [np.ndarray, float, int, bool]
    again.system(6, scale=2.0)
    again.system(5, scale=3.0)
    assert again.CALLS == [6, 5]  # other arguments: other entries


def test_a_changed_solver_recomputes(tmp_path, monkeypatch):
    monkeypatch.setenv("PINNCTL_CACHE", str(tmp_path / "cache"))
    _load(tmp_path, SOLVER).system(4)
    edited = _load(tmp_path, SOLVER.replace("* scale", "* scale * 2"))
    out = edited.system(4)
    assert edited.CALLS == [4]
    assert np.allclose(out[0], 2 * np.random.default_rng(4).standard_normal((4, 4)))


def test_corrupt_entry_and_unwritable_or_disabled_cache_still_compute(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("PINNCTL_CACHE", str(cache))
    mod = _load(tmp_path, SOLVER)
    ref = mod.system(3)
    (entry,) = cache.iterdir()
    entry.write_bytes(b"not an npz")
    assert np.array_equal(_load(tmp_path, SOLVER).system(3)[0], ref[0])
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("PINNCTL_CACHE", str(blocker / "below"))  # cannot be created
    assert np.array_equal(_load(tmp_path, SOLVER).system(3)[0], ref[0])
    monkeypatch.setenv("PINNCTL_CACHE", "off")
    assert diskcache.cache_dir() is None
    fresh = _load(tmp_path, SOLVER)
    fresh.system(3), fresh.system(3)
    assert fresh.CALLS == [3, 3]


def test_results_must_be_arrays_and_numbers(tmp_path, monkeypatch):
    monkeypatch.setenv("PINNCTL_CACHE", str(tmp_path / "cache"))
    bad = diskcache.disk_cached(lambda: {"a": 1})
    with pytest.raises(TypeError, match="arrays and numbers"):
        bad()


def test_heat2d_optimum_from_the_cache_equals_the_computed_one(tmp_path, monkeypatch):
    """The bundled use: J* and f* read back in a fresh memo are the computed ones, bit for bit."""
    heat2d = pytest.importorskip("pinnctl.reference.heat2d")
    monkeypatch.setenv("PINNCTL_CACHE", str(tmp_path / "cache"))
    computed = heat2d._optimal_nodes.__wrapped__(0.001, "grid", 41)
    heat2d._optimal_nodes(0.001, "grid", 41)  # stores
    stored = heat2d._optimal_nodes(0.001, "grid", 41)  # reads
    assert np.array_equal(stored, computed)
    assert len(list((tmp_path / "cache").iterdir())) == 1
