"""The radius ablation: calibration, the per-radius metric table, the CLI end to end on gmm and its notebook."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr

from spell_lab import calibration
from spell_lab.analysis import radius as ra
from spell_lab.analysis import radius_figures as rf
from spell_lab.metrics import RawFeatures, frechet_distance, prdc, vendi

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------------------------- calibration

def test_calibrate_hand_made():
    # condition 0 at 0, 3, 4 (pairs 3, 4, 1); condition 1 at 10, 20 (pair 10); cross-condition pairs do not count
    x0 = torch.tensor([[0.0, 0], [3, 0], [10, 0], [0, 4], [20, 0]]).reshape(5, 1, 2)
    cond = torch.tensor([0, 0, 1, 0, 1])
    median, grid = calibration.calibrate(x0, cond)
    d = sorted(calibration.pairwise_within(x0, cond))
    assert d == pytest.approx([3.0, 4.0, 5.0, 10.0])  # (3,0)-(0,4) is 5
    assert median == pytest.approx(4.5)
    assert len(grid) == 16 and grid[0] == 0 and grid[-1] == pytest.approx(9.0)
    assert np.allclose(np.diff(grid), 9.0 / 15)


def test_calibrate_needs_a_pair():
    with pytest.raises(ValueError, match="at least two samples"):
        calibration.calibrate(torch.zeros(2, 3), [0, 1])


# ----------------------------------------------------------------------------------------------- metric table

def _group(radius, x0, cond, active, t):
    n, steps = active.shape
    zeros = np.zeros((n, steps), np.int32)
    return xr.Dataset(
        {"x0": (("sample", "feature"), x0.astype(np.float32)),
         "condition": ("sample", cond.astype(np.int32)),
         "round": ("sample", np.zeros(n, np.int32)),
         "active_shields": (("sample", "step"), active.astype(np.int32)),
         "active_batch": (("sample", "step"), active.astype(np.int32)),
         "active_memory": (("sample", "step"), zeros), "active_protected": (("sample", "step"), zeros),
         "relative_magnitude": (("sample", "step"), 0.01 * active.astype(np.float32))},
        coords={"t": ("step", t), "step": np.arange(steps)},
        attrs={"radius": radius, "config": json.dumps({"calibration": {"median": 2.0}})},
    )


def synthetic():
    g = np.random.default_rng(0)
    real = g.normal(size=(40, 3))
    real_cond = np.repeat([0, 1], 20)
    real[real_cond == 1] += 5
    cond = np.repeat([0, 1], 8)
    base = g.normal(size=(16, 3)) * 0.3 + 5 * cond[:, None]
    wide = g.normal(size=(16, 3)) * 1.5 + 5 * cond[:, None]
    t = np.array([0.9, 0.6, 0.3, 0.1])
    act = np.zeros((16, 4), int)
    act[:, :2] = 1  # every trajectory active in the first two steps, none after
    act[:4, 2] = 2  # four of them one step longer
    datasets = {"r01": _group(4.0, wide, cond, act, t), "r00": _group(0.0, base, cond, 0 * act, t)}
    return datasets, real, real_cond


def test_metric_table_on_a_tiny_case():
    datasets, real, real_cond = synthetic()
    table, per = ra.metric_tables(datasets, torch.tensor(real), real_cond, RawFeatures())
    assert list(table.index) == ["r00", "r01"] and list(table["radius"]) == [0.0, 4.0]  # ordered by radius
    assert table.loc["r01", "radius_over_median"] == 2.0 and (table["n_conditions"] == 2).all()
    for name in ("r00", "r01"):
        x0, cond = datasets[name]["x0"].values, datasets[name]["condition"].values
        expect = {m: [] for m in ra.METRICS}
        for c in (0, 1):
            f, r = torch.tensor(x0[cond == c]), torch.tensor(real[real_cond == c], dtype=torch.float32)
            for m, v in prdc(r, f, k=5).items():
                expect[m].append(v)
            expect["vendi"].append(vendi(f)), expect["vendi_raw"].append(vendi(f))
            expect["fd"].append(frechet_distance(r, f))
        for m in ra.METRICS:
            assert table.loc[name, m] == pytest.approx(np.mean(expect[m]), rel=1e-6), (name, m)
    # wider samples: more diverse; the sparsity columns follow the hand-made activity
    assert table.loc["r01", "vendi"] > table.loc["r00", "vendi"]
    assert table.loc["r01", "mean_active_share"] == pytest.approx((32 + 4) / 64)
    assert table.loc["r01", "median_last_active_t"] == pytest.approx(0.6)
    assert table.loc["r01", "share_changed"] == 1.0 and table.loc["r01", "active_at_end"] == 0.0
    assert table.loc["r00", "mean_active_share"] == 0.0 and np.isnan(table.loc["r00", "median_last_active_t"])
    assert len(per) == 4 and set(per["group"]) == {"r00", "r01"}
    figs = rf.make_figures(datasets, table, per)
    assert set(figs) == {"metrics_vs_radius", "fronts", "duration", "samples"}
    assert "r/median" in ra.format_table(table)


def test_metric_table_needs_k_plus_one_per_condition():
    datasets, real, real_cond = synthetic()
    small = {n: ds.isel(sample=slice(3, 16)) for n, ds in datasets.items()}  # condition 0 keeps 5 samples
    with pytest.raises(ValueError, match="at least k \\+ 1 = 6"):
        ra.metric_tables(small, torch.tensor(real), real_cond, RawFeatures())


# ----------------------------------------------------------------------------------------------- command line

def test_settings_add_the_baseline_and_order_the_radii():
    from spell_lab.experiments.radius import radius_settings

    s = radius_settings([5.0, 1.5], "mixed", 8, None, 1.0, (0, 2), seed=3)
    assert [x.name for x in s] == ["r00", "r01", "r02"] and [x.radius for x in s] == [0.0, 1.5, 5.0]
    assert all(x.rounds == (2, 2, 2, 2) and x.method["intra_batch"] and x.method["memory"] and x.seed == 3 for x in s)
    with pytest.raises(ValueError, match="multiple of the batch"):
        radius_settings([1.0], "mixed", 7, None, 1.0, (0,), 0)


def test_negative_radius_is_a_clear_error(capsys):
    from spell_lab.experiments import radius
    from spell_lab.experiments.common import run_cli

    assert run_cli(radius.main, ["--model", "gmm", "--radii", "-1", "2"]) == 2
    err = capsys.readouterr().err
    assert "--radii must be >= 0 (and finite)" in err and "-1.0" in err
    assert run_cli(radius.main, ["--model", "some/pipeline"]) == 2  # refused before anything loads or samples
    assert "held-out real data" in capsys.readouterr().err


def test_yaml_equals_defaults():
    from spell_lab.experiments import radius

    p = radius.parser()
    a, b = p.parse_args([]).as_dict(), p.parse_args(["--config", str(ROOT / "experiments" / "radius.yaml")]).as_dict()
    a.pop("config", None), b.pop("config", None)
    assert a == b


def test_calibrate_command(tmp_path, capsys):
    from spell_lab.experiments import calibrate

    assert calibrate.main(["--model", "gmm", "--quick", "--out", str(tmp_path)]) == 0
    cal = json.loads((tmp_path / "calibration.json").read_text())
    assert len(cal["grid"]) == 16 and cal["grid"][-1] == pytest.approx(2 * cal["median"])
    assert cal["first_seed"] == 1_000_000 and cal["per_condition"] == 8 and cal["conditions"] == [0, 2]
    assert "median distance" in capsys.readouterr().out


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    from spell_lab.experiments import radius

    out = tmp_path_factory.mktemp("radius") / "quick"
    assert radius.main(["--model", "gmm", "--quick", "--out", str(out), "--no_progress", "--wandb", "offline"]) == 0
    return out


def test_quick_run_end_to_end(quick_run):
    from spell_lab.store import open_run

    groups = open_run(quick_run)
    assert sorted(groups) == ["r00", "r01", "r02", "r03"]
    radii = [float(groups[n].attrs["radius"]) for n in sorted(groups)]
    cal = json.loads(groups["r00"].attrs["config"])["calibration"]
    assert radii[0] == 0.0 and radii == pytest.approx(cal["grid"], rel=1e-3) and len(cal["grid"]) == 4
    assert cal["median"] > 0
    seeds = groups["r00"]["seed"].values
    for ds in groups.values():  # the same seeds and protocol at every radius
        assert (ds["seed"].values == seeds).all() and ds.attrs["rounds"] == [2, 2, 2, 2]
    assert int(groups["r00"]["active_shields"].max()) == 0 and bool(groups["r03"]["intervened"].any())
    figs = quick_run / "figures"
    for name in ("metrics_vs_radius", "fronts", "duration", "samples"):
        assert (figs / f"{name}.png").stat().st_size > 10_000
    table = __import__("pandas").read_csv(figs / "radius_table.csv", index_col=0)
    assert list(table.index) == ["r00", "r01", "r02", "r03"] and np.isfinite(table[list(ra.METRICS)].values).all()
    assert list((quick_run / "wandb").glob("offline-run-*"))


def test_notebook_on_the_quick_run(quick_run, execute_notebook):
    images, text = execute_notebook("radius", quick_run, timeout=120)
    assert len(images) == 4
    assert str(quick_run) in text and "r/median" in text
