"""The gallery's per-image numbers on hand-made Datasets, its command-line flags, and both figures from a real store."""

import numpy as np
import pytest
import xarray as xr

from spell_lab.analysis import gallery as g
from spell_lab.analysis import sparsity as sp
from spell_lab.analysis import sparsity_figures as spf
from conftest import make_group, pattern, synthetic_run, write_store


def pair():
    """Three SPELL samples (seeds 7, 8, 9) and a baseline holding seeds 9 and 7 (in that order), not 8.
    x0 differ from the baseline's by (3, 4) -> 5 for seed 7, and not at all for seed 9."""
    ds = make_group({"batch": pattern([[0, 2], [], [1]], N=4)}, seed=[7, 8, 9], x0=False)
    base = make_group({"batch": np.zeros((2, 4), int)}, seed=[9, 7], x0=False)
    ds = ds.assign(x0=(("sample", "dim"), np.array([[3.0, 4.0], [1.0, 1.0], [2.0, 2.0]])))
    base = base.assign(x0=(("sample", "dim"), np.array([[2.0, 2.0], [0.0, 0.0]])))
    return ds, base


def test_moved_from_baseline_and_active_steps():
    ds, base = pair()
    np.testing.assert_array_equal(g.baseline_partner(ds, base), [1, -1, 0])
    np.testing.assert_allclose(g.moved_from_baseline(ds, base), [5.0, np.nan, 0.0])
    np.testing.assert_array_equal(g.active_steps(ds), [2, 0, 1])
    np.testing.assert_array_equal(g.is_unmoved(g.moved_from_baseline(ds, base), ds), [False, False, True])
    other = base.assign(condition=("sample", [1, 1]))  # same seeds, other condition: no partner
    assert np.isnan(g.moved_from_baseline(ds, other)).all()


def test_delta_text_and_memory_only():
    assert g.delta_text(3.21, 7) == "Δ 3.2 · 7 steps" and g.delta_text(0.0123, 1) == "Δ 0.012 · 1 step"
    assert g.delta_text(np.nan, 2) == "Δ ? · 2 steps" and g.delta_text(None, 2) == "2 steps"
    ds = make_group({"batch": pattern([[], [], [0]], N=2)}, rnd=[0, 0, 1], measure_from_round=1)
    np.testing.assert_array_equal(g.memory_only(ds), [True, True, False])


def test_gallery_selection_defaults_and_errors():
    run = synthetic_run(("intra", "iterative"), steps=4, conditions=3, per_round=2)
    assert g.gallery_selection(run) == ("iterative", [0, 1])
    assert g.gallery_selection(run, "intra", ["2", "one"]) == ("intra", [2, 1])  # by value or name
    with pytest.raises(ValueError, match="no setup 'nope'.*intra"):
        g.gallery_selection(run, "nope")
    with pytest.raises(ValueError, match="no setup 'baseline'"):
        g.gallery_selection(run, "baseline")
    with pytest.raises(ValueError, match="no condition '7'.*0, 1, 2"):
        g.gallery_selection(run, None, ["7"])


def test_condition_labels_come_from_the_group_then_the_model():
    spec = {"name": "fashion"}  # a group's model attribute, as the store writes it
    assert g.condition_label(0, {"model": spec, "condition_names": None}) == "T-shirt/top"  # the registry's
    assert g.condition_label(9, {"model": "fashion"}) == "Ankle boot"
    assert g.condition_label(1, {"model": "fashion", "condition_names": ["a", "b"]}) == "b"  # the run's own names win
    assert g.condition_label(3, {"model": "digits"}) == "condition 3"  # a model without names: the number
    assert g.condition_label(3, {"model": "some/hub-model"}) == "condition 3"
    assert g.condition_label(12, {"model": spec}) == "condition 12"  # beyond the names: the number
    assert g.condition_label(2) == "condition 2"


def test_tiny_change_reads_as_tiny():
    run = synthetic_run(("mixed",), steps=4, conditions=1, per_round=4, rounds=1)
    ds = run["mixed"]
    x0 = run["baseline"]["x0"].values.copy()
    x0[0] += 1e-3  # intervened, but barely moved
    run["mixed"] = ds.assign(x0=(ds["x0"].dims, x0), intervened=("sample", np.ones(4, bool)))
    fig = g.plot_gallery(run)
    labels = [a.get_xlabel() for a in fig.axes if a.spines["top"].get_visible()]
    assert len(labels) == 4 and labels[0].startswith("Δ 0.0")
    assert "barely changed" in fig._supxlabel.get_text()


def test_cli_gallery_flags(tmp_path, capsys):
    run_dir = write_store(synthetic_run(("iterative", "intra"), steps=4, conditions=3, per_round=2), tmp_path / "r")
    assert sp.main([str(run_dir), "--wandb", "disabled", "--gallery", "intra", "--classes", "2", "0"]) == 0
    assert (run_dir / "figures" / "gallery.png").exists()
    capsys.readouterr()
    for bad, word in ((["--gallery", "nope"], "nope"), (["--classes", "9"], "'9'")):
        (run_dir / "figures" / "gallery.png").unlink(missing_ok=True)
        assert sp.main([str(run_dir), "--wandb", "disabled", *bad]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and word in err and "\n" not in err
        assert not (run_dir / "figures" / "gallery.png").exists()  # refused before writing anything


@pytest.mark.e2e
def test_figures_from_a_real_digits_store(tmp_path):
    from spell_lab.experiments import sparsity as exp

    out = tmp_path / "run"
    assert exp.main(["--model", "digits", "--quick", "--steps", "4", "--setups", "iterative", "--classes", "3", "5",
                     "--out", str(out), "--wandb", "disabled", "--no_progress"]) == 0
    datasets = sp.load_run(out)
    fig = g.plot_gallery(datasets, conditions=["5"])
    assert "drawn once" in fig._supxlabel.get_text()
    outlined = [a for a in fig.axes if a.images and a.spines["top"].get_visible()]
    assert outlined and all(a.get_xlabel().startswith("Δ ") for a in outlined)
    share = spf.plot_active_share(datasets)
    assert share.legends and not share.axes[0].get_legend()  # the legend sits outside the axes
    for name, f in (("gallery", fig), ("active_share", share)):
        assert spf.plots.save(f, tmp_path / "figs", name)["png"].stat().st_size > 1000
