"""The model registry: a built-in model is one entry. Lookups, their errors, lazy loading, and a fake model added
by one entry that runs through `sparsity --quick` and `radius --quick` end to end without any other change."""

import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import ROOT

from spell_lab.experiments import radius, sparsity
from spell_lab.experiments.common import run_cli
from spell_lab.models import registry
from spell_lab.models.gmm import GaussianMixture, mixture_samples
from spell_lab.models.registry import ModelEntry
from spell_lab.store import open_run


def test_an_unknown_name_lists_the_registered_ones():
    with pytest.raises(ValueError, match="unknown built-in model 'nope'; registered: gmm, digits"):
        registry.load_model("nope")
    with pytest.raises(ValueError, match="held-out real data, which exists for the built-in models gmm, digits"):
        registry.require_reference("nope", "the radius ablation")


def test_importing_the_registry_imports_no_model():
    code = ("import sys, spell_lab.models, spell_lab.experiments.common; "
            "print(sorted(m for m in sys.modules if m.startswith('spell_lab.models.') or m == 'spell_lab.metrics'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True).stdout
    assert out.strip() == "['spell_lab.models.base', 'spell_lab.models.builtin', 'spell_lab.models.registry']"


def test_entries_declare_what_the_experiments_looked_up():
    assert registry.default_name() == "fashion" and registry.with_reference() == ("gmm", "digits", "fashion")
    assert registry.selected_radius("digits") == 26.11
    with pytest.raises(ValueError, match="has no selected radius .*selects 0"):
        registry.selected_radius("gmm")
    assert registry.condition_fidelity("gmm") is None and callable(registry.condition_fidelity("digits"))
    assert callable(registry.condition_fidelity("fashion"))


def test_a_name_is_registered_once_and_one_entry_is_the_default(monkeypatch):
    monkeypatch.setattr(registry, "MODELS", dict(registry.MODELS))
    with pytest.raises(ValueError, match="registered already"):
        registry.register(ModelEntry("gmm", load=GaussianMixture))
    with pytest.raises(ValueError, match="'fashion' is"):
        registry.register(ModelEntry("other", load=GaussianMixture, default=True))


# --- a fake built-in model: one entry ----------------------------------------------------------------------------


def fake_mixture(device="cpu"):
    return GaussianMixture(num_classes=3, components=2, shape=(2, 4), spread=3.0, std=0.3, seed=5).to(device)


@pytest.fixture
def fake_model(monkeypatch):
    monkeypatch.setattr(registry, "MODELS", dict(registry.MODELS))  # the entry leaves with the test
    registry.register(ModelEntry(
        name="fake", load=fake_mixture, features="spell_lab.metrics.features:RawFeatures",
        reference=lambda conditions, per_condition, seed: mixture_samples(fake_mixture(), conditions, per_condition, seed),
        selected_radius=1.5, radius_source="made up for the test"))
    return "fake"


@pytest.mark.e2e
def test_a_fake_model_runs_sparsity_and_radius_end_to_end(fake_model, tmp_path):
    common = ["--model", fake_model, "--quick", "--devices", "1", "--wandb", "disabled", "--no_progress"]
    assert run_cli(sparsity.main, [*common, "--radius", "2", "--setups", "iterative", "--out", str(tmp_path / "s")]) == 0
    groups = open_run(tmp_path / "s")
    assert set(groups) == {"iterative", "baseline"}
    assert groups["iterative"]["x0"].shape[1:] == (2, 4) and groups["iterative"].attrs["model"]["name"] == "fake"
    assert bool(groups["iterative"]["intervened"].any())
    assert run_cli(radius.main, [*common, "--out", str(tmp_path / "r")]) == 0
    table = (tmp_path / "r" / "figures" / "radius_table.csv").read_text().splitlines()
    assert len(table) == 1 + 4 and table[0].startswith("group,radius,")  # the 4 quick radii, 0 first
    x0 = open_run(tmp_path / "r")["r00"]["x0"].values
    assert np.isfinite(x0).all() and torch.as_tensor(x0).shape[1:] == (2, 4)
