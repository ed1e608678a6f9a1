"""The protection benchmark (paper Section 4.6, Table 2, Figure 7; Appendix G): how many outputs land too close to
a protected item under each shield search, at what quality and time.

The statistics: pure functions over the run store's Datasets (docs/design.md section 5) and the run's
`protected.npy`, and the driver's entry (`analyse_run`, `main`); the figures (Figure 7 among them) and the W&B run are
`spell_lab.analysis.protection_figures`.

    python -m spell_lab.analysis.protection RUN_DIR [--wandb offline|disabled|online]

Definitions:
- *Too close*: an output within the radius r of a protected item, judged afterwards from the stored x0 by an
  exhaustive search of the whole set in float64 (`nearest_items`), whatever index the run searched with.
  `own_inside_pct` is what the run's own search saw at the end (`inside_shield`): an approximate index misses some.
- *Precision, recall*: per condition against the model's held-out real data, as many per condition as generated
  (`spell_lab.models.matched_reference`; k = 5), averaged over conditions. The held-out digits are among digits' training images, so protected items themselves;
  fashion's come from the test set, not protected.
- *Seconds per image*: the run's wall-clock sampling time per output (`sample_seconds`, one round shared by its
  batch); *search share*: the part of it the protected-set source spent searching (`search_seconds`).
- *Cells per query*: index cells the search scanned per query (`cells_probed`), averaged over queries and steps:
  the IVF's nprobe; the exact search scans its flat bound index (1) or serves the query from its cache (0); "—" for
  the exhaustive search, which has no cells.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import xarray as xr

from . import driver
from .gallery import baseline_partner
from .load import model_name, order_of, reference_of
from .markdown import markdown
from ..models import matched_reference
from .quality import condition_metrics, generated

SET_FILE = "protected.npy"
CHUNK = 4096  # protected items per block of the exhaustive search
# The paper's Table 2 (MDTv2 on ImageNet-1k, 1.2M protected training images, 50k outputs, GPU), as printed.
PAPER_TABLE2 = pd.DataFrame(
    [("no SPELL", "—", 7.60, 0.792, 0.242, 2.434), ("+ SPELL", "1", 1.08, 0.792, 0.181, 4.633),
     ("+ SPELL", "2", 0.55, 0.788, 0.175, 6.057), ("+ SPELL", "3", 0.33, 0.777, 0.162, 7.790),
     ("+ SPELL", "5", 0.22, 0.771, 0.163, 9.949), ("+ SPELL", "10", 0.16, 0.768, 0.160, 13.545)],
    columns=["model", "searched_cells", "too_close_pct", "precision", "recall", "seconds_per_image"])


# ----------------------------------------------------------------------------------------------- the judge

def nearest_items(x, items, chunk: int = CHUNK) -> tuple[np.ndarray, np.ndarray]:
    """Exhaustive nearest protected item of each x (B, ...): (distance (B,) float64, index (B,)). Blocks of items
    in float64 (items may be a memory map); the winner's distance from exact differences, not the expansion."""
    x = torch.as_tensor(np.asarray(x)).reshape(len(x), -1).double()
    origin = x.mean(0, keepdim=True)
    xc = x - origin
    best = torch.full((len(x),), float("inf"), dtype=torch.float64)
    arg = torch.zeros(len(x), dtype=torch.long)
    for start in range(0, len(items), chunk):
        z = _rows(items, start, start + chunk) - origin
        d2 = (xc * xc).sum(1, keepdim=True) + (z * z).sum(1)[None] - 2 * xc @ z.T
        m, i = d2.min(1)
        better = m < best
        best, arg = torch.where(better, m, best), torch.where(better, i + start, arg)
    winner = torch.cat([_rows(items, int(i), int(i) + 1) for i in arg]) if len(x) else x
    return (x - winner).norm(dim=1).numpy(), arg.numpy()


def _rows(items, start: int, stop: int) -> torch.Tensor:
    block = np.asarray(items[start:stop], dtype=np.float64)
    return torch.from_numpy(block.reshape(len(block), -1))


def overlap_share(items, radius: float, max_queries: int = 2000, seed: int = 0) -> float:
    """Share of protected items whose shield overlaps another's (nearest other item closer than 2r); over a seeded
    subset of `max_queries` items when the set is larger."""
    n = len(items)
    q = np.arange(n) if n <= max_queries else np.sort(np.random.default_rng(seed).choice(n, max_queries, replace=False))
    x = item_rows(items, q)
    xc_sq = (x * x).sum(1, keepdim=True)
    nearest = torch.full((len(q),), float("inf"), dtype=torch.float64)
    for start in range(0, n, CHUNK):
        z = _rows(items, start, start + CHUNK)
        d2 = xc_sq + (z * z).sum(1)[None] - 2 * x @ z.T
        own = (torch.from_numpy(q)[:, None] == torch.arange(start, start + len(z))[None])
        nearest = torch.minimum(nearest, d2.masked_fill(own, float("inf")).min(1).values)
    return float((nearest.clamp_min(0).sqrt() < 2 * radius).double().mean())


def item_rows(items, idx) -> torch.Tensor:
    return torch.cat([_rows(items, int(i), int(i) + 1) for i in idx])


# ----------------------------------------------------------------------------------------------- the table

def groups(datasets: dict) -> list[str]:
    """The run's groups in the order the run wrote them: the reference (no SPELL) first, then the searches."""
    return order_of(datasets)


def setting_of(ds: xr.Dataset) -> dict:
    raw = ds.attrs.get("setting", "{}")
    return json.loads(raw) if isinstance(raw, str) else dict(raw)


def searched_cells(ds: xr.Dataset) -> str:
    """Table 2's "searched cells" column for a group, from the protected-set spec it ran with."""
    setting = setting_of(ds)
    spec, method = setting.get("protected"), setting.get("method") or {}
    if not spec:
        return "—"
    if spec.get("index") == "faiss":
        if spec.get("exact"):
            return "exact (bound index)" + (" + cache" if spec.get("cache_margin") else "")
        return str(spec.get("nprobe"))
    return "all (exhaustive)" + (", overlap-aware" if method.get("overlap") not in (None, "single") else "")


def protection_radius(datasets: dict) -> float:
    """The shield radius of the run: the SPELL groups' radius (the run's config where only the baseline exists)."""
    radii = {float(ds.attrs["radius"]) for ds in datasets.values() if float(ds.attrs.get("radius", 0) or 0) > 0}
    if len(radii) > 1:
        raise ValueError(f"the run's searches use different radii {sorted(radii)}; Table 2 compares one radius.")
    if radii:
        return radii.pop()
    cfg = next(iter(datasets.values())).attrs.get("config", "{}")
    r = (json.loads(cfg) if isinstance(cfg, str) else cfg).get("protection", {}).get("radius")
    if not r:
        raise ValueError("the run names no protection radius; regenerate it with "
                         "`python -m spell_lab.experiments.protection`.")
    return float(r)


def judge(datasets: dict, items, radius: float) -> dict[str, pd.DataFrame]:
    """Per group, per sample: the nearest protected item (exhaustive) and whether the output is too close."""
    out = {}
    for name in groups(datasets):
        ds = datasets[name]
        dist, idx = nearest_items(ds["x0"].transpose("sample", ...).values, items)
        out[name] = pd.DataFrame({"condition": ds["condition"].values, "seed": ds["seed"].values, "nearest": dist,
                                  "nearest_item": idx, "too_close": dist < radius})
    return out


def protection_table(datasets: dict, items, radius: float, reference, k: int = 5,
                     judged: dict | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(table, per_condition): one row per group in Table 2's layout plus the run's own diagnostics, and the
    per-(group, condition) precision/recall behind its means. reference: (real x, real cond, features)."""
    real_x, real_cond, features = reference
    judged = judge(datasets, items, radius) if judged is None else judged
    rf = features(real_x)
    rows, long = {}, []
    for name in groups(datasets):
        ds, j = datasets[name], judged[name]
        x0, cond = generated(ds)
        per = condition_metrics(x0, cond, real_x, real_cond, features, k, real_features=rf)
        per.insert(0, "group", name)
        long.append(per)
        rows[name] = dict(searched_cells=searched_cells(ds), n=len(j), too_close_pct=100 * j["too_close"].mean(),
                          n_too_close=int(j["too_close"].sum()), precision=per["precision"].mean(),
                          recall=per["recall"].mean(), **timing(ds), **_own(ds, name),
                          min_nearest_over_r=float(j["nearest"].min() / radius))
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "search"
    base = table["seconds_per_image"].get(reference_of(datasets), np.nan)
    table.insert(table.columns.get_loc("seconds_per_image") + 1, "time_vs_baseline", table["seconds_per_image"] / base)
    return table, pd.concat(long, ignore_index=True)


def timing(ds: xr.Dataset) -> dict:
    """Seconds per image, the share spent searching and the cells probed per query, as the run recorded them."""
    wall = ds["sample_seconds"].values.astype(float) if "sample_seconds" in ds else np.full(ds.sizes["sample"], np.nan)
    search = ds["search_seconds"].values.astype(float) if "search_seconds" in ds else np.full_like(wall, np.nan)
    cells = ds["cells_probed"].values if "cells_probed" in ds else np.full((1,), -1)
    probed = cells[cells >= 0]
    share = np.nansum(search) / np.nansum(wall) if np.isfinite(search).any() and np.nansum(wall) > 0 else np.nan
    return dict(seconds_per_image=float(np.nanmean(wall)) if np.isfinite(wall).any() else np.nan,
                search_share=float(share), cells_per_query=float(probed.mean()) if probed.size else np.nan)


def _own(ds: xr.Dataset, name: str) -> dict:
    """What the run itself saw: outputs its own search found inside a shield, and how many SPELL moved."""
    if not setting_of(ds).get("protected"):  # the reference: no protected set
        return dict(own_inside_pct=np.nan, moved_pct=np.nan)
    moved = (ds["active_protected"] > 0).any("step").values
    return dict(own_inside_pct=100 * float(ds["inside_shield"].values.mean()), moved_pct=100 * float(moved.mean()))


COLUMNS = {  # column -> (header, format)
    "searched_cells": ("searched cells", "{}"), "too_close_pct": ("too close", "{:.2f}%"),
    "n_too_close": ("n too close", "{:d}"), "n": ("n", "{:d}"), "precision": ("precision", "{:.3f}"),
    "recall": ("recall", "{:.3f}"), "seconds_per_image": ("time per image (s)", "{:.4f}"),
    "time_vs_baseline": ("× no SPELL", "{:.2f}"), "search_share": ("search share", "{:.0%}"),
    "cells_per_query": ("cells / query", "{:.1f}"), "own_inside_pct": ("inside (own search)", "{:.2f}%"),
    "moved_pct": ("moved by SPELL", "{:.1f}%"), "min_nearest_over_r": ("min d / r", "{:.3f}"),
}


def _shown(table: pd.DataFrame) -> pd.DataFrame:
    out = pd.DataFrame(index=table.index)
    for c, (header, fmt) in COLUMNS.items():
        if c in table:
            out[header] = [("—" if isinstance(v, float) and np.isnan(v) else fmt.format(v)) for v in table[c]]
    return out


def format_table(table: pd.DataFrame) -> str:
    return _shown(table).to_string()


def table_markdown(table: pd.DataFrame) -> str:
    return markdown(_shown(table), index="search")


def moved_examples(judged: dict, datasets: dict, search: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(samples of `search`, their baseline partners): outputs whose same seed without SPELL was too close, closest
    first, then other outputs SPELL moved; at most n."""
    ref = reference_of(datasets)
    ds, base = datasets[search], datasets[ref]
    partner = baseline_partner(ds, base)
    near = np.where(partner >= 0, judged[ref]["nearest"].to_numpy()[np.maximum(partner, 0)], np.inf)
    moved = (ds["active_protected"] > 0).any("step").values & (partner >= 0)
    order = np.argsort(near, kind="stable")
    pick = [i for i in order if moved[i] and near[i] < np.inf][:n]
    return np.array(pick, dtype=int), partner[pick] if pick else np.array([], int)



# ----------------------------------------------------------------------------------------------- the entry

def load_set(run_dir) -> np.ndarray:
    path = Path(run_dir) / SET_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: the run directory keeps the protected set it used as "
                                f"{SET_FILE}; regenerate with `python -m spell_lab.experiments.protection`.")
    return np.load(path, mmap_mode="r")


def statistics(datasets: dict, run_dir, reference=None, k: int = 5) -> dict:
    """Judge every output against RUN_DIR/protected.npy and build Table 2 (reference: (x, cond, features) or None for
    the built-in model's held-out data)."""
    items = load_set(run_dir)  # a missing set is one line, before anything is written
    radius = protection_radius(datasets)
    desc = "given by the caller"
    if reference is None:
        first = next(iter(datasets.values()))  # as many real items per condition as one group generates
        *reference, desc = matched_reference(model_name(first.attrs), first["condition"].values)
    judged = judge(datasets, items, radius)
    table, per = protection_table(datasets, items, radius, reference, k, judged)
    return {"table": table, "per_condition": per, "judged": judged, "items": items, "reference": desc,
            "radius": radius, "overlap_share": overlap_share(items, radius)}


FIGURES = "spell_lab.analysis.protection_figures"
ANALYSIS = driver.register(driver.Analysis(
    experiment="protection", select=groups, keep=("x0",), statistics=statistics,
    figures=driver.lazy(FIGURES, "figures"), wandb_runs=driver.lazy(FIGURES, "wandb_runs"),
    files=lambda r: {"table2.csv": r["table"].to_csv(), "table2_per_condition.csv": r["per_condition"].to_csv(index=False),
                     "table2.md": table_markdown(r["table"])},
    format_table=format_table,
    none_found="has no groups; make one with `python -m spell_lab.experiments.protection`",
    summary_lines=lambda res: [f"\nradius {res['radius']:.4g}; shields overlapping another: "
                               f"{res['overlap_share']:.0%} of items; real data: {res['reference']}"]))
load_run, latest_run, analyse_run, main = driver.bind(ANALYSIS)


if __name__ == "__main__":
    sys.exit(main())
