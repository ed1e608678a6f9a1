"""What the semantic comparison draws: Figure 4's three fronts with the SPELL variants beside the baselines
(`analysis.baselines_figures`, the same axes and styles), every variant's radii as its own sweep in its own colour;
and a gallery: the same seeds of one condition in every variant group, one row each (what the metrics summarise)."""

from __future__ import annotations

import json

import matplotlib.pyplot as plt
import numpy as np

from . import plots
from .baselines_figures import plot_fronts
from .gallery import condition_label, generation_order, images
from .semantic import VARIANTS

GALLERY_COLUMNS = 12


def plot_gallery(datasets: dict, points, n: int = GALLERY_COLUMNS):
    """One row per variant group (radius 0 first): the first n samples of the first condition, in generation order,
    so each column is one seed across the groups."""
    rows = [g for g in points.index if points.loc[g, "sweep"] in VARIANTS and g in datasets]
    rows = sorted(rows, key=lambda g: (points.loc[g, "value"] > 0, VARIANTS.index(points.loc[g, "sweep"])))
    first = datasets[rows[0]]
    cond = first["condition"].values[generation_order(first)][0]
    strips = []
    for g in rows:
        ds = datasets[g]
        order = generation_order(ds)
        arr, rgb = images(ds, order[ds["condition"].values[order] == cond][:n])
        strips.append((np.concatenate(list(arr), axis=1), rgb))
    gray = plots.to_gray01([None if rgb else a for a, rgb in strips])  # one scale for every grayscale row
    fig, axes = plt.subplots(len(rows), 1, figsize=(n * 0.75, 0.95 * len(rows) + 0.4), squeeze=False)
    for ax, g, (strip, rgb), scaled in zip(axes[:, 0], rows, strips, gray):
        ax.imshow(strip) if rgb else ax.imshow(scaled, cmap="gray", vmin=0, vmax=1)
        ax.set_axis_off()
        ax.set_title(f"{g} ({points.loc[g, 'label']}, r = {points.loc[g, 'value']:.4g})", fontsize=8, loc="left")
    fig.suptitle(f"the first {n} seeds of {condition_label(cond, first.attrs)} in every "
                 "variant group", fontsize=9)
    fig.tight_layout()
    return fig


def figures(datasets: dict, result: dict) -> dict:
    table = result["points"].copy()
    variant = table["sweep"].isin(VARIANTS)  # colours go by method: each variant counts as its own here
    table.loc[variant, "method"] = [json.dumps({"name": s}) for s in table.loc[variant, "sweep"]]
    return {"fronts": plot_fronts(table, result["hypervolume"]), "gallery": plot_gallery(datasets, result["points"])}
