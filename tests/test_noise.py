"""The noise level sigma/alpha as the common time axis: the schedules' closed forms, the store's own t <-> sigma/alpha
map, the tables' sigma/alpha columns and the figures' second axis and paper marks (docs/design.md section 2)."""

import math

import numpy as np
import pytest
import xarray as xr

from spell_lab import schedules
from spell_lab.analysis import activity as act
from spell_lab.analysis import noise, plots
from spell_lab.analysis import radius_figures as rf
from spell_lab.analysis import sparsity as sp
from spell_lab.analysis import sparsity_figures as spf
from spell_lab.analysis.wandb_log import sample_rows

from conftest import make_group, synthetic_run


def vp_closed_form(t, b0=0.1, b1=20.0):
    """sigma/alpha = sqrt(1/abar - 1), abar = exp(-(b0 t + (b1 - b0) t^2 / 2))."""
    return math.sqrt(math.expm1(b0 * t + 0.5 * (b1 - b0) * t * t))


def vp_time(level, b0=0.1, b1=20.0):
    """The VP-linear t where sigma/alpha = level: the root of (b1 - b0) t^2 / 2 + b0 t = log(1 + level^2)."""
    return (-b0 + math.sqrt(b0 * b0 + 2 * (b1 - b0) * math.log1p(level * level))) / (b1 - b0)


def ld_closed_form(t):
    """Scaled-linear betas 0.00085-0.012 over 1,000 steps, abar at timestep 1000 t, in numpy."""
    betas = np.linspace(0.00085**0.5, 0.012**0.5, 1000) ** 2
    abar = np.cumprod(1 - betas)[round(1000 * t)]
    return math.sqrt(1 / abar - 1)


def on_schedule(ds: xr.Dataset, schedule) -> xr.Dataset:
    """The group with the t, sigma, alpha coordinates a sampler on `schedule` records (same number of steps)."""
    t = schedule.grid(ds.sizes["step"] - 1).numpy()
    alpha, sigma = (v.numpy() for v in schedule.alpha_sigma(schedule.grid(ds.sizes["step"] - 1)))
    return ds.assign_coords(t=("step", t), sigma=("step", sigma), alpha=("step", alpha))


@pytest.mark.parametrize("t", [0.3, 0.6, 0.8])
def test_schedules_noise_level_is_the_closed_form(t):
    assert float(schedules.noise_level(schedules.VPLinear(), t)) == pytest.approx(vp_closed_form(t), rel=1e-12)
    assert float(schedules.noise_level(schedules.LatentDiffusionSchedule(), t)) == pytest.approx(ld_closed_form(t),
                                                                                             rel=1e-12)
    assert vp_closed_form(0.8) == pytest.approx(25.1, abs=0.05) and ld_closed_form(0.8) == pytest.approx(5.11, abs=0.005)
    assert schedules.paper_noise_levels() == {0.8: pytest.approx(ld_closed_form(0.8)),
                                              0.6: pytest.approx(ld_closed_form(0.6))}


def test_the_store_map_reads_its_own_steps_and_inverts():
    ds = on_schedule(synthetic_run(("iterative",), steps=21, baseline=False)["iterative"], schedules.VPLinear())
    t = ds["t"].values
    levels = noise.step_levels(ds)
    assert levels[-1] == 0.0  # t = 0: sigma 0
    np.testing.assert_allclose(levels[:-1], [vp_closed_form(v) for v in t[:-1]], rtol=1e-12)
    m = noise.noise_map(ds)
    np.testing.assert_allclose(m.to_level(t[:-1]), levels[:-1], rtol=1e-12)  # exact at the recorded steps
    np.testing.assert_allclose(m.to_t(m.to_level([0.3, 0.55, 0.8])), [0.3, 0.55, 0.8], atol=1e-12)
    between = m.to_level(0.825)  # log-linear between the steps at t = 0.85 and 0.8
    assert vp_closed_form(0.8) < between < vp_closed_form(0.85)
    assert m.covers(5.11) and not m.covers(1e4)
    np.testing.assert_array_equal(noise.levels_at_steps(ds, [-1, 0, 20]), [np.nan, levels[0], 0.0])


def test_the_nearest_step_to_a_level_is_nearest_in_log_scale():
    ds = on_schedule(synthetic_run(("iterative",), steps=21, baseline=False)["iterative"], schedules.VPLinear())
    closed = np.array([vp_closed_form(v) for v in ds["t"].values])
    for level in schedules.paper_noise_levels().values():
        with np.errstate(divide="ignore"):
            expect = int(np.argmin(np.abs(np.log(closed) - np.log(level))))
        assert act.nearest_noise_step(ds, level) == expect
    assert ds["t"].values[act.nearest_noise_step(ds, 5.11)] == pytest.approx(0.55)  # VP's 5.11: t = 0.571
    assert vp_closed_form(vp_time(5.11)) == pytest.approx(5.11)


def test_no_map_without_levels_or_across_schedules():
    run = synthetic_run(("iterative", "intra"), steps=11, baseline=False)
    assert noise.common_map(run, ["iterative", "intra"]) is not None  # one schedule
    mixed = {"a": run["iterative"], "b": on_schedule(run["intra"], schedules.VPLinear())}
    assert noise.common_map(mixed, ["a", "b"]) is None  # two schedules: no one axis serves both
    bare = run["iterative"].drop_vars(["sigma", "alpha"])
    assert noise.noise_map(bare) is None and noise.step_levels(bare) is None
    assert np.isnan(act.activity_numbers(bare)["active_at_paper_0.8"])


def test_tables_carry_the_schedules_sigma_over_alpha():
    ds = on_schedule(synthetic_run(("iterative",), steps=21, baseline=False)["iterative"],
                     schedules.LatentDiffusionSchedule())
    curves = sp.curves(ds)
    expect = schedules.noise_level(schedules.LatentDiffusionSchedule(), curves["t"].to_numpy().copy()).numpy()
    np.testing.assert_allclose(curves["sigma_alpha"], expect, rtol=1e-12)
    rows = sample_rows(ds)
    last = ds["last_active_step"].values
    np.testing.assert_allclose(rows["last_active_sigma_alpha"], np.where(last >= 0, expect[np.maximum(last, 0)], np.nan))
    ever = last >= 0
    s = sp.summary(ds)
    assert s["median_last_active_sigma_alpha"] == pytest.approx(np.median(expect[last[ever]]))
    step = act.nearest_noise_step(ds, schedules.paper_noise_levels()[0.8])
    assert s["active_at_paper_0.8"] == pytest.approx(float(act.active(ds).isel(step=step).mean()))


def paper_lines(ax) -> list[float]:
    return [line.get_xdata()[0] for line in ax.get_lines() if line.get_color() == plots.PAPER_MARK]


def secondary(ax) -> list:
    return [c for c in ax.child_axes if c.get_label() != "<colorbar>"]


def test_every_t_figure_has_the_noise_axis_and_the_paper_marks():
    run = {n: on_schedule(ds, schedules.VPLinear()) for n, ds in synthetic_run(
        ("iterative", "overcomp"), steps=41, conditions=1, per_round=4).items()}
    expect = [vp_time(level) for level in schedules.paper_noise_levels().values()]  # t = 0.571, 0.424
    share = spf.plot_active_share(run)
    ax = share.axes[0]
    assert paper_lines(ax) == pytest.approx(expect, abs=0.025) and secondary(ax)  # within a step of 0.025
    share.draw_without_rendering()
    top = secondary(ax)[0]  # sigma/alpha 10 is drawn above the t where VP-linear reaches it
    assert list(top.get_xticks()) == [0.1, 0.3, 1, 3, 10, 30, 100]  # t = 0.025 ... 1: sigma/alpha 0.094 ... 152
    t_below = ax.transData.inverted().transform(top.transData.transform((10, 0)))[0]
    assert t_below == pytest.approx(vp_time(10), abs=0.025)  # log-linear between steps 0.025 apart
    stars = [c for c in ax.collections if c.get_label().startswith("paper Fig. 5b")]
    assert stars and sorted(c.get_offsets()[0][1] for c in ax.collections if c.get_offsets().shape == (1, 2)) \
        == [21.0, 40.0]
    for fig in (spf.plot_relative_magnitude(run), spf.plot_active_by_source(run), spf.plot_last_active(run),
                spf.plot_overcompensation(run)):
        axes = [a for a in fig.axes if a.get_label() != "<colorbar>" and a not in sum(map(secondary, fig.axes), [])]
        assert all(secondary(a) and paper_lines(a) == pytest.approx(expect, abs=0.025) for a in axes), fig
    radius = {"r00": run["iterative"].assign_attrs(radius=0.0), "r01": run["overcomp"].assign_attrs(radius=4.0)}
    share, last, _ = rf.plot_duration(radius).axes[:3]
    assert paper_lines(share) == pytest.approx(expect, abs=0.025) and secondary(share)
    marks = [line.get_ydata()[0] for line in last.get_lines() if line.get_color() == plots.PAPER_MARK]
    assert marks == pytest.approx(expect, abs=0.025) and secondary(last)
