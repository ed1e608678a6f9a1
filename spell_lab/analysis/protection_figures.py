"""The protection benchmark's figures (leak rate against time beside the paper's Table 2, where the outputs land
relative to the shields, Figure 7's moved outputs) and W&B run, drawn from `spell_lab.analysis.protection`'s
statistics. One colour and marker per search, by its place in the run's order; the reference (no SPELL) a black star.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import seaborn as sns
import xarray as xr

from . import plots
from .gallery import images
from .load import model_name, reference_of
from .protection import PAPER_TABLE2, item_rows, groups, moved_examples


def search_styles(names, reference: str | None) -> dict[str, dict]:
    """One colour and marker per search (the reference, without SPELL: a black star), the same in every figure."""
    palette = sns.color_palette("colorblind", 10)
    out, k = {}, 0
    for n in names:
        if n == reference:
            out[n] = dict(color="0.1", marker="*", s=170)
        else:
            out[n] = dict(color=palette[k % 10], marker=plots.MARKERS[k % len(plots.MARKERS)], s=60)
            k += 1
    return out


@plots.styled
def plot_leak_vs_time(table: pd.DataFrame, radius: float, reference: str | None):
    """Leak rate (outputs too close) against time per image: ours in seconds, and ours beside the paper's Table 2
    as multiples of the time without SPELL. One colour and marker per search (legend)."""
    fig = plots.Figure(figsize=(12.5, 4.8), layout="constrained")
    ax, rel = fig.subplots(1, 2)
    styles = search_styles(table.index, reference)
    for name, row in table.iterrows():
        label = f"{name} · {row['searched_cells']} · {row['too_close_pct']:.2f}%"
        for a, x in ((ax, row["seconds_per_image"]), (rel, row["time_vs_baseline"])):
            if np.isfinite(x):
                a.scatter([x], [row["too_close_pct"]], edgecolor="k", lw=0.5, zorder=3, alpha=0.9,
                          label=label if a is ax else None, **styles[name])
    p = PAPER_TABLE2
    rel.plot(p["seconds_per_image"] / p["seconds_per_image"].iloc[0], p["too_close_pct"], color="0.55", ls="--",
             marker="s", mfc="white", label="paper: MDTv2, 1.2M ImageNet\nitems, IVF 1-10 probes")
    for _, row in p.iloc[1:].iterrows():
        rel.annotate(f"{row['searched_cells']}", (row["seconds_per_image"] / p["seconds_per_image"].iloc[0],
                     row["too_close_pct"]), textcoords="offset points", xytext=(0, 7), fontsize=7, color="0.4",
                     ha="center")
    rel.legend(frameon=False, fontsize=8, loc="upper right")
    fig.legend(*ax.get_legend_handles_labels(), loc="outside right center", frameon=False, fontsize=8,
               title="search · searched cells · too close", title_fontsize=8)
    n = int(table["n"].iloc[0]) if len(table) else 0
    ax.set_xlabel("time per image (s, this run)")
    rel.set_xlabel("time per image ÷ time without SPELL")
    top = max(1.0, float(np.nanmax([table["too_close_pct"].max(), 7.6])))
    for a in (ax, rel):
        a.set_ylabel("outputs too close (%)")
        a.set_ylim(-0.06 * top, 1.08 * top)
    ax.set_title(f"This run: {n} outputs per search, r = {radius:.4g}", fontsize=10)
    rel.set_title("Beside the paper's Table 2 (relative time; grey numbers: probes)", fontsize=10)
    fig.suptitle("Leak rate against time per image (too close: within r of a protected item, exhaustive check)",
                 fontweight="bold", fontsize=11)
    return fig


@plots.styled
def plot_distances(judged: dict, radius: float, reference: str | None):
    """Each search's cumulative share of outputs closer than d to their nearest protected item (d ÷ r): its value
    at 1 is the share too close."""
    fig = plots.Figure(figsize=(9.5, 4.4), layout="constrained")
    ax = fig.subplots()
    styles = search_styles(judged, reference)
    for name, j in judged.items():
        d = np.sort(j["nearest"].to_numpy() / radius)
        ax.step(d, 100 * np.arange(1, len(d) + 1) / len(d), where="post", color=styles[name]["color"],
                lw=2.2 if name == reference else 1.3, ls="-" if name in (reference, "exact") else "--",
                label=f"{name} ({100 * j['too_close'].mean():.2f}% < r)")
    ax.axvline(1.0, color="k", lw=1, ls=":")
    every = np.concatenate([j["nearest"].to_numpy() / radius for j in judged.values()])
    ax.set_xlim(max(0.0, every.min() - 0.05), 1.5)
    ax.set_ylim(0, 60)
    ax.set_xlabel("distance to the nearest protected item ÷ r   (dotted: the shield's edge)")
    ax.set_ylabel("outputs closer (%)")
    fig.legend(*ax.get_legend_handles_labels(), loc="outside right center", frameon=False, fontsize=8)
    ax.set_title("Where the outputs land relative to the shields (cumulative, exhaustive check)", fontsize=10)
    return fig


@plots.styled
def plot_moved_gallery(datasets: dict, judged: dict, items, radius: float, search: str | None = None, n: int = 8):
    """Figure 7: outputs SPELL moved (columns, the closest copies first): the same seed without SPELL, its nearest
    protected item, and the output with SPELL, each labelled with its distance to its nearest item (÷ r)."""
    ref = reference_of(datasets)
    search = search or next((s for s in ("exact", "ivf_exact", "overlap") if s in datasets),
                            next((s for s in groups(datasets) if s != ref), None))
    if search is None or ref not in datasets:
        raise ValueError("the gallery needs the baseline group and one SPELL search in the run.")
    pick, partner = moved_examples(judged, datasets, search, n)
    item_idx = judged[ref]["nearest_item"].to_numpy()[partner]
    shape = datasets[search]["x0"].shape[1:]
    item_ds = xr.Dataset({"x0": (datasets[search]["x0"].dims, np.asarray(item_rows(items, item_idx)).reshape(
        len(item_idx), *shape) if len(item_idx) else np.zeros((0, *shape)))})
    show = _pictures(datasets)
    rows = [("without SPELL", show(datasets[ref], partner), judged[ref]["nearest"].to_numpy()[partner]),
            ("its nearest\nprotected item", show(item_ds, np.arange(len(item_idx))), None),
            (f"with SPELL\n({search})", show(datasets[search], pick), judged[search]["nearest"].to_numpy()[pick])]
    decoded = rows[0][1].dtype == np.uint8
    shown = [r[1] for r in rows] if decoded else plots.to_gray01([r[1] for r in rows])
    ncols = max(1, len(pick))
    fig = plots.Figure(figsize=(1.25 * ncols + 1.8, 4.9), layout="constrained")
    axes = fig.subplots(3, ncols, squeeze=False)
    for r, ((label, _, dist), imgs) in enumerate(zip(rows, shown)):
        for c in range(ncols):
            ax = axes[r, c]
            ax.set_xticks([]), ax.set_yticks([])
            if c >= len(pick):
                ax.axis("off")
                continue
            ax.imshow(imgs[c], **({} if decoded else dict(cmap="gray_r", vmin=0, vmax=1)), interpolation="nearest")
            if dist is not None:
                inside = dist[c] < radius
                ax.set_xlabel(f"d/r {dist[c] / radius:.2f}", fontsize=7, color=plots.HIGHLIGHT if inside else "0.2")
                for sp in ax.spines.values():
                    sp.set_visible(inside), sp.set_edgecolor(plots.HIGHLIGHT), sp.set_linewidth(3)
        axes[r, 0].set_ylabel(label, fontsize=8)
    note = "" if len(pick) else " — none: SPELL moved no output whose baseline was too close"
    fig.suptitle(f"Figure 7: outputs SPELL moved away from protected items (orange: within r = {radius:.4g}){note}",
                 fontweight="bold", fontsize=10)
    return fig


def _pictures(datasets: dict):
    """(group, indices) -> pictures: where x0 is itself a picture (digits), x0 as grey values; where it is a latent
    (the store's `image` has another size: fashion), the model's decoded uint8 images (n, H, W, 3), the same decoder
    the run used for `image`, applied alike to outputs and protected items."""
    ds = datasets[reference_of(datasets)]
    if "image" not in ds or tuple(ds["image"].shape[1:3]) == tuple(ds["x0"].shape[-2:]):
        return lambda group, idx: images(group.drop_vars("image", errors="ignore"), idx)[0]
    import torch

    from ..models import load_model

    model = load_model(model_name(ds.attrs))

    def decode(group, idx):
        if not len(idx):
            return np.zeros((0, 1, 1, 3), np.uint8)
        x0 = group["x0"].isel(sample=np.asarray(idx, dtype=int)).transpose("sample", ...).values
        return model.to_images(torch.as_tensor(np.asarray(x0, dtype=np.float32))).numpy()
    return decode


def make_figures(datasets, table, judged, items, radius) -> dict:
    ref = reference_of(datasets)
    figs = {"leak_vs_time": plot_leak_vs_time(table, radius, ref), "distances": plot_distances(judged, radius, ref)}
    if ref in datasets and len(datasets) > 1:
        figs["moved_gallery"] = plot_moved_gallery(datasets, judged, items, radius)
    return figs


def figures(datasets: dict, result: dict) -> dict:
    """The driver's figures."""
    return make_figures(datasets, result["table"], result["judged"], result["items"], result["radius"])



# ----------------------------------------------------------------------------------------------- W&B

def wandb_runs(datasets: dict, result: dict, images: dict) -> list:
    from .wandb_log import RunLog, config_from_attrs

    table = result["table"]
    attrs = dict(datasets[groups(datasets)[0]].attrs) | {"reference": result["reference"]}
    summary = {f"{name}/{c}": v for name, row in table.iterrows() for c, v in row.items() if c != "searched_cells"}
    return [RunLog(name="protection", config=config_from_attrs(attrs), summary=summary,
                   tags=("protection", model_name(attrs)), tables={"table2": table, "per_condition": result["per_condition"],
                                                                   "paper_table2": PAPER_TABLE2}, images=images)]
