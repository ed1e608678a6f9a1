"""Shared plotting helpers: one colour and style per group (by its place in the run's order) across every figure,
t axes from 1 (noise) to 0 (data) with the store's own noise level sigma/alpha as a second axis and the paper's two
noise levels marked, saving."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import seaborn as sns
from matplotlib.figure import Figure  # no pyplot: figures are plain objects, nothing global to close or leak

SOURCE_PALETTE = ("#1b9e77", "#7570b3", "#d95f02", "#e7298a", "#66a61e", "#e6ab02")  # by position in schema.SOURCES
HIGHLIGHT = "#ff8c00"  # the orange outline of Figure 6: SPELL changed this sample
T_LABEL = "t   (1 = noise  →  0 = data)"


def source_color(source: str) -> str:
    """One colour per shield source, by its place in the schema's declaration."""
    from .. import schema

    return SOURCE_PALETTE[list(schema.SOURCES).index(source) % len(SOURCE_PALETTE)]


def _positions(names, order) -> dict[str, int]:
    """Each name's place in `order` (the run's group order, `load.run_order`); names it lacks (all of them when
    order is None) follow it in their own order."""
    order = list(order) if order is not None else []
    out, extra = {}, len(order)
    for n in names:
        out[n] = order.index(n) if n in order else extra
        extra += n not in order
    return out


def setup_colors(names, order=None) -> dict[str, tuple]:
    """A stable colour per group, by its place in the run's order: the same group gets the same colour in every
    figure of the run, whichever subset a figure draws."""
    names = list(names)
    palette = sns.color_palette("colorblind", 10)
    return {n: palette[k % len(palette)] for n, k in _positions(names, order).items()}


LINE_STYLES = ("-", "--", "-.", ":", (0, (5, 1, 1, 1, 1, 1)), (0, (8, 2)), (0, (1, 1)))  # by place in the order
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")


def setup_styles(names, order=None) -> dict[str, dict]:
    """A stable line style and marker per group (plot keywords ls, marker), by its place in the run's order, beside
    its colour, so overlapping lines stay apart in grayscale print and for colour-blind readers."""
    names = list(names)
    return {n: {"ls": LINE_STYLES[k % len(LINE_STYLES)], "marker": MARKERS[k % len(MARKERS)]}
            for n, k in _positions(names, order).items()}


def styled(fn):
    """Draw inside a local seaborn theme, so figure functions leave the caller's rcParams alone."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with sns.axes_style("whitegrid"), sns.plotting_context("notebook", font_scale=0.9):
            return fn(*args, **kwargs)

    return wrapper


def t_axis(ax, t=None, label: bool = True) -> None:
    """x = t running from 1 on the left to 0 on the right (the direction of sampling)."""
    t = np.asarray([] if t is None else t, dtype=float)
    hi = max(1.0, float(np.nanmax(t))) if t.size else 1.0
    lo = min(0.0, float(np.nanmin(t))) if t.size else 0.0
    ax.set_xlim(hi, lo)  # inverted: sampling goes left to right
    if label:
        ax.set_xlabel(T_LABEL)


NOISE_LABEL = "σ/α  (noise level, log-spaced ticks)"
PAPER_MARK = "#8c2d04"  # the paper's noise levels: one colour in every figure
_PAPER_BOX = dict(facecolor="white", alpha=0.7, edgecolor="none", pad=0.5)  # the label stays readable over lines


def noise_ticks(nmap) -> list[float]:
    """1-3 log-spaced sigma/alpha values inside the store's recorded range."""
    values = [float(f"{m}e{k}") for k in range(-4, 5) for m in (1, 3)]
    return [v for v in values if nmap.level[0] <= v <= nmap.level[-1]]


def noise_axis(ax, nmap, label: bool = True, which: str = "x"):
    """A second axis beside t (top, or right for a t on y) in the store's own sigma/alpha, ticks log-spaced; nothing
    where the store records no level (nmap None). Returns the secondary axis or None."""
    if nmap is None:
        return None
    make = ax.secondary_xaxis if which == "x" else ax.secondary_yaxis
    sec = make("top" if which == "x" else "right", functions=(nmap.to_level, nmap.to_t))
    ticks = noise_ticks(nmap)
    (sec.set_xticks if which == "x" else sec.set_yticks)(ticks, [f"{v:g}" for v in ticks])
    sec.tick_params(labelsize=7, colors="0.3")
    if label:
        (sec.set_xlabel if which == "x" else sec.set_ylabel)(NOISE_LABEL, fontsize=8, color="0.3")
    return sec


def paper_marks(ax, nmap, label: bool = True, which: str = "x") -> dict[float, float]:
    """Lines at the t where this store reaches the paper's t = 0.8 and 0.6 noise levels (sigma/alpha 5.11, 2.28 on
    Latent Diffusion's schedule), labelled "paper t=0.8 (σ/α 5.11)". Returns {paper t: this store's t} for the
    levels inside its range."""
    from ..schedules import paper_noise_levels

    if nmap is None:
        return {}
    out = {}
    for t_paper, level in paper_noise_levels().items():
        if not nmap.covers(level):
            continue
        out[t_paper] = at = float(nmap.to_t(level))
        line = ax.axvline if which == "x" else ax.axhline
        line(at, color=PAPER_MARK, lw=0.9, ls="--", alpha=0.8, zorder=1)
        if label:
            text = f"paper t={t_paper:g} (σ/α {level:.3g})"
            if which == "x":
                ax.text(at, 0.98, text, transform=ax.get_xaxis_transform(), rotation=90, ha="right", va="top",
                        fontsize=7, color=PAPER_MARK, bbox=_PAPER_BOX)
            else:
                ax.text(0.98, at, text, transform=ax.get_yaxis_transform(), ha="right", va="bottom", fontsize=7,
                        color=PAPER_MARK, bbox=_PAPER_BOX)
    return out


def grid(n: int, ncols: int = 4, panel=(3.6, 2.7), **kw):
    """n panels in rows of at most ncols; unused axes removed. Returns (fig, n axes, n flags "bottom of its
    column", which say where the x label and tick labels go)."""
    ncols = max(1, min(ncols, n))
    nrows = -(-n // ncols)
    fig = Figure(figsize=(panel[0] * ncols, panel[1] * nrows + 0.6), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, **kw)
    flat = list(axes.ravel())
    for ax in flat[n:]:
        ax.remove()
    bottom = [i + ncols >= n for i in range(n)]
    for ax, b in zip(flat[:n], bottom):
        ax.tick_params(labelbottom=b)  # one t scale for all panels: tick labels only where no panel sits below
    return fig, flat[:n], bottom


def save(fig, out_dir: Path, name: str, dpi: int = 150) -> dict[str, Path]:
    """Write NAME.png and NAME.pdf into out_dir; returns {"png": path, "pdf": path}."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fig.draw_without_rendering()  # run the constrained layout once ...
    engine = fig.get_layout_engine()
    fig.set_layout_engine("none")  # ... and keep it for both files (each layout pass costs a full draw)
    paths = {}
    for ext in ("png", "pdf"):
        paths[ext] = out_dir / f"{name}.{ext}"
        fig.savefig(paths[ext], dpi=dpi)
    fig.set_layout_engine(engine)
    return paths


def style_legend(fig_or_ax, entries, **kw):
    """A legend in neutral grey explaining line styles shared by all coloured panels: (label, kind) with kind
    "band", "line", "dashed" or "dotted"."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles = [Patch(color="0.5", alpha=0.3) if kind == "band" else
               Line2D([], [], color="0.3", lw=2 if kind == "line" else 1,
                      ls={"line": "-", "dashed": "--", "dotted": ":"}[kind]) for _, kind in entries]
    return fig_or_ax.legend(handles, [label for label, _ in entries], frameon=False, **kw)


def to_gray01(arrays: list[np.ndarray]) -> list[np.ndarray]:
    """Float images to [0, 1] with one shared scale (1st-99th percentile), so paired panels are comparable."""
    parts = [a.ravel() for a in arrays if a is not None and a.size]
    flat = np.concatenate(parts) if parts else np.array([])  # no image at all (e.g. SPELL moved none): a unit scale
    flat = flat[np.isfinite(flat)]
    lo, hi = (np.percentile(flat, [1, 99]) if flat.size else (0.0, 1.0))
    hi = hi if hi > lo else lo + 1.0
    return [None if a is None else np.clip((a - lo) / (hi - lo), 0, 1) for a in arrays]
