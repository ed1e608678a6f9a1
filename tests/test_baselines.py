"""The baselines experiment (Figure 4, Appendix I): hypervolume math, the quick run end to end on the real command
line, its neutral points bit for bit, and its refusals."""

import json
import math
import shutil

import numpy as np
import pandas as pd
import pytest

from spell_lab.analysis.pareto import hypervolume_2d, hypervolume_reference, pareto_mask
from spell_lab.experiments import baselines


def test_hypervolume_by_hand():
    # three steps of a staircase above (0, 0): 3x1 + 2x1 + 1x1
    assert hypervolume_2d([1, 2, 3], [3, 2, 1], (0, 0)) == pytest.approx(6.0)
    # a dominated point and a point below the reference add nothing
    assert hypervolume_2d([1, 2, 3, 0.5, -1], [3, 2, 1, 0.5, 9], (0, 0)) == pytest.approx(6.0)
    assert hypervolume_2d([2], [5], (1, 1)) == pytest.approx(4.0)
    assert hypervolume_2d([], [], (0, 0)) == 0.0


def test_hypervolume_matches_brute_force():
    rng = np.random.default_rng(0)
    for _ in range(20):
        x, y = rng.random(12), rng.random(12)
        x[rng.random(12) < 0.2] = np.nan
        ref = (float(rng.random() * 0.3), float(rng.random() * 0.3))
        assert hypervolume_2d(x, y, ref) == pytest.approx(hypervolume_reference(x, y, ref), abs=1e-12)


def test_pareto_mask():
    assert pareto_mask([1, 2, 3, 1.5, np.nan], [3, 2, 1, 1.5, 5]).tolist() == [True, True, True, False, False]
    assert pareto_mask([1, 1], [2, 2]).tolist() == [True, True]  # equal points do not dominate each other


def test_condition_fidelity_reads_the_requested_class():
    from spell_lab.models import condition_fidelity, reference_data

    x, cond, _, _ = reference_data("digits", [3, 5])
    score = condition_fidelity("digits")
    right, wrong = score(x, cond), score(x, (cond + 1) % 10)
    assert right.shape == (len(x),) and right.mean() > 0.9 > 0.1 > wrong.mean()
    assert condition_fidelity("gmm") is None


def test_grid_values_and_refusals():
    s = baselines.baseline_settings(["cfg", "cads"], baselines.GRIDS, "default", [0, 1], 0, 2.0)
    cfg0 = next(x for x in s if x.name == "cfg-0")
    assert cfg0.method == {"name": "cfg", "weight": 2.0}  # null: the run's weight, the neutral point
    assert next(x for x in s if x.name == "cads-0").method["tau1"] == 1.0
    quick = baselines.baseline_settings(["pg"], {"pg": [0, 1, 2, 3]}, "quick", [0], 0, 2.0)
    assert [x.method["strength"] for x in quick] == [0.0, 3.0]
    for sweeps, grids, match in ((["nope"], {}, "unknown sweep"), ([], {}, "no sweep"),
                                 (["pg"], {"pg": []}, "non-empty"), (["pg"], {"pg": ["x"]}, "not a number"),
                                 (["cfg"], {"cfg": [{"radius": 3}]}, "no parameter")):
        with pytest.raises(ValueError, match=match):
            baselines.baseline_settings(sweeps, grids, "default", [0], 0, 2.0)


def test_groups_follow_the_runs_order_with_spells_sweep_first():
    """No order is declared in the analysis: the store's group order, SPELL's own sweep (the one varying its radius)
    first; a method's sweeps share its colour (SPELL on top of CFG has SPELL's)."""
    import xarray as xr

    from spell_lab.analysis import baselines as ab
    from spell_lab.analysis import baselines_figures as abf
    from spell_lab.analysis import load

    sweeps = {s: {k: baselines.SWEEPS[s][k] for k in ("label", "method", "vary")} for s in ("cfg", "pg", "spell", "spell_cfg")}
    ds = xr.Dataset(attrs={"config": json.dumps({"sweeps": sweeps})})
    run = load.Groups({n: ds for n in ("spell-1", "cfg-0", "cfg-1", "spell-0", "pg-0", "spell_cfg-0")})
    run.order = ["cfg-0", "cfg-1", "pg-0", "spell-0", "spell-1", "spell_cfg-0"]  # as the run wrote it
    assert ab.baseline_groups(run) == ["spell-0", "spell-1", "cfg-0", "cfg-1", "pg-0", "spell_cfg-0"]
    table = pd.DataFrame({"sweep": ["spell", "cfg", "pg", "spell_cfg"],
                          "method": [json.dumps(sweeps[s]["method"]) for s in ("spell", "cfg", "pg", "spell_cfg")]})
    colour = abf.colours(table)
    assert colour["spell_cfg"] == colour["spell"] and len({colour[s] for s in ("spell", "cfg", "pg")}) == 3
    assert abf.front_sweeps(table) == ["spell", "cfg", "pg"]  # Figure 4 leaves Appendix I's SPELL + CFG out


@pytest.fixture
def quick_run(baselines_quick_run):
    return baselines_quick_run  # the session's run (conftest), which the notebook's test reads too


def test_quick_run_end_to_end(quick_run, capsys):
    from spell_lab.analysis import baselines as ab
    from spell_lab.analysis import load

    fronts = pd.read_csv(quick_run / "figures" / "fronts.csv", index_col="group")
    assert len(fronts) == 2 * len(baselines.SWEEPS)  # quick: neutral point and strongest value of every sweep
    for col in ("precision", "recall", "density", "coverage", "vendi", "fidelity", *(f"hv_{f}" for f in ab.FRONTS)):
        assert fronts[col].notna().all(), col
    hv = pd.read_csv(quick_run / "figures" / "hypervolume.csv", index_col="sweep")
    assert set(hv.index) == set(baselines.SWEEPS) and (hv.filter(like="hv_") >= 0).all().all()
    for name in ("fronts", "guidance_spell"):
        assert (quick_run / "figures" / f"{name}.png").stat().st_size > 10_000
    datasets = ab.load_run(quick_run)
    assert json.loads(datasets["pg-1"].attrs["method"])["name"] == "pg"
    # every sweep's neutral group is the plain sampler, bit for bit
    neutral = [n for n in fronts.index if fronts.loc[n, "neutral"]]
    assert len(neutral) == len(baselines.SWEEPS) - 1  # spell_cfg: SPELL always on
    x0 = datasets[neutral[0]]["x0"].values
    assert all(np.array_equal(datasets[n]["x0"].values, x0) for n in neutral[1:])
    assert "bit-identical" in ab.neutral_check(load.every_round(datasets), fronts)
    # every non-neutral point changes the outputs
    for sweep in baselines.SWEEPS:
        assert not np.array_equal(datasets[f"{sweep}-1"]["x0"].values, x0), sweep


def test_diversity_moves_the_expected_way(quick_run):
    fronts = pd.read_csv(quick_run / "figures" / "fronts.csv", index_col="group")
    base = fronts.loc["cfg-0", "vendi"]
    for sweep in ("pg", "cads", "spell"):  # pushing apart (PG, SPELL) or noising the condition (CADS) diversifies
        assert fronts.loc[f"{sweep}-1", "vendi"] > base, sweep
    assert fronts.loc["cfg-1", "vendi"] < base  # the strongest weight (6) narrows the outputs


def test_rerender_equals_the_run(quick_run, tmp_path, capsys):
    from spell_lab.analysis import baselines as ab

    run = shutil.copytree(quick_run, tmp_path / "run")  # W&B writes into the run directory: the session's is read only
    assert ab.main([str(run), "--wandb", "offline", "--out", str(tmp_path / "again")]) == 0
    a = pd.read_csv(quick_run / "figures" / "fronts.csv")
    b = pd.read_csv(tmp_path / "again" / "fronts.csv")
    pd.testing.assert_frame_equal(a, b)
    out = capsys.readouterr().out
    assert "bit-identical" in out and "wandb: " in out  # and its W&B run, offline in the run directory
    assert list((run / "wandb").glob("offline-run-*/*.wandb"))


@pytest.mark.parametrize("argv, message", [
    (["--sweeps", "nope"], "unknown sweep"),
    (["--grids", '{"pg": []}'], "non-empty"),
    (["--model", "some/hub-id"], "held-out real data"),
    (["--grids", '{"cfg": [{"radius": 1}]}'], "no parameter"),
    (["--model", "gmm", "--sweeps", "cads"], "model 'gmm' has none"),  # no condition embedding to anneal
])
def test_bad_input_exits_2_and_creates_nothing(tmp_path, capsys, argv, message):
    from spell_lab.experiments.common import run_cli

    out = tmp_path / "run"
    assert run_cli(baselines.main, [*argv, "--quick", "--wandb", "disabled", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists()
