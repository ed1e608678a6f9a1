"""The radius ablation (paper Section 4.3, Figure 3; Appendix D calibration; Appendix F on larger radii).

Pure functions over the run store's Datasets (docs/design.md section 5) and held-out real data, figure functions that
return matplotlib Figures, and its entry of the shared analysis driver (`ANALYSIS`: statistics, figures, files,
W&B runs; `load_run`, `latest_run`, `analyse_run`, `main` come from `spell_lab.analysis.driver`)

    python -m spell_lab.analysis.radius RUN_DIR [--wandb offline|disabled|online]

Definitions:
- *Calibration* (Appendix D, `spell_lab.calibration`): the median over every within-condition pair of the L2
  distance between final outputs generated without SPELL; the grid is 16 radii linspace(0, 2 x median).
- A run has one store group per radius, `r00`, `r01`, ... in increasing radius; `r00` is radius 0: the same seeds
  and protocol without SPELL, the *baseline* every figure draws as a horizontal line.
- *Per-condition metrics* (`spell_lab.analysis.quality`): precision, recall, density, coverage, Vendi and Fréchet
  distance within each condition against its held-out real samples, then averaged over conditions with equal
  weight; `real_vendi` is the reference line of the Vendi panels.
- *Sparsity* per radius (over all measured trajectories, `spell_lab.analysis.activity`): `mean_active_share` is
  the share of (trajectory, step) pairs with a non-zero correction, i.e. the active share averaged over t;
  `median_last_active_t` is over trajectories ever active (NaN when none is); `share_changed` the share ever
  active; `active_at_end` the share still active at the final step.
"""

from __future__ import annotations

import json
import re
import sys

import numpy as np
import pandas as pd
import xarray as xr

from . import driver, plots
from .activity import active, active_share, activity_numbers, ever_active, last_active_t
from .gallery import condition_label, images
from .load import measured, model_name
from ..models import reference_data
from .quality import condition_metrics, generated

GROUP = re.compile(r"^r\d+$")
QUALITY = ("precision", "recall", "density", "coverage")
METRICS = QUALITY + ("vendi", "vendi_raw", "fd")
SPARSITY = ("mean_active_share", "active_at_0.8", "active_at_0.6", "active_at_end", "share_changed",
            "median_last_active_t")
LABELS = {
    "precision": "precision ↑", "recall": "recall ↑", "density": "density ↑", "coverage": "coverage ↑",
    "vendi": "Vendi (features) ↑", "vendi_raw": "Vendi (raw x0) ↑", "fd": "Fréchet distance ↓",
}
RADIUS_LABEL = "repellency radius r"


def group_name(i: int) -> str:
    return f"r{i:02d}"


# ----------------------------------------------------------------------------------------------- run groups

def reference_row(table: pd.DataFrame) -> pd.Series | None:
    """The table's row of radius 0 (the same seeds without SPELL, the baseline every figure draws), or None."""
    rows = table[table["radius"] == 0]
    return rows.iloc[0] if len(rows) else None


def radius_groups(datasets: dict) -> list[str]:
    """The radius groups (`r00`, `r01`, ...) of a run, in increasing radius."""
    names = [n for n in datasets if GROUP.match(n)]
    return sorted(names, key=lambda n: (float(datasets[n].attrs.get("radius", np.nan)), n))


def radius_of(ds: xr.Dataset) -> float:
    return float(ds.attrs["radius"])


def calibration_of(ds: xr.Dataset) -> dict:
    """The calibration stored in a group's config attribute ({} when absent)."""
    cfg = ds.attrs.get("config")
    try:
        cfg = json.loads(cfg) if isinstance(cfg, str) else (cfg or {})
    except json.JSONDecodeError:
        return {}
    return cfg.get("calibration") or {}


# ----------------------------------------------------------------------------------------------- metrics

def sparsity_row(ds: xr.Dataset) -> dict:
    """The repellency duration numbers of one radius group (definitions in the module docstring)."""
    acts = activity_numbers(ds)
    return {k: acts[k] for k in SPARSITY}


def metric_tables(datasets: dict, real_x, real_cond, features, k: int = 5) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(table, per_condition): one row per radius group (mean over conditions of each metric, then the sparsity
    numbers), and the long per-(group, condition) table behind the means. Measured samples only."""
    datasets = {n: measured(datasets[n]) for n in radius_groups(datasets)}
    if not datasets:
        raise ValueError("no radius groups (r00, r01, ...) in the run; make one with "
                         "`python -m spell_lab.experiments.radius`.")
    rf = features(real_x)
    long, rows = [], {}
    for name, ds in datasets.items():
        x0, cond = generated(ds)
        per = condition_metrics(x0, cond, real_x, real_cond, features, k, real_features=rf)
        per.insert(0, "radius", radius_of(ds))
        per.insert(0, "group", name)
        long.append(per)
        med = calibration_of(ds).get("median")
        rows[name] = {"radius": radius_of(ds), "radius_over_median": radius_of(ds) / med if med else np.nan,
                      "n_samples": int(ds.sizes["sample"]), "n_conditions": int(per["condition"].nunique()),
                      **{m: float(per[m].mean()) for m in METRICS}, **sparsity_row(ds)}
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "group"
    return table, pd.concat(long, ignore_index=True)


def format_table(table: pd.DataFrame) -> str:
    """The radius table as aligned text: one row per radius, shares as percentages."""
    cols = ["radius", "radius_over_median", *METRICS, "mean_active_share", "share_changed", "active_at_end",
            "median_last_active_t"]
    shown = table[[c for c in cols if c in table]].copy().astype(object)
    for c in shown.columns:
        pct = c in ("mean_active_share", "share_changed", "active_at_end")
        fmt = (lambda v: f"{100 * v:.1f}%") if pct else (lambda v: f"{v:.2f}") if c in ("radius", "fd") \
            else (lambda v: f"{v:.3f}")
        shown[c] = [("—" if isinstance(v, float) and np.isnan(v) else fmt(v)) for v in table[c]]
    shown = shown.rename(columns={"radius_over_median": "r/median", "mean_active_share": "active(mean t)",
                                  "share_changed": "changed", "median_last_active_t": "med_last_t",
                                  "active_at_end": "active@end"})
    return shown.to_string()


# ----------------------------------------------------------------------------------------------- figures

def _cmap():
    import matplotlib as mpl

    return mpl.colormaps["viridis"]


def _norm(table):
    from matplotlib.colors import Normalize

    r = table["radius"].to_numpy(float)
    return Normalize(vmin=float(r.min()), vmax=float(max(r.max(), r.min() + 1e-12)))


def _median_axis(ax, table):
    """A top x axis in multiples of the calibrated median, where the table knows it."""
    ratio = (table["radius_over_median"] / table["radius"]).replace([np.inf, -np.inf], np.nan).dropna()
    if len(ratio):
        s = float(ratio.iloc[0])
        top = ax.secondary_xaxis("top", functions=(lambda r: r * s, lambda m: m / s))
        top.set_xlabel("× calibrated median distance", fontsize=8)
        top.tick_params(labelsize=8)


@plots.styled
def plot_metrics(table: pd.DataFrame, per_condition: pd.DataFrame | None = None):
    """Fig. 3 (per metric): each metric against the radius; bold, the mean over conditions; thin grey, each
    condition; dashed, the baseline (radius 0, same seeds without SPELL)."""
    fig, axes, bottom = plots.grid(len(METRICS), ncols=4, panel=(3.5, 2.9))
    base = reference_row(table)
    color = plots.setup_colors(["mixed"])["mixed"]
    for ax, m, b in zip(axes, METRICS, bottom):
        if per_condition is not None:
            for _, g in per_condition.groupby("condition"):
                g = g.sort_values("radius")
                ax.plot(g["radius"], g[m], color="0.6", lw=0.7, alpha=0.6)
        ax.plot(table["radius"], table[m], color=color, lw=2, marker="o", ms=4)
        if base is not None:
            ax.axhline(base[m], color="0.2", lw=1, ls="--")
        ref = f"real_{m}"
        if per_condition is not None and ref in per_condition:
            ax.axhline(per_condition.drop_duplicates("condition")[ref].mean(), color="#d95f02", lw=1, ls=":")
        ax.set_title(LABELS[m], fontsize=10)
        ax.tick_params(labelbottom=True)
        if b:
            ax.set_xlabel(RADIUS_LABEL)
        if ax.get_subplotspec().is_first_row():
            _median_axis(ax, table)  # one scale for all panels: the top row carries it
    entries = [("mean over conditions", "line"), ("one condition", "thin"), ("no SPELL (r = 0, same seeds)", "dashed"),
               ("held-out real data", "dotted")]
    _legend(fig, entries, color)
    n = int(table["n_samples"].iloc[0]) if len(table) else 0
    nc = int(table["n_conditions"].iloc[0]) if len(table) else 0
    fig.suptitle(f"Metrics against the repellency radius ({nc} conditions, {n} samples per radius, "
                 f"per-condition metrics averaged)", fontweight="bold")
    return fig


def _legend(fig, entries, color):
    from matplotlib.lines import Line2D

    style = {"line": dict(color=color, lw=2, marker="o", ms=4), "thin": dict(color="0.6", lw=0.7),
             "dashed": dict(color="0.2", lw=1, ls="--"), "dotted": dict(color="#d95f02", lw=1, ls=":")}
    handles = [Line2D([], [], **style[k]) for _, k in entries]
    fig.legend(handles, [e for e, _ in entries], loc="outside lower center", ncol=len(entries), frameon=False)


@plots.styled
def plot_fronts(table: pd.DataFrame):
    """Fig. 3 (fronts): precision against recall and against Vendi, one point per radius coloured by radius,
    joined in radius order; the star is the baseline (no SPELL)."""
    from matplotlib.cm import ScalarMappable

    fig = plots.Figure(figsize=(11, 4.4), layout="constrained")
    axes = fig.subplots(1, 2)
    cmap, norm = _cmap(), _norm(table)
    t = table.sort_values("radius")
    for ax, x in zip(axes, ("recall", "vendi")):
        ax.plot(t[x], t["precision"], color="0.7", lw=1, zorder=1)
        ax.scatter(t[x], t["precision"], c=t["radius"], cmap=cmap, norm=norm, s=55, edgecolor="k", lw=0.5, zorder=2)
        b = reference_row(t)
        if b is not None:
            ax.scatter([b[x]], [b["precision"]], marker="*", s=260, c=[cmap(norm(b["radius"]))], edgecolor="k",
                       lw=0.8, zorder=3, label="no SPELL (r = 0)")
            ax.legend(frameon=False, loc="best", fontsize=9)
        ax.set_xlabel(LABELS[x])
        ax.set_ylabel(LABELS["precision"])
    axes[0].set_title("Precision vs recall", fontsize=11)
    axes[1].set_title("Precision vs diversity (Vendi on features)", fontsize=11)
    fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=axes, label=RADIUS_LABEL, shrink=0.9)
    fig.suptitle("Quality-diversity fronts across radii (up and right is better)", fontweight="bold")
    return fig


@plots.styled
def plot_duration(datasets: dict, table: pd.DataFrame | None = None):
    """Repellency duration against radius: the active share over t (one line per radius), the median last active t
    with its interquartile range, and the shares of trajectories ever active and still active at the end."""
    from matplotlib.cm import ScalarMappable

    names = radius_groups(datasets)
    ds_ = {n: measured(datasets[n]) for n in names}
    radii = np.array([radius_of(ds_[n]) for n in names])
    tab = table if table is not None else pd.DataFrame(
        {"radius": radii, "radius_over_median": np.nan}, index=pd.Index(names, name="group"))
    cmap, norm = _cmap(), _norm(tab)
    fig = plots.Figure(figsize=(15, 4.3), layout="constrained")
    share, last, frac = fig.subplots(1, 3)
    all_t = np.concatenate([ds_[n]["t"].values for n in names]) if names else None
    q = []
    for n, r in zip(names, radii):
        ds = ds_[n]
        share.plot(ds["t"].values, 100 * active_share(ds).values, color=cmap(norm(r)), lw=1.6)
        lat = last_active_t(ds).values
        lat = lat[np.isfinite(lat)]
        q.append(np.percentile(lat, [25, 50, 75]) if lat.size else [np.nan] * 3)
    plots.t_axis(share, all_t)
    share.set_ylim(-2, 102)
    share.set_ylabel("trajectories with SPELL active (%)")
    share.set_title("Active share over t (colour: radius)", fontsize=11)
    fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=share, label=RADIUS_LABEL, pad=0.01)
    q = np.array(q, float).reshape(-1, 3)
    if all_t is not None and all_t.size:
        last.axhline(float(np.min(all_t)), color="0.3", lw=1, ls=":", label="last sampler step")
    last.fill_between(radii, q[:, 0], q[:, 2], color="0.5", alpha=0.25, lw=0, label="25–75%")
    last.plot(radii, q[:, 1], color="k", lw=2, marker="o", ms=4, label="median")
    last.set_ylim(1.02, -0.02)  # t runs from 1 (noise) at the top to 0 (data) at the bottom: lower = acts longer
    last.set_xlim(*_radius_xlim(radii))
    last.set_xlabel(RADIUS_LABEL)
    last.set_ylabel("last active t  (higher = acts longer)")
    last.set_title("When repellency stops (ever-active trajectories)", fontsize=11)
    last.legend(frameon=False, fontsize=9, loc="lower left")
    ever = [100 * float(ever_active(ds_[n]).mean()) for n in names]
    end = [100 * float(active(ds_[n]).isel(step=-1).mean()) for n in names]
    mean_share = [100 * float(active(ds_[n]).mean()) for n in names]
    frac.plot(radii, ever, color="#1b9e77", lw=2, marker="o", ms=4, label="ever active")
    frac.plot(radii, mean_share, color="#7570b3", lw=2, marker="s", ms=4, label="active, averaged over t")
    frac.plot(radii, end, color="#d95f02", lw=2, marker="^", ms=4, label="still active at the last step")
    frac.set_ylim(-2, 102)
    frac.set_xlim(*_radius_xlim(radii))
    frac.set_xlabel(RADIUS_LABEL)
    frac.set_ylabel("trajectories (%)")
    frac.set_title("How many trajectories SPELL acts on", fontsize=11)
    frac.legend(frameon=False, fontsize=9)
    for ax in (last, frac):
        _median_axis(ax, tab)
    fig.suptitle("Repellency duration against the radius", fontweight="bold")
    return fig


def _radius_xlim(radii) -> tuple[float, float]:
    """The same radius range on every panel, 0 included (the baseline has no last active t to draw)."""
    hi = float(np.max(radii)) if len(radii) and np.max(radii) > 0 else 1.0
    return -0.03 * hi, 1.03 * hi


@plots.styled
def plot_samples(datasets: dict, condition=None, rows: int = 6, ncols: int = 8):
    """The same seeds at a few radii (rows, from r = 0) for one condition: what the radius does to the outputs.
    Samples SPELL changed are outlined in orange."""
    names = radius_groups(datasets)
    pick = sorted(set(np.linspace(0, len(names) - 1, min(rows, len(names))).round().astype(int)))
    ds0 = datasets[names[0]]
    conds = ds0["condition"].values
    condition = conds[0] if condition is None else condition
    idx = np.flatnonzero(conds == condition)[:ncols]
    ncols = max(1, len(idx))
    fig = plots.Figure(figsize=(1.05 * ncols + 1.6, 1.15 * len(pick) + 0.9), layout="constrained")
    axes = fig.subplots(len(pick), ncols, squeeze=False)
    shown = []
    for row, gi in enumerate(pick):
        ds = datasets[names[gi]]
        imgs, rgb = images(ds, idx)  # the store's decoded images, or x0 as grayscale
        shown.append((imgs, rgb))
    arrays = plots.to_gray01([a for a, rgb in shown if not rgb]) if not all(r for _, r in shown) else []
    it = iter(arrays)
    for row, (gi, (imgs, rgb)) in enumerate(zip(pick, shown)):
        ds = datasets[names[gi]]
        imgs = imgs / 255.0 if rgb else next(it)
        changed = ever_active(ds)[idx]
        for j in range(ncols):
            ax = axes[row, j]
            ax.set_xticks([]), ax.set_yticks([])
            img = imgs[j]
            ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest",
                      aspect="auto" if img.ndim == 2 and img.shape[0] == 1 else "equal")
            for s in ax.spines.values():
                s.set_visible(bool(changed[j]))
                s.set_edgecolor(plots.HIGHLIGHT), s.set_linewidth(3)
        axes[row, 0].set_ylabel(f"r = {radius_of(ds):.3g}", fontsize=9)
    fig.suptitle(f"{condition_label(condition, ds0.attrs.get('condition_names'))}: the same seeds at increasing "
                 f"radius (top: no SPELL); orange = SPELL changed it", fontweight="bold", fontsize=10)
    return fig


# ----------------------------------------------------------------------------------------------- edges

def make_figures(datasets: dict, table: pd.DataFrame, per_condition: pd.DataFrame | None = None) -> dict:
    figs = {"metrics_vs_radius": plot_metrics(table, per_condition), "fronts": plot_fronts(table),
            "duration": plot_duration(datasets, table)}
    if any("image" in datasets[n] or "x0" in datasets[n] for n in radius_groups(datasets)):
        figs["samples"] = plot_samples(datasets)
    return figs


SERIES = {  # W&B line charts against the radius
    "precision recall density coverage": list(QUALITY),
    "vendi": ["vendi", "vendi_raw"],
    "frechet distance": ["fd"],
    "repellency duration": ["median_last_active_t", "mean_active_share", "share_changed", "active_at_end"],
}


def wandb_runs(datasets: dict, result: dict, images: dict, name: str = "radius") -> list:
    """One W&B run for the whole ablation, with one logged row per radius (x axis: radius), so W&B draws each
    metric against the radius directly; the tables and the figures beside them; the baseline row as summary."""
    from .wandb_log import RunLog, config_from_attrs

    table = result["table"]
    attrs = dict(datasets[radius_groups(datasets)[0]].attrs) | {"reference": result["reference"]}
    curves = table.reset_index(drop=True).select_dtypes("number")
    base = reference_row(table)
    summary = {f"baseline/{k}": v for k, v in base.items()} if base is not None else {}
    summary["n_radii"] = len(table)
    return [RunLog(name=name, config=config_from_attrs(attrs), summary=summary, tags=("radius", model_name(attrs)),
                   tables={"radius": table, "per_condition": result["per_condition"]}, images=images, curves=curves,
                   x="radius", series=SERIES)]


def statistics(datasets: dict, run_dir=None, reference=None, k: int = 5) -> dict:
    """The metric tables against held-out real data. reference: (x, cond, features) or None for the built-in
    model's held-out data (its registry entry)."""
    desc = "given by the caller"
    if reference is None:
        model = model_name(datasets[radius_groups(datasets)[0]].attrs)
        conds = np.unique(np.concatenate([datasets[n]["condition"].values for n in datasets]))
        *reference, desc = reference_data(model, conds)
    real_x, real_cond, features = reference
    table, per = metric_tables(datasets, real_x, real_cond, features, k=k)
    return {"table": table, "per_condition": per, "reference": desc}


ANALYSIS = driver.register(driver.Analysis(
    experiment="radius", select=radius_groups, keep=("x0",), statistics=statistics,
    figures=lambda datasets, r: make_figures(datasets, r["table"], r["per_condition"]),
    files=lambda r: {"radius_table.csv": r["table"].to_csv(), "radius_per_condition.csv": r["per_condition"].to_csv(index=False)},
    wandb_runs=wandb_runs, format_table=format_table,
    none_found="has no radius groups (r00, r01, ...); make one with `python -m spell_lab.experiments.radius`",
    summary_lines=lambda res: [f"\nreal data: {res['reference']}"]))
load_run, latest_run, analyse_run, main = driver.bind(ANALYSIS)


if __name__ == "__main__":
    sys.exit(main())
