"""How often, how strongly and how long SPELL acts, per sampling step (paper Section 4.4, Appendix F, Figures 5, 6, 9-15).

Pure functions over the run store's Datasets (design.md section 5), figure functions that return matplotlib
Figures, and the edges: `render_all` (files), `log_to_wandb` (W&B), `main` (the command line)

    python -m spell_lab.analysis.sparsity RUN_DIR [--wandb offline|disabled|online]

Definitions, used by every function below:
- A trajectory is *active* at a step when `active_shields > 0`: x0_hat lies inside at least one shield, so its
  ReLU correction is non-zero (barring exact cancellation of opposite intra-batch pushes).
- *Active share* at a step: the fraction of all trajectories (samples) that are active there.
- *Share active at t = 0.8*: the active share at the step whose t is nearest 0.8; where t repeats (Heun-type
  samplers evaluate twice per t) the first such step, i.e. the earlier one in sampling order.
- *Relative magnitude quantiles*: per step, linear-interpolation quantiles (numpy's default) across samples of
  `relative_magnitude`, either over the trajectories *active* at that step (`over="active"`, the default; NaN
  where none is active) or over *all* trajectories (`over="all"`, inactive ones count as 0). The maximum is over
  all trajectories (inactive ones are 0, so it is the same for both).
- *Last active t*: t at a trajectory's last active step (NaN if never active). Its activity *stops for good*
  when its active steps form one unbroken run; a trajectory still active at the final step also counts as one run.
- *Stopped share* at step i: among trajectories ever active, those whose last active step is before i.

Which samples: functions of one Dataset use every sample they are given. Functions of a run (a dict of groups:
`summary_table`, the curve figures, `log_to_wandb`) first keep each group's measured samples (`measured`: rounds
from its `measure_from_round` on; the rounds before only fill the memory). The gallery shows every round.
The group `baseline` (the `iterative` plan at radius 0) is a reference: it is left out of curves and tables and
serves the gallery as "the same seeds without SPELL".
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from . import plots

REFERENCE = "baseline"
SOURCES = ("batch", "memory", "protected")
REQUIRED = ("relative_magnitude", "active_shields") + tuple(f"active_{s}" for s in SOURCES)
SUMMARY_KEYS = (  # the table's columns, in order; the first seven are the contract
    "n_samples",
    "active_at_0.8",
    "active_at_0.6",
    "share_steps_rel_below_5pct",  # over active (sample, step) pairs
    "max_relative_magnitude",
    "median_last_active_t",  # over trajectories ever active
    "share_changed",  # `intervened`: ever active
    "share_steps_rel_below_5pct_all",  # over all (sample, step) pairs: inactive steps count as 0 < 5%
    "median_relative_magnitude_active",  # over active (sample, step) pairs pooled
    "stops_for_good",  # among ever-active trajectories
    "active_at_end",  # active share at the final step: repellency that runs until t -> 0
)


# ----------------------------------------------------------------------------------------------- checks

def check_dataset(ds: xr.Dataset, name: str = "dataset") -> xr.Dataset:
    """Raise early, naming what is missing, if ds is not a sparsity group of the store contract."""
    missing = [v for v in REQUIRED if v not in ds.variables] + [c for c in ("t",) if c not in ds.coords]
    if missing or "sample" not in ds.dims or "step" not in ds.dims:
        raise ValueError(
            f"group {name!r} is not a sparsity group (design.md section 5): missing {missing or 'dims sample/step'}; "
            f"it has {sorted(ds.variables)}. Regenerate it with `python -m spell_lab.experiments.sparsity`."
        )
    return ds


def setups(datasets: dict) -> list[str]:
    """The analysed setups of a run, in the paper's order; the radius-0 reference group is not one of them."""
    return plots.ordered(n for n in datasets if n != REFERENCE)


def measured(datasets: dict) -> dict:
    """Each setup restricted to the samples it measures: rounds from its `measure_from_round` attribute on (the
    first 8 of `iterative`, the 64 of `previous64` only fill the memory and cannot be repelled). The dict-level
    functions (summary_table, the curve figures, W&B) apply this; per-Dataset functions take samples as given."""
    from ..store import measured as one

    return {name: one(ds) for name, ds in datasets.items()}


def drop_unwritten(ds: xr.Dataset) -> xr.Dataset:
    """Samples of an interrupted run that were never written (all-NaN `relative_magnitude`) are left out."""
    written = ds["relative_magnitude"].notnull().any("step")
    return ds if bool(written.all()) else ds.isel(sample=np.flatnonzero(written.values))


# ----------------------------------------------------------------------------------------------- per step

def active(ds: xr.Dataset) -> xr.DataArray:
    """(sample, step) bool: at least one shield is active, so SPELL's correction is non-zero."""
    return ds["active_shields"] > 0


def active_share(ds: xr.DataArray | xr.Dataset) -> xr.DataArray:
    """(step,) share of all trajectories active at each step (paper Fig. 5b)."""
    return active(ds).mean("sample")


def nearest_step(ds: xr.Dataset, t: float) -> int:
    """Index of the step whose t is nearest `t`; ties (repeated t) go to the first, earlier step."""
    return int(np.argmin(np.abs(ds["t"].values - t)))  # argmin returns the first minimiser


def active_at(ds: xr.Dataset, t: float) -> float:
    """Share of trajectories active at the step nearest t (see `nearest_step`)."""
    return float(active_share(ds).isel(step=nearest_step(ds, t)))


def relative_magnitude_quantiles(ds: xr.Dataset, q=(0.1, 0.5, 0.9), over: str = "active") -> xr.DataArray:
    """(quantile, step) quantiles of relative magnitude across samples, over "active" trajectories or "all"."""
    rel = ds["relative_magnitude"]
    if over == "active":
        rel = rel.where(active(ds))  # inactive -> NaN, skipped; a step with none active -> NaN
    elif over != "all":
        raise ValueError(f"over must be 'active' or 'all', got {over!r}.")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN steps are expected: nothing active there
        return rel.quantile(list(q), dim="sample", skipna=True)


def relative_magnitude_max(ds: xr.Dataset) -> xr.DataArray:
    """(step,) maximum relative magnitude across all trajectories (0 where none is active)."""
    return ds["relative_magnitude"].max("sample", skipna=True)


def active_by_source(ds: xr.Dataset, stat: str = "mean") -> xr.DataArray:
    """(source, step): mean number of active shields per trajectory from each source ("mean"), or the share of
    trajectories with at least one active shield from it ("share"). The means add up to mean `active_shields`."""
    if stat not in ("mean", "share"):
        raise ValueError(f"stat must be 'mean' or 'share', got {stat!r}.")
    per = [(ds[f"active_{s}"] > 0) if stat == "share" else ds[f"active_{s}"].clip(min=0) for s in SOURCES]
    return xr.concat(per, dim=pd.Index(SOURCES, name="source")).mean("sample")


def stopped_share(ds: xr.Dataset) -> xr.DataArray:
    """(step,) among ever-active trajectories, the share whose repellency has stopped for good before each step."""
    last = last_active_step(ds)
    ever = last >= 0
    steps = np.arange(ds.sizes["step"])
    share = ((last.values[ever.values, None] < steps[None, :]).mean(0) if bool(ever.any())
             else np.full(steps.size, np.nan))
    return xr.DataArray(share, dims="step", coords=ds["t"].coords)


# ----------------------------------------------------------------------------------------------- per sample

def _active_np(ds: xr.Dataset) -> np.ndarray:
    return active(ds).transpose("sample", "step").values


def last_active_step(ds: xr.Dataset) -> xr.DataArray:
    """(sample,) index of the last active step; -1 where never active (recomputed from the counts)."""
    a = _active_np(ds)
    last = a.shape[1] - 1 - np.argmax(a[:, ::-1], axis=1)
    return xr.DataArray(np.where(a.any(1), last, -1), dims="sample")


def last_active_t(ds: xr.Dataset) -> xr.DataArray:
    """(sample,) t at the last active step; NaN where never active."""
    last = last_active_step(ds).values
    t = ds["t"].values.astype(float)
    return xr.DataArray(np.where(last >= 0, t[np.maximum(last, 0)], np.nan), dims="sample")


def active_runs(ds: xr.Dataset) -> xr.DataArray:
    """(sample,) number of separate runs of consecutive active steps: 0 never active, 1 stops for good, >1 restarts."""
    a = _active_np(ds)
    starts = a[:, :1].sum(1) + (a[:, 1:] & ~a[:, :-1]).sum(1)  # rising edges
    return xr.DataArray(starts, dims="sample")


def stops_for_good(ds: xr.Dataset) -> float:
    """Among trajectories ever active, the share whose activity never resumes once it stops (one unbroken run)."""
    runs = active_runs(ds).values
    return float(np.mean(runs[runs > 0] == 1)) if (runs > 0).any() else float("nan")


def ever_active(ds: xr.Dataset) -> np.ndarray:
    """(sample,) bool: the stored `intervened` flag, or any active step where the store lacks it."""
    return ds["intervened"].values.astype(bool) if "intervened" in ds else _active_np(ds).any(1)


# ----------------------------------------------------------------------------------------------- summary

def share_steps_below(ds: xr.Dataset, threshold: float = 0.05, over: str = "active") -> float:
    """Share of (sample, step) pairs with relative magnitude < threshold, over active pairs or all written pairs."""
    if over not in ("active", "all"):
        raise ValueError(f"over must be 'active' or 'all', got {over!r}.")
    rel = ds["relative_magnitude"].transpose("sample", "step").values
    keep = np.isfinite(rel) & (_active_np(ds) if over == "active" else True)  # NaN: unwritten, never counted
    return float(np.mean(rel[keep] < threshold)) if keep.any() else float("nan")


def summary(ds: xr.Dataset) -> dict:
    """One setup's numbers (keys: SUMMARY_KEYS; definitions in the module docstring). NaN where undefined."""
    rel = ds["relative_magnitude"].transpose("sample", "step").values
    act = _active_np(ds)
    rel_active = rel[act & np.isfinite(rel)]
    lat = last_active_t(ds).values
    out = {
        "n_samples": int(ds.sizes["sample"]),
        "active_at_0.8": active_at(ds, 0.8),
        "active_at_0.6": active_at(ds, 0.6),
        "share_steps_rel_below_5pct": share_steps_below(ds, 0.05, "active"),
        "max_relative_magnitude": float(np.nanmax(rel)) if np.isfinite(rel).any() else float("nan"),
        "median_last_active_t": float(np.nanmedian(lat)) if np.isfinite(lat).any() else float("nan"),
        "share_changed": float(ever_active(ds).mean()) if ds.sizes["sample"] else float("nan"),
        "share_steps_rel_below_5pct_all": share_steps_below(ds, 0.05, "all"),
        "median_relative_magnitude_active": float(np.median(rel_active)) if rel_active.size else float("nan"),
        "stops_for_good": stops_for_good(ds),
        "active_at_end": float(act[:, -1].mean()) if act.size else float("nan"),
    }
    assert tuple(out) == SUMMARY_KEYS
    return out


_summary = summary  # for functions whose `summary` argument is the table


def summary_table(datasets: dict) -> pd.DataFrame:
    """One row per setup (paper order, the baseline reference left out, measured samples only), columns
    SUMMARY_KEYS."""
    datasets = measured(datasets)
    rows = {name: summary(datasets[name]) for name in setups(datasets)}
    table = pd.DataFrame.from_dict(rows, orient="index", columns=list(SUMMARY_KEYS))
    table.index.name = "setup"
    return table


def curves(ds: xr.Dataset) -> pd.DataFrame:
    """The per-t curves of one setup as a table, one row per step (what the figures draw and W&B logs)."""
    q = relative_magnitude_quantiles(ds, (0.1, 0.5, 0.9), "active")
    src = active_by_source(ds, "mean")
    data = {
        "t": ds["t"].values.astype(float),
        "active_share": active_share(ds).values,
        "rel_q10_active": q.isel(quantile=0).values,
        "rel_median_active": q.isel(quantile=1).values,
        "rel_q90_active": q.isel(quantile=2).values,
        "rel_median_all": relative_magnitude_quantiles(ds, (0.5,), "all").isel(quantile=0).values,
        "rel_max": relative_magnitude_max(ds).values,
        "stopped_share": stopped_share(ds).values,
        **{f"active_{s}_mean": src.sel(source=s).values for s in SOURCES},
    }
    return pd.DataFrame(data, index=pd.RangeIndex(ds.sizes["step"], name="step"))


def format_table(table: pd.DataFrame) -> str:
    """The summary table as aligned text: shares as percentages, t and magnitudes to 3 decimals."""
    pct = [c for c in table.columns if c.startswith(("active_at", "share", "stops"))]
    shown = table.copy().astype(object)
    for c in table.columns:
        fmt = (lambda v: f"{100 * v:.1f}%") if c in pct else (lambda v: f"{v:.3f}") if c != "n_samples" else str
        shown[c] = [("—" if isinstance(v, float) and np.isnan(v) else fmt(v)) for v in table[c]]
    return shown.T.to_string()  # setups as columns: 11 rows stay readable in a terminal


# ----------------------------------------------------------------------------------------------- figures

def _all_t(datasets, names) -> np.ndarray:
    return np.concatenate([datasets[n]["t"].values for n in names]) if names else np.array([])


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
    datasets = measured(datasets)
    names = setups(datasets)
    colors = plots.setup_colors(names)
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
        if ax.get_subplotspec().is_first_col():
            ax.set_ylabel("‖correction‖ / ‖score‖")
    plots.style_legend(fig, REL_STYLES, loc="outside lower center", ncol=4)
    fig.suptitle("Relative magnitude of the SPELL correction over t"
                 + (" (log scale)" if lim else " (no active step)"), fontweight="bold")
    return fig


@plots.styled
def plot_active_share(datasets: dict):
    """Fig. 5b: share of trajectories with a non-zero correction at each t, one line per setup."""
    datasets = measured(datasets)
    names = setups(datasets)
    colors = plots.setup_colors(names)
    fig = plots.Figure(figsize=(7.5, 4.2), layout="constrained")
    ax = fig.subplots()
    for name in names:
        ds = datasets[name]
        ax.plot(ds["t"].values, 100 * active_share(ds).values, color=colors[name], lw=2, label=name)
    plots.t_marks(ax)
    plots.t_axis(ax, np.concatenate([datasets[n]["t"].values for n in names]) if names else None)
    ax.set_ylim(-2, 102)
    ax.set_ylabel("trajectories with SPELL active (%)")
    ax.set_title("How many trajectories SPELL still corrects", fontweight="bold")
    ax.legend(frameon=False, loc="upper right")
    return fig


@plots.styled
def plot_last_active(datasets: dict):
    """Fig. 9b: when repellency stops for good. Left, the share of ever-active trajectories that have stopped by
    each t; right, the distribution of the last active t per setup."""
    import seaborn as sns

    datasets = measured(datasets)
    names = setups(datasets)
    colors = plots.setup_colors(names)
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
    datasets = measured(datasets)
    names = setups(datasets)
    fig, axes, bottom = plots.grid(len(names))  # own y scale: 64 memory shields would flatten the others
    for ax, name, b in zip(axes, names, bottom):
        ds = datasets[name]
        t = ds["t"].values
        src = active_by_source(ds, "mean")
        for s in SOURCES:
            ax.plot(t, src.sel(source=s).values, color=plots.SOURCE_COLORS[s], lw=2, label=s)
        ax.plot(t, ds["active_shields"].clip(min=0).mean("sample").values, color="0.2", lw=1, ls="--",
                label="all sources")
        ax.set_title(_knob_title(name, ds), fontsize=10)
        plots.t_axis(ax, _all_t(datasets, names), label=b)
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
    datasets = measured({a: datasets[a], b: datasets[b]})
    colors = plots.setup_colors([a, b])
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
    for ax in (strength, share, stop):
        plots.t_axis(ax, np.concatenate([datasets[n]["t"].values for n in (a, b)]))
    for ax in (share, stop):
        ax.set_ylim(-2, 102)
    fig.suptitle(f"Overcompensation: {a} vs {b}", fontweight="bold")
    return fig


def _gray(ds: xr.Dataset, idx: np.ndarray) -> tuple[np.ndarray, bool]:
    """Images of samples idx as (n, H, W[, 3]); True when already uint8 RGB. Without `image`: x0 as grayscale."""
    if "image" in ds:
        return ds["image"].isel(sample=idx).transpose("sample", ...).values, True
    if "x0" not in ds:
        raise ValueError("the gallery needs `image` or `x0` in the group; neither is stored.")
    x0 = ds["x0"].isel(sample=idx).transpose("sample", ...)
    dims, arr = x0.dims[1:], x0.values.astype(float)
    if arr.ndim == 2:  # flat vectors: a square image when the length allows, else a one-row strip
        side = int(round(np.sqrt(arr.shape[1])))
        arr = arr.reshape(len(idx), side, side) if side * side == arr.shape[1] else arr[:, None, :]
    elif arr.ndim >= 4:  # (C, H, W) or (H, W, C): mean over the channel axis
        named = [i for i, d in enumerate(dims) if "chan" in str(d).lower()]
        ch = named[0] if named else (0 if arr.shape[1] <= 4 else len(dims) - 1 if arr.shape[-1] <= 4 else 0)
        arr = arr.mean(axis=1 + ch)
        arr = arr.reshape(len(idx), -1, arr.shape[-1]) if arr.ndim > 3 else arr
    return arr, False


def _order(ds: xr.Dataset) -> np.ndarray:
    """Sample indices in generation order: round, then batch position."""
    keys = [ds[k].values for k in ("position", "round") if k in ds]
    return np.lexsort(keys) if keys else np.arange(ds.sizes["sample"])


def _label(v) -> str:
    v = v.decode() if isinstance(v, bytes) else v
    s = str(v.item() if hasattr(v, "item") else v)
    return s if len(s) <= 18 else s[:17] + "…"


@plots.styled
def plot_gallery(datasets: dict, setup: str = "iterative", baseline: str = REFERENCE, max_conditions: int = 2,
                 max_images: int = 16, ncols: int = 8):
    """Fig. 6: per condition, images in generation order (round, position); each row of SPELL images sits under
    the same seeds without SPELL (group `baseline`); images SPELL changed (`intervened`) are outlined in orange."""
    if setup not in datasets:
        setup = setups(datasets)[0] if setups(datasets) else setup
    if setup not in datasets:
        raise KeyError(f"no group to draw a gallery from; the store has {sorted(datasets)}.")
    ds, base = datasets[setup], datasets.get(baseline)
    cond = ds["condition"].values if "condition" in ds else np.zeros(ds.sizes["sample"], int)
    order = _order(ds)
    conditions = list(dict.fromkeys(cond[order]))[:max_conditions]
    picks = [order[cond[order] == c][:max_images] for c in conditions]  # per condition, generation order
    chosen = np.concatenate(picks) if picks else np.array([], int)
    # the baseline partner of each chosen sample: same condition and seed
    partner = np.full(chosen.size, -1)
    if base is not None:
        bkey = {(_label(c), int(s)): i for i, (c, s) in enumerate(zip(
            base["condition"].values, base["seed"].values))} if {"condition", "seed"} <= set(base.variables) else {}
        partner = np.array([bkey.get((_label(cond[i]), int(ds["seed"].values[i])), -1) for i in chosen], int)
    imgs, is_rgb = _gray(ds, chosen) if chosen.size else (np.zeros((0, 1, 1)), True)
    has = partner >= 0
    bimgs = _gray(base, partner[has])[0] if has.any() else np.zeros((0,) + imgs.shape[1:])
    if not is_rgb:  # float x0: one shared scale for SPELL and baseline panels
        imgs, bimgs = plots.to_gray01([imgs, bimgs])
    else:
        imgs, bimgs = imgs / 255.0, bimgs / 255.0
    b_of = dict(zip(np.flatnonzero(has), bimgs))
    changed = ever_active(ds)[chosen] if chosen.size else np.array([], bool)

    pair = base is not None
    ncols = max(1, min(ncols, max((len(p) for p in picks), default=1)))
    row_blocks = [(ci, p[j:j + ncols]) for ci, p in enumerate(picks) for j in range(0, len(p), ncols)]
    nrows = len(row_blocks) * (2 if pair else 1)
    fig = plots.Figure(figsize=(1.15 * ncols + 1.4, 1.3 * max(nrows, 1) + 1.0), layout="constrained")
    axes = fig.subplots(max(nrows, 1), ncols, squeeze=False)
    pos = {s: k for k, s in enumerate(chosen)}
    r = 0
    for ci, block in row_blocks:
        for kind in (("without", "with") if pair else ("with",)):
            for j in range(ncols):
                ax = axes[r, j]
                ax.set_xticks([]), ax.set_yticks([])
                for sp in ax.spines.values():
                    sp.set_visible(False)
                if j >= len(block):
                    ax.axis("off")
                    continue
                k = pos[block[j]]
                img = imgs[k] if kind == "with" else b_of.get(k)
                if img is None:
                    ax.text(0.5, 0.5, "no\nbaseline", ha="center", va="center", fontsize=7, transform=ax.transAxes)
                else:
                    ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
                if kind == "with" and changed[k]:
                    for sp in ax.spines.values():
                        sp.set_visible(True), sp.set_edgecolor(plots.HIGHLIGHT), sp.set_linewidth(3.5)
                if kind == ("without" if pair else "with"):  # generation order above the first row of a pair
                    rd = ds["round"].values[block[j]] if "round" in ds else 0
                    ax.set_title(f"#{_offset(picks[ci], block) + j + 1} · round {rd}", fontsize=7)
            axes[r, 0].set_ylabel(f"{_cond_label(conditions[ci], ds.attrs.get('condition_names'))}\n{kind} SPELL",
                                  fontsize=8)
            axes[r, 0].yaxis.set_visible(True)
            r += 1
    note = "" if pair else f"\n(no {baseline!r} group: the same seeds without SPELL are not shown)"
    fig.suptitle(f"{setup}: images in generation order, SPELL-changed ones outlined in orange{note}",
                 fontweight="bold", fontsize=10)
    return fig


def _cond_label(c, names=None) -> str:
    """A condition's name from the group's `condition_names` attribute where it has one, else its value."""
    s = _label(c)
    if isinstance(names, (list, tuple)) and s.lstrip("-").isdigit() and 0 <= int(s) < len(names) and names[int(s)]:
        return _label(names[int(s)])
    return f"condition {s}" if s.lstrip("-").isdigit() else s


def _offset(pick: np.ndarray, block: np.ndarray) -> int:
    """Index of block's first sample within its condition's generation order."""
    return int(np.flatnonzero(pick == block[0])[0])


# ----------------------------------------------------------------------------------------------- edges

FIGURES = {  # file stem -> figure function; the figures 1-6
    "relative_magnitude": plot_relative_magnitude,
    "active_share": plot_active_share,
    "last_active": plot_last_active,
    "active_by_source": plot_active_by_source,
    "overcompensation": plot_overcompensation,
    "gallery": plot_gallery,
}


def make_figures(datasets: dict) -> dict:
    """Every figure that the run's groups allow (overcompensation needs `iterative` and `overcomp`; the gallery
    needs `image` or `x0`), as {name: Figure}."""
    figs = {}
    for name, fn in FIGURES.items():
        if name == "overcompensation" and not {"iterative", "overcomp"} <= set(datasets):
            continue
        if name == "gallery" and not any("image" in datasets[n] or "x0" in datasets[n] for n in setups(datasets)):
            continue
        figs[name] = fn(datasets)
    return figs


def render_all(datasets: dict, out_dir) -> dict[str, dict[str, Path]]:
    """Write each figure as PNG and PDF into out_dir; returns {name: {"png": path, "pdf": path}}."""
    return {name: plots.save(fig, out_dir, name) for name, fig in make_figures(datasets).items()}


def log_to_wandb(datasets: dict, figures: dict, summary: pd.DataFrame, *, project: str = "spell_lab",
                 group: str, run_dir, mode: str = "offline") -> list[Path]:
    """One W&B run per store group (each setup, and the radius-0 `baseline` as a reference), all in `group`: the
    group's attrs as config, its summary row as run summary, the whole summary table, every figure (PNG path,
    {"png": path} or Figure) and the per-t curves (measured samples). Offline by default, written under run_dir;
    mode="disabled" logs nothing. Returns the W&B run directories."""
    from .wandb_log import RunLog, config_from_attrs, log_runs

    images = {k: (v["png"] if isinstance(v, dict) else v) for k, v in figures.items()}
    datasets = measured(datasets)
    names = setups(datasets) + [n for n in datasets if n == REFERENCE]
    runs = [
        RunLog(
            name=name,
            config={"setup": name, **config_from_attrs(datasets[name].attrs)},
            summary=summary.loc[name].to_dict() if name in summary.index else _summary(datasets[name]),
            tables={"summary": summary},
            images=images,
            curves=curves(datasets[name]),
            x="t",
            series={"relative magnitude (active)": ["rel_q10_active", "rel_median_active", "rel_q90_active",
                                                   "rel_max"],
                    "active share": ["active_share", "stopped_share"],
                    "active shields by source": [f"active_{s}_mean" for s in SOURCES]},
        )
        for name in names
    ]
    return log_runs(runs, project=project, group=group, run_dir=run_dir, mode=mode, job_type="sparsity-analysis")


def load_run(run_dir) -> dict[str, xr.Dataset]:
    """The run's groups as Datasets, checked against the contract; unwritten samples dropped. Clear errors for a
    missing directory, a missing store or a store without sparsity groups."""
    run_dir = Path(run_dir)
    if run_dir.name == "store.zarr":  # the store itself is accepted too
        run_dir = run_dir.parent
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory {run_dir} does not exist; pass a directory made by "
                                f"`python -m spell_lab.experiments.sparsity` (runs/sparsity/<run-name>).")
    store = run_dir / "store.zarr"
    if not store.exists():
        raise FileNotFoundError(f"{run_dir} holds no store.zarr; is it a run directory? "
                                f"(found: {sorted(p.name for p in run_dir.iterdir())[:10]})")
    from ..store import open_run

    datasets = open_run(run_dir)
    names = setups(datasets)
    if not names:
        raise ValueError(f"{store} has no sparsity setup groups (found {sorted(datasets)}); expected some of "
                         f"{list(plots.SETUP_ORDER)}.")
    out = {}
    for name, ds in datasets.items():
        check_dataset(ds, name)
        small = {v: ds[v].load() for v in ds.data_vars if v not in ("x0", "image")}  # read once; images stay lazy
        out[name] = drop_unwritten(ds.assign(small))
    return out


def analyse_run(run_dir, *, wandb_mode: str = "offline", project: str = "spell_lab", group: str | None = None,
                out_dir=None, datasets: dict | None = None) -> dict:
    """Render the figures into RUN_DIR/figures, build the summary table and log to W&B; no model runs.
    Returns {"table", "figures", "wandb_dirs", "figures_dir"}. The experiment command calls this after sampling."""
    run_dir = Path(run_dir)
    datasets = load_run(run_dir) if datasets is None else datasets
    out_dir = Path(out_dir) if out_dir is not None else run_dir / "figures"
    figures = render_all(datasets, out_dir)
    table = summary_table(datasets)
    table.to_csv(out_dir / "summary.csv")
    wandb_dirs = log_to_wandb(datasets, figures, table, project=project, group=group or f"sparsity-{run_dir.name}",
                              run_dir=run_dir, mode=wandb_mode)
    return {"table": table, "figures": figures, "wandb_dirs": wandb_dirs, "figures_dir": out_dir}


def latest_run(root="runs/sparsity") -> Path:
    """The most recently modified run directory under root (relative paths also tried from the parent of cwd,
    so notebooks/ finds ../runs)."""
    for base in (Path(root), Path("..") / root):
        runs = sorted((p for p in base.glob("*") if (p / "store.zarr").exists()), key=lambda p: p.stat().st_mtime)
        if runs:
            return runs[-1].resolve()
    raise FileNotFoundError(f"no run under {root}; run `python -m spell_lab.experiments.sparsity` first "
                            f"or set SPELL_RUN_DIR to a run directory.")


def rerender_main(argv, *, experiment: str, load_run, analyse_run, format_table, extra_lines=lambda res: []) -> int:
    """`python -m spell_lab.analysis.EXPERIMENT RUN_DIR`: figures, table and W&B again from a store, no model run."""
    p = argparse.ArgumentParser(prog=f"python -m spell_lab.analysis.{experiment}",
                                description=f"Re-render the {experiment} figures and table of a run from its store "
                                            "(no model is run).")
    p.add_argument("run_dir", type=Path, help=f"run directory, e.g. runs/{experiment}/<run-name>")
    p.add_argument("--wandb", choices=("offline", "disabled", "online"), default="offline",
                   help="W&B logging: offline into RUN_DIR/wandb (default), disabled, or online (uploads)")
    p.add_argument("--project", default="spell_lab", help="W&B project (default: spell_lab)")
    p.add_argument("--group", default=None, help=f"W&B group (default: {experiment}-<run-name>)")
    p.add_argument("--out", type=Path, default=None, help="figure directory (default: RUN_DIR/figures)")
    args = p.parse_args(argv)
    try:
        datasets = load_run(args.run_dir)
    except (FileNotFoundError, ValueError) as e:
        p.error(str(e))
    res = analyse_run(args.run_dir, wandb_mode=args.wandb, project=args.project, group=args.group, out_dir=args.out,
                      datasets=datasets)
    print(format_table(res["table"]))
    for line in extra_lines(res):
        print(line)
    print(f"\nfigures: {res['figures_dir']}  ({', '.join(res['figures'])}; PNG and PDF)")
    for d in res["wandb_dirs"]:
        print(f"wandb: {d}" + ("   (upload: wandb sync DIR)" if args.wandb == "offline" else ""))
    return 0


def main(argv=None) -> int:
    return rerender_main(argv, experiment="sparsity", load_run=load_run, analyse_run=analyse_run,
                         format_table=format_table)


if __name__ == "__main__":
    sys.exit(main())
