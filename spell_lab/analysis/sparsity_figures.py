"""The sparsity figures (paper Figures 5, 6, 9-15) and W&B runs, drawn from `spell_lab.analysis.sparsity`'s statistics.

Figure functions take a run's groups as the driver's `load_run` gives them (measured samples; the gallery draws
every round, `load.every_round`) and return matplotlib Figures; colours and styles follow the run's group order
(`load.run_order`), so a setup keeps its colour in every figure. Every t axis carries the store's own noise level
sigma/alpha as a second axis (top) and dashed lines where the model reaches the paper's t = 0.8 and 0.6 noise levels
(`plots.noise_axis`, `plots.paper_marks`): the paper's claims are compared there, not at equal t.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import xarray as xr

from .. import schema
from . import plots
from .activity import active, active_by_source, active_share, last_active_t, stopped_share
from .gallery import plot_gallery
from .load import every_round, model_name, reference_of, run_order, subset
from .noise import common_map, noise_map
from .sparsity import (PAPER_ACTIVE_SHARE, curves, relative_magnitude_max, relative_magnitude_quantiles, setups,
                       summary)


def _all_t(datasets, names) -> np.ndarray:
    return np.concatenate([datasets[n]["t"].values for n in names]) if names else np.array([])


def _noise(ax, nmap, label: bool = True, marks: bool = True) -> dict:
    """The noise level beside t: the store's sigma/alpha on a second axis and the paper's two levels marked."""
    plots.noise_axis(ax, nmap, label=label)
    return plots.paper_marks(ax, nmap, label=marks)


def _knob_title(name: str, ds: xr.Dataset) -> str:
    a, parts = ds.attrs, []
    if isinstance(a.get("radius"), (int, float, np.number)):
        parts.append(f"r={a['radius']:g}")
    if isinstance(a.get("overcomp"), (int, float, np.number)):
        parts.append(f"λ={a['overcomp']:g}")
    parts.append(f"n={ds.sizes['sample']}")
    return f"{name}  ({', '.join(parts)})"


def _rel_band(ax, ds, color, label=None):
    """Median (solid) and 10-90% band over active trajectories, maximum (dashed; gaps where none is active)."""
    t = ds["t"].values
    q = relative_magnitude_quantiles(ds, (0.1, 0.5, 0.9), "active")
    ax.fill_between(t, q.isel(quantile=0), q.isel(quantile=2), color=color, alpha=0.25, lw=0)
    ax.plot(t, q.isel(quantile=1), color=color, lw=2, label=label)
    peak = relative_magnitude_max(ds).values
    ax.plot(t, np.where(peak > 0, peak, np.nan), color=color, lw=1, ls="--")


REL_STYLES = [("median (active trajectories)", "line"), ("10–90% (active)", "band"), ("max (all)", "dashed"),
              ("5% of the score", "dotted")]


def _log_limits(datasets, names):
    vals = []
    for n in names:
        rel = datasets[n]["relative_magnitude"].where(active(datasets[n])).values
        vals.append(rel[np.isfinite(rel) & (rel > 0)])
    vals = np.concatenate(vals) if vals else np.array([])
    return (max(vals.min() / 2, 1e-6), vals.max() * 2) if vals.size else None


@plots.styled
def plot_relative_magnitude(datasets: dict):
    """Fig. 5a / 9a: per setup, median and 10-90% band of the relative magnitude over active trajectories, and
    the maximum over all; log scale, with the paper's 5% reference line."""
    names = setups(datasets)
    colors = plots.setup_colors(names, run_order(datasets))
    fig, axes, bottom = plots.grid(len(names), sharey=True)
    lim = _log_limits(datasets, names)
    for ax, name, b in zip(axes, names, bottom):
        ds = datasets[name]
        _rel_band(ax, ds, colors[name])
        ax.axhline(0.05, color="0.3", lw=0.8, ls=":")
        if lim:
            ax.set_yscale("log")
            ax.set_ylim(*lim)
        ax.set_title(_knob_title(name, ds), fontsize=10)
        plots.t_axis(ax, _all_t(datasets, names), label=b)
        _noise(ax, noise_map(ds), label=ax.get_subplotspec().is_first_row())
        if ax.get_subplotspec().is_first_col():
            ax.set_ylabel("‖correction‖ / ‖score‖")
    plots.style_legend(fig, REL_STYLES, loc="outside lower center", ncol=4)
    fig.suptitle("Relative magnitude of the SPELL correction over t"
                 + (" (log scale)" if lim else " (no active step)"), fontweight="bold")
    return fig


@plots.styled
def plot_active_share(datasets: dict):
    """Fig. 5b: share of trajectories with a non-zero correction at each t, one line per setup; the paper's 40% and
    21% drawn where this model reaches the paper's t = 0.8 and 0.6 noise levels."""
    names = setups(datasets)
    order = run_order(datasets)
    colors, styles = plots.setup_colors(names, order), plots.setup_styles(names, order)
    fig = plots.Figure(figsize=(9, 4.2), layout="constrained")
    ax = fig.subplots()
    for i, name in enumerate(names):
        ds = datasets[name]
        n = ds.sizes["step"]
        every = max(1, n // 8)  # a few markers per line, staggered so coinciding lines show each marker
        ax.plot(ds["t"].values, 100 * active_share(ds).values, color=colors[name], lw=1.8, label=name, ms=5.5,
                markevery=(i * every // len(names), every), **styles[name])
    plots.t_axis(ax, np.concatenate([datasets[n]["t"].values for n in names]) if names else None)
    marks = _noise(ax, common_map(datasets, names))
    for k, (t_paper, at) in enumerate(marks.items()):  # Fig. 5b's claims, where this model is equally noisy
        ax.scatter([at], [100 * PAPER_ACTIVE_SHARE[t_paper]], marker="*", s=150, color=plots.PAPER_MARK,
                   edgecolor="k", lw=0.5, zorder=5, label=None if k else "paper Fig. 5b\n(LD, same σ/α)")
    ax.set_ylim(-2, 102)
    ax.set_ylabel("trajectories with SPELL active (%)")
    ax.set_title("How many trajectories SPELL still corrects", fontweight="bold")
    fig.legend(*ax.get_legend_handles_labels(), loc="outside right upper", frameon=False, title="setup",
               handlelength=3.2)  # beside the axes: it covers no line
    return fig


@plots.styled
def plot_last_active(datasets: dict):
    """Fig. 9b: when repellency stops for good. Left, the share of ever-active trajectories that have stopped by
    each t; right, the distribution of the last active t per setup."""
    import seaborn as sns

    names = setups(datasets)
    colors = plots.setup_colors(names, run_order(datasets))
    fig = plots.Figure(figsize=(12, 4.4), layout="constrained")
    left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.15, 1]})
    rows, labels = [], {}
    for name in names:
        ds = datasets[name]
        left.plot(ds["t"].values, 100 * stopped_share(ds).values, color=colors[name], lw=2, label=name,
                  drawstyle="steps-post")  # constant between steps
        lat = last_active_t(ds).values
        labels[name] = f"{name}\n({np.isfinite(lat).sum()}/{lat.size} active)"
        rows += [(labels[name], v) for v in lat[np.isfinite(lat)]]
    plots.t_axis(left, np.concatenate([datasets[n]["t"].values for n in names]) if names else None)
    nmap = common_map(datasets, names)
    _noise(left, nmap)
    left.set_ylim(-2, 102)
    left.set_ylabel("ever-active trajectories\nstopped for good (%)")
    left.set_title("Repellency stopped for good by t (colours as on the right)", fontsize=11)
    df = pd.DataFrame(rows, columns=["setup", "last active t"])
    order = [labels[n] for n in names]
    palette = {labels[n]: colors[n] for n in names}
    if len(df):
        sns.boxplot(data=df, x="last active t", y="setup", hue="setup", order=order, palette=palette, ax=right,
                    width=0.55, fliersize=0, boxprops={"alpha": 0.45}, legend=False)
        sns.stripplot(data=df, x="last active t", y="setup", hue="setup", order=order, palette=palette, ax=right,
                      size=3, alpha=0.7, jitter=0.2, legend=False)
    else:
        right.text(0.5, 0.5, "SPELL never activated", ha="center", va="center", transform=right.transAxes)
    plots.t_axis(right, df["last active t"].values if len(df) else None)
    _noise(right, nmap)
    right.set_ylabel("")
    right.set_yticks(range(len(order)), order)
    for tick, name in zip(right.get_yticklabels(), names):
        tick.set_color(colors[name])  # the setup legend for both panels
    right.set_title("Last active t per trajectory (ever-active only)", fontsize=11)
    fig.suptitle("When repellency stops", fontweight="bold")
    return fig


@plots.styled
def plot_active_by_source(datasets: dict):
    """Mean number of active shields per trajectory over t, split by source (batch, memory, protected)."""
    names = setups(datasets)
    fig, axes, bottom = plots.grid(len(names))  # own y scale: 64 memory shields would flatten the others
    for ax, name, b in zip(axes, names, bottom):
        ds = datasets[name]
        t = ds["t"].values
        src = active_by_source(ds, "mean")
        for s in schema.SOURCES:
            ax.plot(t, src.sel(source=s).values, color=plots.source_color(s), lw=2, label=s)
        ax.plot(t, ds["active_shields"].clip(min=0).mean("sample").values, color="0.2", lw=1, ls="--",
                label="all sources")
        ax.set_title(_knob_title(name, ds), fontsize=10)
        plots.t_axis(ax, _all_t(datasets, names), label=b)
        _noise(ax, noise_map(ds), label=ax.get_subplotspec().is_first_row())
        if ax.get_subplotspec().is_first_col():
            ax.set_ylabel("active shields\nper trajectory (mean)")
    if axes:
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside lower center", ncol=4, frameon=False)
    fig.suptitle("Active shields over t, by source", fontweight="bold")
    return fig


@plots.styled
def plot_overcompensation(datasets: dict, a: str = "iterative", b: str = "overcomp"):
    """Fig. 14 vs 9: setup a against setup b (default: λ = 1 vs overcompensation) - strength and stopping time."""
    missing = [n for n in (a, b) if n not in datasets]
    if missing:
        raise KeyError(f"overcompensation figure needs groups {a!r} and {b!r}; missing {missing}.")
    datasets = subset(datasets, (a, b))
    colors = plots.setup_colors([a, b], run_order(datasets))
    fig = plots.Figure(figsize=(14, 4.3), layout="constrained")
    strength, share, stop = fig.subplots(1, 3)
    for name in (a, b):
        ds, c = datasets[name], colors[name]
        t = ds["t"].values
        _rel_band(strength, ds, c, label=_knob_title(name, ds))
        share.plot(t, 100 * active_share(ds).values, color=c, lw=2, label=_knob_title(name, ds))
        stop.plot(t, 100 * stopped_share(ds).values, color=c, lw=2, label=_knob_title(name, ds), drawstyle="steps-post")
        lat = np.nanmedian(last_active_t(ds).values) if np.isfinite(last_active_t(ds).values).any() else None
        if lat is not None:
            stop.axvline(lat, color=c, lw=1, ls="--")
    lim = _log_limits(datasets, [a, b])
    if lim:
        strength.set_yscale("log")
        strength.set_ylim(*lim)
    strength.set_ylabel("‖correction‖ / ‖score‖")
    strength.axhline(0.05, color="0.3", lw=0.8, ls=":")
    strength.set_title("Strength", fontsize=11)
    strength.legend(frameon=False, fontsize=8, loc="upper right")
    plots.style_legend(fig, REL_STYLES, loc="outside lower center", ncol=4, fontsize=9)
    share.set_ylabel("trajectories with SPELL active (%)")
    share.set_title("Active share", fontsize=11)
    share.legend(frameon=False, fontsize=8)
    stop.set_ylabel("ever-active trajectories\nstopped for good (%)")
    stop.set_title("Stopping time (dashed: median last active t)", fontsize=11)
    nmap = common_map(datasets, (a, b))
    for ax in (strength, share, stop):
        plots.t_axis(ax, np.concatenate([datasets[n]["t"].values for n in (a, b)]))
        _noise(ax, nmap)
    for ax in (share, stop):
        ax.set_ylim(-2, 102)
    fig.suptitle(f"Overcompensation: {a} vs {b}", fontweight="bold")
    return fig


# ----------------------------------------------------------------------------------------------- every figure

FIGURES = {  # file stem -> figure function; the figures 1-6
    "relative_magnitude": plot_relative_magnitude,
    "active_share": plot_active_share,
    "last_active": plot_last_active,
    "active_by_source": plot_active_by_source,
    "overcompensation": plot_overcompensation,
    "gallery": plot_gallery,
}


def make_figures(datasets: dict, gallery: dict | None = None) -> dict:
    """Every figure that the run's groups allow (overcompensation needs `iterative` and `overcomp`; the gallery
    needs `image` or `x0`), as {name: Figure}. gallery: plot_gallery's keywords (setup,
    conditions)."""
    figs = {}
    for name, fn in FIGURES.items():
        if name == "overcompensation" and not {"iterative", "overcomp"} <= set(datasets):
            continue
        if name == "gallery" and not any("image" in datasets[n] or "x0" in datasets[n] for n in setups(datasets)):
            continue
        figs[name] = fn(datasets, **(gallery or {})) if name == "gallery" else fn(datasets)
    return figs


def figures(datasets: dict, result: dict) -> dict:
    """The driver's figures: every figure, the gallery as `statistics` was asked to draw it."""
    return make_figures(datasets, result["gallery"])


def own_figures(datasets: dict, name: str) -> dict:
    """The figures of one setup alone, for its own W&B run: relative magnitude, active share, and its gallery
    where the store has images and the baseline (the reference run gets none)."""
    ref = reference_of(datasets)
    if name == ref:
        return {}
    one = subset(datasets, [name])
    figs = {"setup/relative_magnitude": plot_relative_magnitude(one), "setup/active_share": plot_active_share(one)}
    if ref is not None and ("image" in datasets[name] or "x0" in datasets[name]):
        figs["setup/gallery"] = plot_gallery(subset(datasets, [name, ref]), name, baseline=ref)
    return figs


def wandb_runs(datasets: dict, result: dict, images: dict) -> list:
    """One W&B run per store group (each setup, and the radius-0 `baseline` as a reference): the group's attrs as
    config, its summary row as run summary, the whole summary table, every figure beside the setup's own
    (`own_figures`), a per-sample table and the per-t curves (measured samples)."""
    from .wandb_log import RunLog, config_from_attrs, sample_rows

    table = result["table"]
    every = every_round(datasets)
    names = setups(datasets) + [n for n in datasets if n == reference_of(datasets)]
    return [
        RunLog(
            name=name,
            config={"setup": name, **config_from_attrs(datasets[name].attrs)},
            samples=sample_rows(every[name]),
            tags=("sparsity", model_name(datasets[name].attrs)),
            summary=table.loc[name].to_dict() if name in table.index else summary(datasets[name]),
            tables={"summary": table},
            images={**images, **own_figures(datasets, name)},
            curves=curves(datasets[name]),
            x="t",
            series={"relative magnitude (active)": ["rel_q10_active", "rel_median_active", "rel_q90_active",
                                                   "rel_max"],
                    "active share": ["active_share", "stopped_share"],
                    "active shields by source": [f"active_{s}_mean" for s in schema.SOURCES]},
        )
        for name in names
    ]
