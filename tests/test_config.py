"""Config: presets, --set overrides, TOML, and one-line errors naming the key."""

import pytest

from pinnctl import PinnctlError
from pinnctl.config import parse_sets, resolve


def test_defaults_presets_and_overrides(tmp_path):
    paper = resolve("paper")
    assert (paper.pretrain.steps, paper.inner.steps, paper.outer.steps, paper.outer.lr, paper.outer.clip) == (2000, 50, 500, 0.01, 0.1)
    quick = resolve("quick", sets=parse_sets(["inner.steps=7", "outer.lr=0.5", "method.options.curvature=gn", "params.nu=0.01"]))
    assert quick.inner.steps == 7 and quick.outer.lr == 0.5 and quick.outer.steps < paper.outer.steps
    assert quick.method.options == {"curvature": "gn", "every": 5, "warm_start": True} and quick.params == {"nu": 0.01}
    toml = tmp_path / "run.toml"
    toml.write_text('seed = 3\n[inner]\nsteps = 9\n[method]\nname = "exact"\n[method.options]\ntol = 1e-6\n')
    cfg = resolve("quick", toml, parse_sets(["inner.steps=11"]))
    assert cfg.seed == 3 and cfg.inner.steps == 11 and cfg.method.name == "exact" and cfg.method.options == {"tol": 1e-6}


@pytest.mark.parametrize(
    "sets, match",
    [
        (["inner.stepz=5"], "unknown config key 'inner.stepz'"),
        (["inner.steps=fast"], "config key 'inner.steps' expects int"),
        (["outer.lr=true"], "config key 'outer.lr' expects float"),
        (["inner=3"], "is a section"),
        (["nonsense"], "expects key=value"),
    ],
)
def test_bad_overrides(sets, match):
    with pytest.raises(PinnctlError, match=match):
        resolve("quick", sets=parse_sets(sets))


def test_bad_preset_and_toml(tmp_path):
    with pytest.raises(PinnctlError, match="unknown preset 'fast'; known: paper, quick"):
        resolve("fast")
    bad = tmp_path / "bad.toml"
    bad.write_text("[inner\n")
    with pytest.raises(PinnctlError, match="not valid TOML"):
        resolve("quick", bad)
    with pytest.raises(PinnctlError, match="config file not found"):
        resolve("quick", tmp_path / "missing.toml")
