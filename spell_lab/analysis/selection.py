"""Figures and text of the Appendix D selection (`python -m spell_lab.experiments.calibrate --select`).

Tables come from `spell_lab.calibration.with_f`: one row per guidance weight (the CFG tuning, no SPELL) or per
radius (the sweep at the tuned weight), with precision, coverage and F = 2PC / (P + C), means over conditions.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure  # no pyplot: nothing global to close

COLORS = {"f": "#1b1b1b", "precision": "#1b9e77", "coverage": "#7570b3"}
LABELS = {"f": "F(P, C) = 2PC/(P+C)", "precision": "precision", "coverage": "coverage"}


def _curves(ax, x, table: pd.DataFrame) -> None:
    for col in ("precision", "coverage", "f"):
        ax.plot(x, table[col], color=COLORS[col], lw=2.2 if col == "f" else 1.2, marker="o",
                ms=5 if col == "f" else 3, ls="-" if col == "f" else "--", label=LABELS[col])
    if "f_se" in table:  # F's jackknife standard error over conditions
        ax.fill_between(x, table["f"] - table["f_se"], table["f"] + table["f_se"], color=COLORS["f"], alpha=0.12,
                        lw=0, label="F ± 1 SE (jackknife over conditions)")


def _finish(ax, xlabel: str, title: str, legend_loc: str) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel("mean over conditions")
    ax.grid(alpha=0.3)
    ax.legend(frameon=False, fontsize=8, loc=legend_loc)
    ax.set_title(title, fontsize=10)


def plot_f_vs_guidance(table: pd.DataFrame, best: float, default: float | None = None, title: str = "") -> Figure:
    """F, precision and coverage against the CFG weight (no SPELL); the selected weight and the model's default."""
    fig = Figure(figsize=(6.4, 4.2), layout="constrained")
    ax = fig.subplots()
    t = table.sort_values("guidance")
    _curves(ax, t["guidance"], t)
    ax.axvline(best, color="#d95f02", lw=1.5, label=f"F-best w = {best:g}")
    if default is not None and default != best:
        ax.axvline(default, color="0.5", lw=1, ls=":", label=f"model default w = {default:g}")
    _finish(ax, "classifier-free guidance weight w (1 = no guidance)", title or
            "CFG tuning by F(precision, coverage), no SPELL", "best")
    return fig


def plot_f_vs_radius(table: pd.DataFrame, best: float, median: float, reference: float | None = 25.0,
                     title: str = "") -> Figure:
    """F, precision and coverage against the radius (top axis: x the calibrated median); the selected radius and,
    dotted, a reference radius (the paper's Latent Diffusion r = 25)."""
    fig = Figure(figsize=(6.4, 4.2), layout="constrained")
    ax = fig.subplots()
    t = table.sort_values("radius")
    _curves(ax, t["radius"], t)
    ax.axvline(best, color="#d95f02", lw=1.5, label=f"F-best r = {best:.4g} ({best / median:.2f}x median)")
    if reference is not None:
        ax.axvline(reference, color="0.4", lw=1, ls=":", label=f"the paper's LD radius {reference:g}")
    if median > 0:
        top = ax.secondary_xaxis("top", functions=(lambda r: r / median, lambda m: m * median))
        top.set_xlabel("x calibrated median distance", fontsize=8)
    _finish(ax, "repellency radius r", title or "Radius selection by F(precision, coverage)", "lower left")
    return fig


def save_figure(fig: Figure, out_dir, name: str) -> Path:
    path = Path(out_dir) / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150)
    return path


def format_f_table(table: pd.DataFrame, key: str, best: float, extra=()) -> str:
    """The F table as aligned text, one row per candidate, the selected row marked with `<-`."""
    cols = [key, *extra, "precision", "recall", "density", "coverage", "f", "f_se", "f_gap_se"]
    shown = table[[c for c in cols if c in table]].copy()
    text = shown.to_string(float_format=lambda v: f"{v:.3f}", index=False)
    lines = text.split("\n")
    for i, v in enumerate(shown[key].to_numpy(), start=1):
        if np.isclose(v, best):
            lines[i] += "   <- selected"
            break
    return "\n".join(lines)
