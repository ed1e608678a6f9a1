"""Each experiments/NAME.yaml states the entry point's defaults: parsing with it equals parsing without it."""

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["sparsity", "baselines", "diversity", "protection"])
def test_yaml_equals_defaults(name):
    import importlib

    mod = importlib.import_module(f"spell_lab.experiments.{name}")
    parser = mod.parser()
    plain = parser.parse_args([])
    with_yaml = parser.parse_args(["--config", str(ROOT / "experiments" / f"{name}.yaml")])
    a, b = plain.as_dict(), with_yaml.as_dict()
    a.pop("config", None), b.pop("config", None)
    assert a == b


def test_flags_override_the_yaml():
    from spell_lab.experiments import sparsity

    cfg = sparsity.parser().parse_args(["--config", str(ROOT / "experiments" / "sparsity.yaml"), "--radius", "12"])
    assert cfg.radius == 12.0 and cfg.overcomp == 1.6
