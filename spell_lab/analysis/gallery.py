"""The gallery (paper Figure 6): images in generation order, each under the same seed without SPELL, with the
images SPELL changed outlined; and the image helpers other figures share (`images`, `condition_label`)."""

from __future__ import annotations

import numpy as np
import xarray as xr

from . import plots
from .activity import ever_active


def images(ds: xr.Dataset, idx: np.ndarray) -> tuple[np.ndarray, bool]:
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



def generation_order(ds: xr.Dataset) -> np.ndarray:
    """Sample indices in generation order: round, then batch position."""
    keys = [ds[k].values for k in ("position", "round") if k in ds]
    return np.lexsort(keys) if keys else np.arange(ds.sizes["sample"])



def _label(v) -> str:
    v = v.decode() if isinstance(v, bytes) else v
    s = str(v.item() if hasattr(v, "item") else v)
    return s if len(s) <= 18 else s[:17] + "…"



def condition_label(c, names=None) -> str:
    """A condition's name from the group's `condition_names` attribute where it has one, else its value."""
    s = _label(c)
    if isinstance(names, (list, tuple)) and s.lstrip("-").isdigit() and 0 <= int(s) < len(names) and names[int(s)]:
        return _label(names[int(s)])
    return f"condition {s}" if s.lstrip("-").isdigit() else s



def _offset(pick: np.ndarray, block: np.ndarray) -> int:
    """Index of block's first sample within its condition's generation order."""
    return int(np.flatnonzero(pick == block[0])[0])



@plots.styled
def plot_gallery(datasets: dict, setup: str = "iterative", baseline: str = "baseline", max_conditions: int = 2,
                 max_images: int = 16, ncols: int = 8):
    """Fig. 6: per condition, images in generation order (round, position); each row of SPELL images sits under
    the same seeds without SPELL (group `baseline`); images SPELL changed (`intervened`) are outlined in orange."""
    if setup not in datasets:
        others = plots.ordered(n for n in datasets if n != baseline)
        setup = others[0] if others else setup
    if setup not in datasets:
        raise KeyError(f"no group to draw a gallery from; the store has {sorted(datasets)}.")
    ds, base = datasets[setup], datasets.get(baseline)
    cond = ds["condition"].values if "condition" in ds else np.zeros(ds.sizes["sample"], int)
    order = generation_order(ds)
    conditions = list(dict.fromkeys(cond[order]))[:max_conditions]
    picks = [order[cond[order] == c][:max_images] for c in conditions]  # per condition, generation order
    chosen = np.concatenate(picks) if picks else np.array([], int)
    # the baseline partner of each chosen sample: same condition and seed
    partner = np.full(chosen.size, -1)
    if base is not None:
        bkey = {(_label(c), int(s)): i for i, (c, s) in enumerate(zip(
            base["condition"].values, base["seed"].values))} if {"condition", "seed"} <= set(base.variables) else {}
        partner = np.array([bkey.get((_label(cond[i]), int(ds["seed"].values[i])), -1) for i in chosen], int)
    imgs, is_rgb = images(ds, chosen) if chosen.size else (np.zeros((0, 1, 1)), True)
    has = partner >= 0
    bimgs = images(base, partner[has])[0] if has.any() else np.zeros((0,) + imgs.shape[1:])
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
            axes[r, 0].set_ylabel(f"{condition_label(conditions[ci], ds.attrs.get('condition_names'))}\n{kind} SPELL",
                                  fontsize=8)
            axes[r, 0].yaxis.set_visible(True)
            r += 1
    note = "" if pair else f"\n(no {baseline!r} group: the same seeds without SPELL are not shown)"
    fig.suptitle(f"{setup}: images in generation order, SPELL-changed ones outlined in orange{note}",
                 fontweight="bold", fontsize=10)
    return fig

