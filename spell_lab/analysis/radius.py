"""The radius ablation (paper Section 4.3, Figure 3; Appendix D calibration; Appendix F on larger radii): the statistics.

Pure functions over the run store's Datasets (docs/design.md section 5) and held-out real data, and its entry of the
shared analysis driver (`ANALYSIS`; `load_run`, `latest_run`, `analyse_run`, `main` come from
`spell_lab.analysis.driver`); the figures and the W&B run are `spell_lab.analysis.radius_figures`.

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
  `median_last_active_t` is over trajectories ever active (NaN when none is), `median_last_active_sigma_alpha` the
  median noise level at their last active step; `active_at_paper_0.8`/`0.6` the active share at the paper's t = 0.8
  and 0.6 noise levels (sigma/alpha 5.11, 2.28); `share_changed` the share ever active; `active_at_end` the share
  still active at the final step.
"""

from __future__ import annotations

import json
import re
import sys

import numpy as np
import pandas as pd
import xarray as xr

from . import driver
from .activity import activity_numbers
from .load import model_name
from ..models import matched_reference
from .quality import condition_metrics, generated

GROUP = re.compile(r"^r\d+$")
QUALITY = ("precision", "recall", "density", "coverage")
METRICS = QUALITY + ("vendi", "vendi_raw", "fd")
SPARSITY = ("mean_active_share", "active_at_0.8", "active_at_0.6", "active_at_paper_0.8", "active_at_paper_0.6",
            "active_at_end", "share_changed", "median_last_active_t", "median_last_active_sigma_alpha")


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
    numbers), and the long per-(group, condition) table behind the means."""
    datasets = {n: datasets[n] for n in radius_groups(datasets)}
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
    cols = ["radius", "radius_over_median", *METRICS, "mean_active_share", "active_at_paper_0.8", "share_changed",
            "active_at_end", "median_last_active_t", "median_last_active_sigma_alpha"]
    shown = table[[c for c in cols if c in table]].copy().astype(object)
    for c in shown.columns:
        pct = c in ("mean_active_share", "active_at_paper_0.8", "share_changed", "active_at_end")
        fmt = (lambda v: f"{100 * v:.1f}%") if pct else (lambda v: f"{v:.2f}") if c in ("radius", "fd") \
            else (lambda v: f"{v:.3g}") if c == "median_last_active_sigma_alpha" else (lambda v: f"{v:.3f}")
        shown[c] = [("—" if isinstance(v, float) and np.isnan(v) else fmt(v)) for v in table[c]]
    shown = shown.rename(columns={"radius_over_median": "r/median", "mean_active_share": "active(mean t)",
                                  "share_changed": "changed", "median_last_active_t": "med_last_t",
                                  "median_last_active_sigma_alpha": "med_last_σ/α", "active_at_end": "active@end",
                                  "active_at_paper_0.8": "active@paper0.8"})
    return shown.to_string()


# ----------------------------------------------------------------------------------------------- the entry

def statistics(datasets: dict, run_dir=None, reference=None, k: int = 5) -> dict:
    """The metric tables against held-out real data. reference: (x, cond, features) or None for the built-in
    model's held-out data (its registry entry)."""
    desc = "given by the caller"
    if reference is None:
        first = datasets[radius_groups(datasets)[0]]  # every radius: the same seeds, so the same counts
        *reference, desc = matched_reference(model_name(first.attrs), first["condition"].values)
    real_x, real_cond, features = reference
    table, per = metric_tables(datasets, real_x, real_cond, features, k=k)
    return {"table": table, "per_condition": per, "reference": desc}


FIGURES = "spell_lab.analysis.radius_figures"
ANALYSIS = driver.register(driver.Analysis(
    experiment="radius", select=radius_groups, keep=("x0",), statistics=statistics,
    figures=driver.lazy(FIGURES, "figures"), wandb_runs=driver.lazy(FIGURES, "wandb_runs"),
    files=lambda r: {"radius_table.csv": r["table"].to_csv(), "radius_per_condition.csv": r["per_condition"].to_csv(index=False)},
    format_table=format_table,
    none_found="has no radius groups (r00, r01, ...); make one with `python -m spell_lab.experiments.radius`",
    summary_lines=lambda res: [f"\nreal data: {res['reference']}"]))
load_run, latest_run, analyse_run, main = driver.bind(ANALYSIS)


if __name__ == "__main__":
    sys.exit(main())
