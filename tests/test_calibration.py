"""The Appendix D selection: F(P, C), the selection on hand-made tables, and `calibrate --select` end to end."""

import json

import numpy as np
import pandas as pd
import pytest

from spell_lab import calibration as cal


def test_f_score_is_the_harmonic_mean_of_precision_and_coverage():
    assert cal.f_score(1.0, 0.5) == pytest.approx(2 / 3)
    assert cal.f_score(0.8, 0.8) == pytest.approx(0.8)
    assert cal.f_score(0.0, 0.0) == 0.0 and cal.f_score(0.0, 0.7) == 0.0
    f = cal.f_score([0.9, 0.5], [0.3, 1.0])
    assert isinstance(f, np.ndarray) and f == pytest.approx([2 * 0.27 / 1.2, 1.0 / 1.5])


@pytest.mark.parametrize("p, c", [(1.2, 0.5), (-0.1, 0.5), (0.5, -1.0)])
def test_f_score_refuses_impossible_values(p, c):
    with pytest.raises(ValueError, match="precision"):
        cal.f_score(p, c)


def test_best_guidance_trades_precision_against_coverage():
    # guidance raises precision and lowers coverage: F = 0.667, 0.800, 0.750, 0.581
    table = pd.DataFrame({"guidance": [1.0, 2.0, 3.0, 5.0], "precision": [0.5, 0.8, 0.9, 1.0],
                          "coverage": [1.0, 0.8, 0.643, 0.41], "recall": [1.0, 0.9, 0.6, 0.3]})
    w, f = cal.best_guidance(table)
    assert w == 2.0 and f == pytest.approx(0.8)
    assert cal.with_f(table)["f"].to_numpy() == pytest.approx([2 / 3, 0.8, 2 * 0.9 * 0.643 / 1.543, 0.82 / 1.41])


def test_best_radius_ties_go_to_the_smaller_radius_and_nan_rows_are_skipped():
    table = pd.DataFrame({"radius": [0.0, 5.0, 10.0, 15.0], "precision": [0.9, 0.9, 0.9, np.nan],
                          "coverage": [0.6, 0.7, 0.7, np.nan]})
    r, f = cal.best_radius(table)
    assert r == 5.0 and f == pytest.approx(2 * 0.63 / 1.6)


def test_selection_needs_precision_coverage_and_the_key():
    with pytest.raises(ValueError, match="coverage"):
        cal.with_f(pd.DataFrame({"radius": [0.0], "precision": [1.0]}))
    with pytest.raises(ValueError, match="'guidance'"):
        cal.best_guidance(pd.DataFrame({"radius": [0.0], "precision": [1.0], "coverage": [1.0]}))


def test_grid_steps_and_the_rescaling_rule():
    grid = cal.radius_grid(15.0)  # step 2
    assert cal.grid_steps(grid, 24.0, 25.0) == pytest.approx(0.5)
    assert cal.grid_steps(grid, 20.0, 25.0) == pytest.approx(2.5)
    assert cal.rescale_for(17.36, 25.0) == pytest.approx(1.4401, abs=1e-4)
    with pytest.raises(ValueError, match="selected radius > 0"):
        cal.rescale_for(0.0, 25.0)  # radius 0 selected: no scale moves it


def test_f_standard_error_is_the_jackknife_over_conditions():
    # one candidate, precision 1 everywhere, coverage 0.5 / 1 / 0.75: leaving one condition out gives coverage
    # 0.875 / 0.625 / 0.75, so F = 14/15, 10/13, 6/7; SE = sqrt(2/3 * sum of squared deviations from their mean)
    leave_out = np.array([14 / 15, 10 / 13, 6 / 7])
    expected = np.sqrt(2 / 3 * ((leave_out - leave_out.mean()) ** 2).sum())
    se = cal.f_standard_error([[1.0, 1.0, 1.0], [0.9, 0.9, 0.9]], [[0.5, 1.0, 0.75], [0.6, 0.6, 0.6]])
    assert se[0] == pytest.approx(expected) and expected == pytest.approx(0.0948, abs=1e-4)
    assert se[1] == 0.0  # the same in every condition: nothing to tell apart
    assert np.isnan(cal.f_standard_error([[1.0]], [[0.5]])).all()  # one condition: no jackknife


def test_within_one_se_lists_the_candidates_the_argmax_cannot_tell_apart():
    # F = 0.800, 0.818, 0.805, 0.700; the best (5) has SE 0.02, floor 0.798: 0 and 10 lie above it, 15 does not
    table = pd.DataFrame({"radius": [0.0, 5.0, 10.0, 15.0], "precision": [0.8, 0.9, 0.7, 0.7],
                          "coverage": [0.8, 0.75, 0.947, 0.7], "f_se": [0.01, 0.02, 0.01, 0.03]})
    assert cal.best_radius(table)[0] == 5.0
    assert cal.within_one_se(table, "radius") == [0.0, 5.0, 10.0]


def test_f_gap_standard_error_pairs_the_candidates_by_condition():
    # candidate 1 trails the best (0) by the same 0.1 of coverage in every condition: its gap hardly moves when a
    # condition is left out, so its paired SE is small although each candidate's own F varies across conditions
    p = [[1.0, 1.0, 1.0], [1.0, 1.0, 1.0], [1.0, 1.0, 1.0]]
    c = [[0.5, 1.0, 0.75], [0.4, 0.9, 0.65], [0.9, 0.1, 0.5]]
    gap = cal.f_gap_standard_error(p, c)
    own = cal.f_standard_error(p, c)
    assert gap[0] == 0.0 and own[1] > 0.05
    leave_out = cal._leave_one_out_f(p, c)
    d = leave_out[1] - leave_out[0]
    assert gap[1] == pytest.approx(np.sqrt(2 / 3 * ((d - d.mean()) ** 2).sum())) and gap[1] < 0.02
    d2 = leave_out[2] - leave_out[0]  # coverage moving the other way per condition: a large paired SE
    assert gap[2] == pytest.approx(np.sqrt(2 / 3 * ((d2 - d2.mean()) ** 2).sum())) and gap[2] > own[0]
    # within_one_se reads each row's paired SE when the table has it: F = 0.857, 0.788, 0.667; row 1 lies 0.069 below
    # with a paired SE of 0.012 (out), row 2 0.19 below with 0.30 (in); by the best's own SE (0.095) it is the reverse
    table = pd.DataFrame({"radius": [0.0, 5.0, 10.0], "precision": np.mean(p, 1), "coverage": np.mean(c, 1),
                          "f_se": own, "f_gap_se": gap})
    assert cal.within_one_se(table, "radius") == [0.0, 10.0]
    assert cal.within_one_se(table.drop(columns="f_gap_se"), "radius") == [0.0, 5.0]


@pytest.fixture(scope="module")
def quick_select(tmp_path_factory):
    from spell_lab.experiments import calibrate

    out = tmp_path_factory.mktemp("select") / "quick"
    assert calibrate.main(["--select", "--quick", "--model", "gmm", "--guidance_grid", "1", "2", "4", "--out", str(out),
                           "--no_progress", "--wandb", "disabled"]) == 0
    return out


def test_select_quick_end_to_end(quick_select, capsys):
    sel = json.loads((quick_select / "selection.json").read_text())
    cfg_t, r_t = pd.DataFrame(sel["cfg_table"]), pd.DataFrame(sel["radius_table"])
    assert list(cfg_t["guidance"]) == [1.0, 2.0, 4.0] and len(r_t) == 4  # quick: a 4-radius grid
    # the printed selection is the table's F-best, and F is recomputable from P and C
    assert sel["selected_guidance"] == cfg_t["guidance"][cfg_t["f"].idxmax()]
    assert sel["selected_radius"] == r_t["radius"][r_t["f"].idxmax()]
    assert r_t["f"].to_numpy() == pytest.approx(cal.f_score(r_t["precision"], r_t["coverage"]))
    grid = sel["calibration"]["grid"]
    assert sel["calibration"]["guidance"] == sel["selected_guidance"]  # calibrated at the tuned weight
    assert r_t["radius"].to_numpy() == pytest.approx(grid, rel=1e-3) and grid[-1] == pytest.approx(
        2 * sel["calibration"]["median"])
    # radius 0 of the sweep is the tuning's run at the same weight: same seeds, no SPELL
    base = r_t.iloc[0]
    tuned = cfg_t[cfg_t["guidance"] == sel["selected_guidance"]].iloc[0]
    assert base["radius"] == 0 and base["precision"] == pytest.approx(tuned["precision"])
    assert base["coverage"] == pytest.approx(tuned["coverage"])
    # F's standard error over conditions, and the radii within one SE of the best (the best among them)
    assert (r_t["f_se"] >= 0).all() and sel["selected_radius"] in sel["within_one_se"]
    assert sel["f_radius_se"] == pytest.approx(r_t["f_se"][r_t["f"].idxmax()])
    for name in ("f_vs_guidance", "f_vs_radius"):
        assert (quick_select / f"{name}.png").stat().st_size > 10_000
    assert (quick_select / "radius" / "store.zarr").is_dir()


def test_select_refuses_a_fixed_guidance(tmp_path, capsys):
    from spell_lab.experiments import calibrate
    from spell_lab.experiments.common import run_cli

    out = tmp_path / "run"
    assert run_cli(calibrate.main, ["--select", "--quick", "--model", "gmm", "--guidance", "3", "--out", str(out)]) == 2
    assert "--guidance_grid" in capsys.readouterr().err and not out.exists()
    assert run_cli(calibrate.main, ["--quick", "--model", "gmm", "--guidance_grid", "1", "2"]) == 2
    assert "add --select" in capsys.readouterr().err
