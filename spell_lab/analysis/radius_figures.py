"""The radius ablation's figures (paper Figure 3; Appendix F) and W&B run, drawn from `spell_lab.analysis.radius`'s
statistics: the metrics and the fronts against the radius, the repellency duration, the same seeds at a few radii.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from . import plots
from .activity import active, active_share, ever_active, last_active_t
from .gallery import condition_label, images
from .load import every_round, model_name
from .noise import common_map
from .radius import METRICS, QUALITY, radius_groups, radius_of, reference_row

LABELS = {
    "precision": "precision ↑", "recall": "recall ↑", "density": "density ↑", "coverage": "coverage ↑",
    "vendi": "Vendi (features) ↑", "vendi_raw": "Vendi (raw x0) ↑", "fd": "Fréchet distance ↓",
}
RADIUS_LABEL = "repellency radius r"


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
    color = plots.setup_colors(["mean"])["mean"]
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
    with its interquartile range, and the shares of trajectories ever active and still active at the end. The t axes
    carry the store's sigma/alpha beside them and the paper's two noise levels marked."""
    from matplotlib.cm import ScalarMappable

    names = radius_groups(datasets)
    ds_ = {n: datasets[n] for n in names}
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
    nmap = common_map(ds_, names)
    plots.noise_axis(share, nmap)
    plots.paper_marks(share, nmap)
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
    plots.noise_axis(last, nmap, which="y")
    plots.paper_marks(last, nmap, which="y")
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
    Samples SPELL changed are outlined in orange. Every round (`load.every_round`)."""
    datasets = every_round(datasets)
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
    fig.suptitle(f"{condition_label(condition, ds0.attrs)}: the same seeds at increasing "
                 f"radius (top: no SPELL); orange = SPELL changed it", fontweight="bold", fontsize=10)
    return fig


# ----------------------------------------------------------------------------------------------- every figure

def make_figures(datasets: dict, table: pd.DataFrame, per_condition: pd.DataFrame | None = None) -> dict:
    figs = {"metrics_vs_radius": plot_metrics(table, per_condition), "fronts": plot_fronts(table),
            "duration": plot_duration(datasets, table)}
    if any("image" in datasets[n] or "x0" in datasets[n] for n in radius_groups(datasets)):
        figs["samples"] = plot_samples(datasets)
    return figs


def figures(datasets: dict, result: dict) -> dict:
    """The driver's figures."""
    return make_figures(datasets, result["table"], result["per_condition"])


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
