"""spell_lab.analysis.sparsity on small synthetic Datasets with hand-known answers (store contract, docs/design.md s.5)."""

import json
import math

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from spell_lab.analysis import activity as act
from spell_lab.analysis import load
from spell_lab.analysis import sparsity as sp
from spell_lab.analysis import sparsity_figures as spf

from conftest import make_group, pattern, synthetic_run, write_store

# The hand-checked fixture: t = 1.0, 0.9, ..., 0.1 (step i has t = 1 - 0.1 i)
#   s0 active steps 0-3 (batch);  s1 steps 0-1 (memory x2) and 5 (protected): a restart;
#   s2 never;  s3 all steps (batch + memory).
ACT = pattern([range(4), [0, 1, 5], [], range(10)])
REL = np.zeros((4, 10))
REL[0, :4] = [0.01, 0.02, 0.03, 0.04]
REL[1, [0, 1, 5]] = [0.2, 0.3, 0.04]
REL[3] = 0.1
REL[3, 0] = 0.5


@pytest.fixture
def four():
    batch = np.zeros((4, 10), int)
    memory = np.zeros((4, 10), int)
    protected = np.zeros((4, 10), int)
    batch[0, :4] = 1
    memory[1, [0, 1]] = 2
    protected[1, 5] = 1
    batch[3] = 1
    memory[3] = 1
    return make_group({"batch": batch, "memory": memory, "protected": protected}, REL)


def test_active_share_per_step(four):
    np.testing.assert_allclose(act.active_share(four).values, np.array([3, 3, 2, 2, 1, 2, 1, 1, 1, 1]) / 4)
    assert act.active_share(four)["t"].values[0] == 1.0  # t travels with the curve


def test_active_at_nearest_t(four):
    assert act.active_at(four, 0.8) == 0.5  # step 2: s0, s3
    assert act.active_at(four, 0.6) == 0.25  # step 4: s3
    coarse = make_group({"batch": ACT[:, :5]}, t=[1.0, 0.75, 0.5, 0.25, 0.0])
    assert act.nearest_step(coarse, 0.8) == 1 and act.nearest_step(coarse, 0.6) == 2


def test_active_at_a_noise_level(four):
    """The step nearest sigma/alpha in log scale (make_group: sigma = t, alpha = sqrt(1 - t^2))."""
    assert act.nearest_noise_step(four, 0.8 / 0.6) == 2 and act.active_at_noise(four, 0.8 / 0.6) == 0.5
    assert act.nearest_noise_step(four, 100.0) == 1  # t = 1 has alpha 0: infinitely far in log scale
    ends = make_group({"batch": ACT[:, :5]}, t=[1.0, 0.75, 0.5, 0.25, 0.0])
    assert act.nearest_noise_step(ends, 1e-9) == 3  # sigma 0 at the end is never the nearest
    from spell_lab.schedules import paper_noise_levels

    assert {t: round(v, 2) for t, v in paper_noise_levels().items()} == {0.8: 5.11, 0.6: 2.28}


def test_repeated_t_takes_first_step():
    heun = make_group({"batch": pattern([[3], [3], [4], []], N=6)}, t=[1.0, 0.9, 0.9, 0.8, 0.8, 0.7])
    assert act.nearest_step(heun, 0.8) == 3
    assert act.active_at(heun, 0.8) == 0.5
    assert act.last_active_t(heun).values[2] == 0.8


def test_last_active_t_and_stops(four):
    np.testing.assert_allclose(act.last_active_t(four).values, [0.7, 0.5, np.nan, 0.1])
    np.testing.assert_array_equal(act.last_active_step(four).values, four["last_active_step"].values)
    np.testing.assert_array_equal(act.active_runs(four).values, [1, 2, 0, 1])
    assert act.stops_for_good(four) == pytest.approx(2 / 3)
    np.testing.assert_allclose(act.stopped_share(four).values, [0, 0, 0, 0, 1 / 3, 1 / 3, 2 / 3, 2 / 3, 2 / 3, 2 / 3])


def test_quantiles_active_vs_all(four):
    qa = sp.relative_magnitude_quantiles(four, (0.1, 0.5, 0.9), "active")
    assert qa.dims == ("quantile", "step")
    # step 0, active: [0.01, 0.2, 0.5] -> median 0.2, q0.1 = 0.01 + 0.2 * (0.2 - 0.01) (linear interpolation)
    assert qa.sel(quantile=0.5).values[0] == pytest.approx(0.2)
    assert qa.sel(quantile=0.1).values[0] == pytest.approx(0.048)
    assert qa.sel(quantile=0.5).values[5] == pytest.approx(0.07)  # s1 0.04 and s3 0.1
    qall = sp.relative_magnitude_quantiles(four, (0.5,), "all")
    assert qall.values[0, 0] == pytest.approx(0.105)  # [0, 0.01, 0.2, 0.5]
    np.testing.assert_allclose(sp.relative_magnitude_max(four).values[:2], [0.5, 0.3])
    with pytest.raises(ValueError, match="active"):
        sp.relative_magnitude_quantiles(four, over="some")


def test_quantile_is_nan_where_nothing_active():
    ds = make_group({"batch": pattern([[0], [0]], N=3)}, rel=[[0.1, 0, 0], [0.3, 0, 0]])
    q = sp.relative_magnitude_quantiles(ds, (0.5,))
    assert q.values[0, 0] == pytest.approx(0.2) and np.isnan(q.values[0, 1:]).all()


def test_active_by_source(four):
    mean = act.active_by_source(four)
    np.testing.assert_allclose(mean.sel(source="batch").values[0], 0.5)
    np.testing.assert_allclose(mean.sel(source="memory").values[0], 0.75)
    np.testing.assert_allclose(mean.sum("source").values, four["active_shields"].mean("sample").values)
    share = act.active_by_source(four, "share")
    np.testing.assert_allclose(share.sel(source="memory").values[:2], [0.5, 0.5])
    assert share.sel(source="protected").values[5] == 0.25


def test_summary_known_values(four):
    s = sp.summary(four)
    assert tuple(s) == sp.SUMMARY_KEYS
    assert set(["active_at_0.8", "active_at_0.6", "share_steps_rel_below_5pct", "max_relative_magnitude",
                "median_last_active_t", "share_changed", "n_samples"]) <= set(s)
    assert s["n_samples"] == 4
    assert s["active_at_0.8"] == 0.5 and s["active_at_0.6"] == 0.25
    # the paper's levels, 5.11 and 2.28, are both nearest step 1 here (t = 0.9: sigma/alpha 2.06; t = 1 is pure noise)
    assert s["active_at_paper_0.8"] == s["active_at_paper_0.6"] == 0.75
    assert s["share_steps_rel_below_5pct"] == pytest.approx(5 / 17)  # 17 active pairs, 5 below 5%
    assert s["share_steps_rel_below_5pct_all"] == pytest.approx(28 / 40)  # + the 23 inactive zeros
    assert s["max_relative_magnitude"] == 0.5
    assert s["median_last_active_t"] == pytest.approx(0.5)  # median of 0.7, 0.5, 0.1 (s2 never active)
    assert s["share_changed"] == 0.75
    assert s["median_relative_magnitude_active"] == pytest.approx(0.1)
    assert s["stops_for_good"] == pytest.approx(2 / 3) and s["active_at_end"] == 0.25


def test_summary_never_active_is_nan_not_error():
    s = sp.summary(make_group({"batch": np.zeros((3, 5), int)}))
    assert s["share_changed"] == 0 and s["active_at_0.8"] == 0 and s["max_relative_magnitude"] == 0
    assert math.isnan(s["median_last_active_t"]) and math.isnan(s["share_steps_rel_below_5pct"])
    assert math.isnan(s["stops_for_good"])


def test_summary_table_order_and_baseline_left_out(four):
    dsets = {"overcomp": four, "baseline": four.assign_attrs(radius=0.0), "iterative": four, "custom": four}  # r = 0: the reference
    assert list(sp.summary_table(dsets).index) == ["overcomp", "iterative", "custom"]  # a plain dict: its own order
    run = load.Groups(dsets)
    run.order, run.reference = ["iterative", "custom", "baseline", "overcomp"], "baseline"  # the store's root attrs
    table = sp.summary_table(run)
    assert list(table.index) == ["iterative", "custom", "overcomp"] and table.index.name == "setup"
    assert list(table.columns) == list(sp.SUMMARY_KEYS)
    text = sp.format_table(table)
    assert "50.0%" in text and "iterative" in text


def test_the_driver_keeps_the_measured_rounds_once(tmp_path):
    run = synthetic_run(("iterative", "intra"), steps=6, conditions=1, per_round=4)
    loaded = sp.load_run(write_store(run, tmp_path / "run"))  # measured here, by the driver, and nowhere else
    assert {n: ds.sizes["sample"] for n, ds in loaded.items()} == {"baseline": 4, "intra": 8, "iterative": 4}
    assert {n: ds.sizes["sample"] for n, ds in load.every_round(loaded).items()} == {n: 8 for n in loaded}
    table = sp.summary_table(loaded)
    assert table.loc["iterative", "n_samples"] == 4 and table.loc["intra", "n_samples"] == 8  # round 0: memory only
    it = run["iterative"].isel(sample=run["iterative"]["round"].values >= 1)
    assert table.loc["iterative", "active_at_0.8"] == act.active_at(it, 0.8)
    assert sp.summary_table(run).loc["iterative", "n_samples"] == 8  # a statistic keeps what it is given


def test_unwritten_samples_dropped(four):
    ds = four.copy(deep=True)
    ds["relative_magnitude"][1] = np.nan
    assert load.drop_unwritten(ds).sizes["sample"] == 3


def test_check_dataset_names_missing():
    with pytest.raises(ValueError, match="active_memory"):
        load.check_dataset(xr.Dataset({"relative_magnitude": (("sample", "step"), np.zeros((1, 2))),
                                     "active_shields": (("sample", "step"), np.zeros((1, 2)))},
                                    coords={"t": ("step", [1.0, 0.5])}), "bad")


def test_gallery_fallbacks():
    run = synthetic_run(("iterative",), image=False, baseline=False, steps=6)
    fig = spf.plot_gallery(run)  # x0 (channel, height, width) rendered as grayscale, no baseline rows
    assert "no reference group" in fig._supxlabel.get_text()
    assert fig.axes[0].get_ylabel().startswith("zero")  # the condition's name from `condition_names`
    assert len([a for a in fig.axes if a.images]) == 32  # 2 conditions x 16 images
    base_run = synthetic_run(("iterative",), steps=6)
    with_base = spf.plot_gallery(base_run)
    assert len([a for a in with_base.axes if a.images]) == 48  # round 1 under its baseline; round 0 (memory) once
    assert "drawn once" in with_base._supxlabel.get_text()
    outlined = [a for a in with_base.axes if a.spines["top"].get_visible()]
    assert len(outlined) == int(base_run["iterative"]["intervened"].sum()) > 0
    assert all(a.get_xlabel().startswith("Δ ") for a in outlined)  # each says how far it moved
    flat = synthetic_run(("iterative",), image=False, baseline=False, steps=6)["iterative"]
    flat = flat.assign(x0=(("sample", "dim"), flat["x0"].values.reshape(flat.sizes["sample"], -1)[:, :64]))
    assert spf.plot_gallery({"iterative": flat}).axes  # flat vectors: square when possible


def test_overcompensation_needs_both(four):
    with pytest.raises(KeyError, match="overcomp"):
        spf.plot_overcompensation({"iterative": four})
    assert "overcompensation" not in spf.make_figures({"iterative": four, "intra": four})


def test_cli_renders_and_prints(tmp_path, capsys):
    run = synthetic_run(("iterative", "overcomp"), steps=8, conditions=1, per_round=4)
    run_dir = write_store(run, tmp_path / "run1")
    assert sp.main([str(run_dir), "--wandb", "disabled"]) == 0
    out = capsys.readouterr().out
    assert "active_at_0.8" in out and "overcomp" in out
    for name in spf.FIGURES:  # all six figures, PNG and PDF, from the store alone
        for ext in ("png", "pdf"):
            assert (run_dir / "figures" / f"{name}.{ext}").stat().st_size > 1000
    table = pd.read_csv(run_dir / "figures" / "summary.csv", index_col="setup")
    measured = {n: load.measured(ds) for n, ds in run.items()}
    pd.testing.assert_frame_equal(table, sp.summary_table(measured), check_dtype=False)


def test_cli_errors_are_clear(tmp_path, capsys):
    def one_line(argv, fragment):
        assert sp.main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and fragment in err and "\n" not in err, err

    one_line([str(tmp_path / "nope"), "--wandb", "disabled"], "does not exist")
    (tmp_path / "empty").mkdir()
    one_line([str(tmp_path / "empty"), "--wandb", "disabled"], "no store.zarr")
    only_base = write_store({"baseline": synthetic_run(("iterative",), steps=4)["baseline"]}, tmp_path / "b")
    one_line([str(only_base), "--wandb", "disabled"], "no sparsity setup groups")
    one_line([str(only_base), "--wandb", "loud"], "invalid choice: 'loud'")


def test_wandb_offline_one_run_per_setup(tmp_path):
    from spell_lab.analysis.wandb_log import log_runs

    run = synthetic_run(("overcomp",), steps=6)
    table = sp.summary_table(run)
    png = spf.plots.save(spf.plot_active_share(run), tmp_path / "figures", "active_share")["png"]
    runs = spf.wandb_runs(run, {"table": table}, {"active_share": png})
    dirs = log_runs(runs, project="spell_lab-test", group="sparsity-test", run_dir=tmp_path, mode="offline")
    assert len(dirs) == 2  # the setup and the baseline reference
    for d in dirs:
        assert d.parent == tmp_path / "wandb" and d.name.startswith("offline-run-")
        assert list(d.glob("*.wandb"))
    assert log_runs(runs, project="p", group="g", run_dir=tmp_path, mode="disabled") == []


def test_curves_table(four):
    c = sp.curves(four)
    assert len(c) == 10 and c["t"].iloc[0] == 1.0
    np.testing.assert_allclose(c["active_share"], act.active_share(four).values)
    assert isinstance(c, pd.DataFrame) and np.isnan(c["rel_median_active"]).sum() == 0


def test_wandb_names_and_values():
    from spell_lab.analysis.wandb_log import config_from_attrs, metric_name, plain

    assert metric_name("active_at_0.8") == "active_at_0_8" and metric_name("active share") == "active_share"
    assert plain({"a": np.float32(0.5), "b": float("nan"), "c": np.arange(2)}) == {"a": 0.5, "b": None, "c": [0, 1]}
    cfg = config_from_attrs({"config": json.dumps({"radius": 25}), "radius": np.float64(25.0)})
    assert cfg == {"config": {"radius": 25}, "radius": 25.0}
