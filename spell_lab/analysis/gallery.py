"""The gallery (paper Figure 6): images in generation order, each under the same seed without SPELL, the images SPELL
acted on outlined with how far they moved (`moved_from_baseline`) and for how long (`active_steps`); and the image
helpers other figures share (`images`, `condition_label`)."""

from __future__ import annotations

import textwrap

import numpy as np
import xarray as xr
from matplotlib.colors import ListedColormap, Normalize

from . import plots
from .activity import active, ever_active
from .load import every_round, order_of, reference_of


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



def _text(v) -> str:
    v = v.decode() if isinstance(v, bytes) else v
    return str(v.item() if hasattr(v, "item") else v)



def _label(v) -> str:
    s = _text(v)
    return s if len(s) <= 18 else s[:17] + "…"



def condition_names_of(attrs) -> list | tuple | None:
    """The names of a group's conditions, in order: its own `condition_names` attribute (prompts, names given at run
    time), else its built-in model's class names (the registry), else None (they go by their numbers)."""
    from ..models.registry import condition_names

    attrs = attrs or {}
    model = attrs.get("model")  # the store's model spec, {"name": ...}
    return attrs.get("condition_names") or condition_names(model.get("name") if isinstance(model, dict) else model)


def condition_label(c, attrs=None) -> str:
    """A condition's name from a group's attributes (`condition_names_of`) where they name it, else its value."""
    names = condition_names_of(attrs)
    s = _label(c)
    if isinstance(names, (list, tuple)) and s.lstrip("-").isdigit() and 0 <= int(s) < len(names) and names[int(s)]:
        return _label(names[int(s)])
    return f"condition {s}" if s.lstrip("-").isdigit() else s



# ----------------------------------------------------------------------------------------------- per sample

def baseline_partner(ds: xr.Dataset, base: xr.Dataset) -> np.ndarray:
    """(sample,) index into `base` of the sample with the same condition and seed; -1 where base has none."""
    if not {"condition", "seed"} <= set(base.variables) or not {"condition", "seed"} <= set(ds.variables):
        return np.full(ds.sizes["sample"], -1)
    key = {(_text(c), int(s)): i for i, (c, s) in enumerate(zip(base["condition"].values, base["seed"].values))}
    return np.array([key.get((_text(c), int(s)), -1) for c, s in zip(ds["condition"].values, ds["seed"].values)],
                    dtype=int).reshape(-1)


def moved_from_baseline(ds: xr.Dataset, base: xr.Dataset) -> np.ndarray:
    """(sample,) how far SPELL moved each output: the L2 distance in the diffusion space between its `x0` and the
    `x0` of the same condition and seed in `base` (sampled without SPELL); NaN where base has no such sample."""
    partner = baseline_partner(ds, base)
    out = np.full(partner.size, np.nan)
    has = np.flatnonzero(partner >= 0)
    if has.size:
        x = ds["x0"].isel(sample=has).values.reshape(has.size, -1).astype(float)
        y = base["x0"].isel(sample=partner[has]).values.reshape(has.size, -1).astype(float)
        out[has] = np.linalg.norm(x - y, axis=1)
    return out


def active_steps(ds: xr.Dataset) -> np.ndarray:
    """(sample,) number of steps at which SPELL was active (`active_shields > 0`): how long it acted."""
    return active(ds).sum("step").values.astype(int)


def is_unmoved(moved: np.ndarray, ds: xr.Dataset) -> np.ndarray:
    """(sample,) the output equals the one without SPELL up to float round-off (1e-5 of its norm); False where the
    distance is unknown (NaN)."""
    scale = np.linalg.norm(ds["x0"].values.reshape(ds.sizes["sample"], -1).astype(float), axis=1)
    return np.isfinite(moved) & (moved <= 1e-5 * np.maximum(scale, 1.0))


def memory_only(ds: xr.Dataset) -> np.ndarray:
    """(sample,) bool: the sample belongs to a round before the group's `measure_from_round`, which only fills the
    memory (round 0 of `iterative` has nothing to repel from yet)."""
    first = int(ds.attrs.get("measure_from_round", 0))
    rnd = ds["round"].values if "round" in ds else np.zeros(ds.sizes["sample"], int)
    return rnd < first


def delta_text(moved: float | None, steps: int) -> str:
    """The per-image label: distance moved and active steps, e.g. "Δ 3.2 · 7 steps" ("Δ ?" where the baseline
    lacks the seed); moved None (no baseline group at all): the steps only."""
    n = f"{steps} step{'' if steps == 1 else 's'}"
    if moved is None:
        return n
    return f"{'Δ ?' if not np.isfinite(moved) else f'Δ {moved:.2g}' if moved < 1 else f'Δ {moved:.1f}'} · {n}"


# ----------------------------------------------------------------------------------------------- what to draw

def gallery_selection(datasets: dict, setup: str | None = None, conditions=None, baseline: str | None = None,
                      max_conditions: int = 2) -> tuple[str, list]:
    """(setup, conditions) the gallery draws. setup None: `iterative` where present, else the first setup in the
    run's order; conditions None: the setup's first `max_conditions` in generation order. Conditions are matched
    by value or name (`--classes 3 5`). A setup or condition the store lacks raises ValueError naming what it has.
    baseline None: the run's reference group (`load.reference_of`). Every round counts (`load.every_round`)."""
    datasets = every_round(datasets)
    baseline = reference_of(datasets) if baseline is None else baseline
    names = [n for n in order_of(datasets) if n != baseline]
    if setup is None:
        setup = "iterative" if "iterative" in names else names[0] if names else None
    if setup is None or setup not in names:
        have = ", ".join(names) or "none"
        raise ValueError(f"no setup {setup!r} to draw a gallery from; the store has: {have} (--gallery SETUP).")
    ds = datasets[setup]
    cond = ds["condition"].values if "condition" in ds else np.zeros(ds.sizes["sample"], int)
    present = list(dict.fromkeys(cond[generation_order(ds)]))
    if conditions is None:
        return setup, present[:max_conditions]
    lookup = {}
    for c in present:
        lookup.setdefault(_text(c), c)
        lookup.setdefault(condition_label(c, ds.attrs), c)
    unknown = [str(w) for w in conditions if _text(w) not in lookup]
    if unknown:
        raise ValueError(f"no condition {unknown[0]!r} in setup {setup!r}; it has: "
                         f"{', '.join(_text(c) for c in present)} (--classes ...).")
    return setup, list(dict.fromkeys(lookup[_text(w)] for w in conditions))


def _rows(pick: np.ndarray, early: np.ndarray, ncols: int) -> list[np.ndarray]:
    """A condition's samples (generation order) as rows of at most ncols; memory-only rounds (`early`, by sample)
    never share a row with measured ones."""
    rows = []
    for part in (pick[early[pick]], pick[~early[pick]]):
        rows += [part[j:j + ncols] for j in range(0, len(part), ncols)]
    return rows


# ----------------------------------------------------------------------------------------------- the figure

def _caption(setup, baseline, pair, moved, changed, scale, once_rounds, hidden) -> list[str]:
    """The gallery's title and the lines under it: what the outline, Δ and steps mean, the barely changed, the
    rounds drawn once."""
    lines = [f"{setup}: SPELL acted on the outlined images ({int(changed.sum())} of {changed.size}), never on the "
             "others", "images in generation order (#: place among the condition's samples)"]
    if not pair:
        missing = f"{baseline!r} group" if baseline else "reference group (SPELL at radius 0)"
        lines.append(f"(no {missing}: the same seeds without SPELL are not shown, so Δ is unknown; "
                     "labels give SPELL's active steps)")
    else:
        small = int((changed & np.isfinite(moved) & (moved < 0.05 * scale)).sum())
        lines.append("Δ: how far SPELL moved the output from the same seed without it · steps: steps SPELL was active"
                     + (f" · {small} outlined image{'s' if small != 1 else ''} moved by Δ < {0.05 * scale:.2g} "
                        f"(5% of {scale:g}): barely changed" if small else ""))
        if (changed & ~np.isfinite(moved)).any():
            lines.append(f"dashed orange: SPELL acted, Δ unknown ({baseline!r} has no sample of this condition and seed)")
    if once_rounds:
        rs, many = ", ".join(map(str, once_rounds)), len(once_rounds) > 1
        lines.append(f"round{'s' if many else ''} {rs} only fill{'' if many else 's'} the memory (nothing to repel "
                     "yet; SPELL never acted, the output is the one without SPELL): drawn once"
                     + (f", its first images only ({hidden} more per condition)" if hidden > 0 else ""))
    return lines


DELTA_CMAP = "YlOrRd"  # outline colour: pale yellow (moved ~0) to dark red (moved the most)


def _delta_cmap():
    import matplotlib as mpl

    return ListedColormap(mpl.colormaps[DELTA_CMAP](np.linspace(0.18, 1.0, 256)))  # 0 still visible on white


def _outline(ax, color, ls="-"):
    for sp in ax.spines.values():
        sp.set_visible(True), sp.set_edgecolor(color), sp.set_linewidth(3.5), sp.set_linestyle(ls)


@plots.styled
def plot_gallery(datasets: dict, setup: str | None = None, baseline: str | None = None, max_conditions: int = 2,
                 max_images: int = 16, ncols: int = 8, conditions=None):
    """Fig. 6: per condition, images in generation order (round, position); each row of SPELL images sits under
    the same seeds without SPELL (group `baseline`). Only images SPELL acted on (`intervened`) are outlined; the
    outline's colour (colorbar) and the label under the image say how far the output moved from the one without
    SPELL (Δ, L2 in the diffusion space) and for how many steps SPELL was active. Rounds before the setup's
    `measure_from_round` (memory only: nothing to repel yet) are drawn once where they equal the baseline.
    setup and conditions: see `gallery_selection`; baseline None: the run's reference group. It draws every round
    (`load.every_round`), whichever samples the caller's groups keep."""
    datasets = every_round(datasets)
    baseline = reference_of(datasets) if baseline is None else baseline
    setup, conditions = gallery_selection(datasets, setup, conditions, baseline, max_conditions)
    ds, base = datasets[setup], datasets.get(baseline)
    cond = ds["condition"].values if "condition" in ds else np.zeros(ds.sizes["sample"], int)
    rnd = ds["round"].values if "round" in ds else np.zeros(ds.sizes["sample"], int)
    order = generation_order(ds)
    early_of = memory_only(ds)
    full = [order[cond[order] == c] for c in conditions]  # per condition, generation order
    picks = [np.concatenate([f[early_of[f]][:ncols], f[~early_of[f]]])[:max_images] for f in full]  # memory: 1 row
    chosen = np.concatenate(picks) if picks else np.array([], int)
    sub = ds.isel(sample=chosen)
    pair = base is not None
    partner = baseline_partner(sub, base) if pair else np.full(chosen.size, -1)
    moved = moved_from_baseline(sub, base) if pair else np.full(chosen.size, np.nan)
    steps, changed = active_steps(sub), ever_active(sub)
    unmoved, early = is_unmoved(moved, sub), early_of[chosen]

    imgs, is_rgb = images(ds, chosen) if chosen.size else (np.zeros((0, 1, 1)), True)
    has = partner >= 0
    bimgs = images(base, partner[has])[0] if has.any() else np.zeros((0,) + imgs.shape[1:])
    if not is_rgb:  # float x0: one shared scale for SPELL and baseline panels
        imgs, bimgs = plots.to_gray01([imgs, bimgs])
    else:
        imgs, bimgs = imgs / 255.0, bimgs / 255.0
    b_of = dict(zip(np.flatnonzero(has), bimgs))
    pos = {s: k for k, s in enumerate(chosen)}

    radius = ds.attrs.get("radius")
    radius = float(radius) if isinstance(radius, (int, float, np.number)) and radius > 0 else None
    shown = moved[changed & np.isfinite(moved)]
    vmax = max([v for v in (shown.max() if shown.size else None, radius) if v is not None] or [1.0])
    vmax = max(vmax, 1.1 * radius) if radius is not None else vmax  # the dashed radius line stays inside the bar
    cmap, norm = _delta_cmap(), Normalize(0, vmax)

    rows = [(ci, row) for ci, p in enumerate(picks) for row in _rows(p, early_of, ncols)]
    ncols = max(1, min(ncols, max((len(row) for _, row in rows), default=1)))
    rows = [(ci, row) for ci, p in enumerate(picks) for row in _rows(p, early_of, ncols)]
    blocks = []  # (condition index, samples, kinds): a memory-only row that equals its baseline is drawn once
    for ci, row in rows:
        ks = np.array([pos[s] for s in row])
        once = early[ks].all() and not changed[ks].any() and (unmoved[ks] | (partner[ks] < 0)).all()
        alone = not has[ks].any()  # no same-seed baseline for any: nothing to pair with
        blocks.append((ci, row, ("once",) if once else ("with",) if alone else ("without", "with")))
    nrows = sum(len(k) for _, _, k in blocks)
    fig = plots.Figure(figsize=(1.15 * ncols + 2.2, 1.45 * max(nrows, 1) + 1.3), layout="constrained")
    axes = fig.subplots(max(nrows, 1), ncols, squeeze=False)
    r = 0
    for ci, block, kinds in blocks:
        for kind in kinds:
            for j in range(ncols):
                ax = axes[r, j]
                ax.set_xticks([]), ax.set_yticks([])
                for sp in ax.spines.values():
                    sp.set_visible(False)
                if j >= len(block):
                    ax.axis("off")
                    continue
                k = pos[block[j]]
                img = b_of.get(k) if kind == "without" else imgs[k]
                if img is None:
                    ax.text(0.5, 0.5, "no\nbaseline", ha="center", va="center", fontsize=7, transform=ax.transAxes)
                else:
                    ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
                if kind == "with" and changed[k]:  # SPELL acted: outline coloured by how far the output moved
                    known = np.isfinite(moved[k])
                    _outline(ax, cmap(norm(moved[k])) if known else plots.HIGHLIGHT, "-" if known else "--")
                    ax.set_xlabel(delta_text(moved[k] if pair else None, steps[k]), fontsize=7, labelpad=2)
                elif kind == "with" and pair and np.isfinite(moved[k]) and not unmoved[k]:  # moved, never active
                    ax.set_xlabel(delta_text(moved[k], steps[k]), fontsize=7, labelpad=2, color="0.4")
                if kind == kinds[0]:  # generation order above the first row of a block
                    ax.set_title(f"#{int(np.flatnonzero(full[ci] == block[j])[0]) + 1} · round {rnd[block[j]]}",
                                 fontsize=7)
            same = has[[pos[b] for b in block]].all()
            label = {"once": f"round {rnd[block[0]]}, memory only\n" + ("= without SPELL" if same else "SPELL idle"),
                     "without": "without SPELL",
                     "with": "with SPELL" if len(kinds) > 1 or not pair else "with SPELL\n(no baseline\nfor these seeds)"}[kind]
            axes[r, 0].set_ylabel(f"{condition_label(conditions[ci], ds.attrs)}\n{label}",
                                  fontsize=8)
            axes[r, 0].yaxis.set_visible(True)
            r += 1
    if pair and shown.size:
        from matplotlib.cm import ScalarMappable

        bar = fig.colorbar(ScalarMappable(norm, cmap), ax=axes, shrink=min(0.6, 4.0 / max(nrows, 1)), aspect=25,
                           pad=0.01)
        ref = f"; dashed: the radius r = {radius:g}" if radius is not None else ""
        bar.set_label(f"outline: Δ = ‖x0 − x0 without SPELL‖\n(diffusion space{ref})", fontsize=8)
        if radius is not None:
            bar.ax.axhline(radius, color="0.1", lw=1.2, ls="--")
    once = sorted({int(rnd[b[1][0]]) for b in blocks if b[2] == ("once",)})
    hidden = max(int(early_of[f].sum()) for f in full) - ncols if full else 0
    lines = _caption(setup, baseline, pair, moved, changed, radius or vmax, once, hidden)
    width = fig.get_figwidth()
    fig.suptitle(textwrap.fill(lines[0], int(width * 11)), fontweight="bold", fontsize=10)
    fig.supxlabel("\n".join(textwrap.fill(line, int(width * 14)) for line in lines[1:]), fontsize=8)
    return fig
