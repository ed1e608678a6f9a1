"""How often, how strongly and how long SPELL acts, per sampling step (paper Section 4.4, Appendix F, Figures 5, 6, 9-15):
the statistics.

Pure functions over the run store's Datasets (docs/design.md section 5) and its entry of the shared analysis driver
(`ANALYSIS`; `spell_lab.analysis.driver`); the figures and W&B runs are `spell_lab.analysis.sparsity_figures`.

    python -m spell_lab.analysis.sparsity RUN_DIR [--wandb offline|disabled|online] [--gallery SETUP] [--classes 3 5]

Definitions: the activity ones (active, active share, share active at t, last active t, stops for good, stopped
share) are `spell_lab.analysis.activity`'s; this module adds
- *Share active at the paper's t*: at the step whose noise level sigma/alpha is nearest the one the paper's t = 0.8
  and 0.6 have on Latent Diffusion's schedule (5.11 and 2.28; `schedules.paper_noise_levels`). Models on other
  schedules reach these levels at other t (digits: t = 0.8 is sigma/alpha 25.1), so these columns are the ones to
  compare with the paper's Figure 5 (40% and 21%, `PAPER_ACTIVE_SHARE`) and between models.
- *Median last active sigma/alpha*: the median over ever-active trajectories of the noise level at their last
  active step (beside the median last active t, which means another noise level on another schedule).
- *Curves*: every per-step table carries each step's sigma/alpha (`sigma_alpha`) beside t; the figures draw it
  as a second axis with the paper's two noise levels marked (`spell_lab.analysis.sparsity_figures`).
- *Relative magnitude quantiles*: per step, linear-interpolation quantiles (numpy's default) across samples of
  `relative_magnitude`, either over the trajectories *active* at that step (`over="active"`, the default; NaN
  where none is active) or over *all* trajectories (`over="all"`, inactive ones count as 0). The maximum is over
  all trajectories (inactive ones are 0, so it is the same for both).

Which samples: every function uses the samples it is given. The driver's `load_run` gives each group's measured
samples (`load.measured`: rounds from its `measure_from_round` on; the rounds before only fill the memory); the
gallery shows every round (`load.every_round`; memory-only ones once).
The run's reference group (`reference_group` in the store: the `iterative` plan at radius 0) is left out of curves
and tables and serves the gallery as "the same seeds without SPELL". Setups come in the run's order (`group_order`).
"""

from __future__ import annotations

import sys
import warnings

import numpy as np
import pandas as pd
import xarray as xr

from .. import schema
from . import driver
from ..schedules import PAPER_TIMES
from .activity import _active_np, active, active_by_source, active_share, activity_numbers, stopped_share
from .gallery import gallery_selection
from .noise import levels_at_steps
from .load import order_of, reference_of

SUMMARY_KEYS = (  # the table's columns, in order
    "n_samples",
    "active_at_0.8",
    "active_at_0.6",
    "active_at_paper_0.8",  # at the paper's t = 0.8 noise level: sigma/alpha 5.11 (LD's schedule), any model
    "active_at_paper_0.6",  # sigma/alpha 2.28
    "share_steps_rel_below_5pct",  # over active (sample, step) pairs
    "max_relative_magnitude",
    "median_last_active_t",  # over trajectories ever active
    "median_last_active_sigma_alpha",  # the noise level there: comparable across schedules
    "share_changed",  # `intervened`: ever active
    "share_steps_rel_below_5pct_all",  # over all (sample, step) pairs: inactive steps count as 0 < 5%
    "median_relative_magnitude_active",  # over active (sample, step) pairs pooled
    "stops_for_good",  # among ever-active trajectories
    "active_at_end",  # active share at the final step: repellency that runs until t -> 0
)
# The paper's Figure 5b (Section 4.4): the share of trajectories still active at its t = 0.8 and 0.6 on Latent
# Diffusion; compared at those t's noise levels (`schedules.paper_noise_levels`), never at equal t.
PAPER_ACTIVE_SHARE = {0.8: 0.40, 0.6: 0.21}


def setups(datasets: dict) -> list[str]:
    """The analysed setups of a run, in the run's order; the reference group (radius 0) is not one of them."""
    ref = reference_of(datasets)
    return [n for n in order_of(datasets) if n != ref]


# ----------------------------------------------------------------------------------------------- per step

def relative_magnitude_quantiles(ds: xr.Dataset, q=(0.1, 0.5, 0.9), over: str = "active") -> xr.DataArray:
    """(quantile, step) quantiles of relative magnitude across samples, over "active" trajectories or "all"."""
    rel = ds["relative_magnitude"]
    if over == "active":
        rel = rel.where(active(ds))  # inactive -> NaN, skipped; a step with none active -> NaN
    elif over != "all":
        raise ValueError(f"over must be 'active' or 'all', got {over!r}.")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN steps are expected: nothing active there
        return rel.quantile(list(q), dim="sample", skipna=True)


def relative_magnitude_max(ds: xr.Dataset) -> xr.DataArray:
    """(step,) maximum relative magnitude across all trajectories (0 where none is active)."""
    return ds["relative_magnitude"].max("sample", skipna=True)


# ----------------------------------------------------------------------------------------------- summary

def share_steps_below(ds: xr.Dataset, threshold: float = 0.05, over: str = "active") -> float:
    """Share of (sample, step) pairs with relative magnitude < threshold, over active pairs or all written pairs."""
    if over not in ("active", "all"):
        raise ValueError(f"over must be 'active' or 'all', got {over!r}.")
    rel = ds["relative_magnitude"].transpose("sample", "step").values
    keep = np.isfinite(rel) & (_active_np(ds) if over == "active" else True)  # NaN: unwritten, never counted
    return float(np.mean(rel[keep] < threshold)) if keep.any() else float("nan")


def summary(ds: xr.Dataset) -> dict:
    """One setup's numbers (keys: SUMMARY_KEYS; definitions in the module docstring). NaN where undefined."""
    rel = ds["relative_magnitude"].transpose("sample", "step").values
    rel_active = rel[_active_np(ds) & np.isfinite(rel)]
    acts = activity_numbers(ds)
    out = {
        "n_samples": int(ds.sizes["sample"]),
        "active_at_0.8": acts["active_at_0.8"],
        "active_at_0.6": acts["active_at_0.6"],
        **{f"active_at_paper_{t}": acts[f"active_at_paper_{t}"] for t in PAPER_TIMES},
        "share_steps_rel_below_5pct": share_steps_below(ds, 0.05, "active"),
        "max_relative_magnitude": float(np.nanmax(rel)) if np.isfinite(rel).any() else float("nan"),
        "median_last_active_t": acts["median_last_active_t"],
        "median_last_active_sigma_alpha": acts["median_last_active_sigma_alpha"],
        "share_changed": acts["share_changed"],
        "share_steps_rel_below_5pct_all": share_steps_below(ds, 0.05, "all"),
        "median_relative_magnitude_active": float(np.median(rel_active)) if rel_active.size else float("nan"),
        "stops_for_good": acts["stops_for_good"],
        "active_at_end": acts["active_at_end"],
    }
    assert tuple(out) == SUMMARY_KEYS
    return out




def summary_table(datasets: dict) -> pd.DataFrame:
    """One row per setup (the run's order, the reference group left out), columns SUMMARY_KEYS."""
    rows = {name: summary(datasets[name]) for name in setups(datasets)}
    table = pd.DataFrame.from_dict(rows, orient="index", columns=list(SUMMARY_KEYS))
    table.index.name = "setup"
    return table


def curves(ds: xr.Dataset) -> pd.DataFrame:
    """The per-t curves of one setup as a table, one row per step (what the figures draw and W&B logs), with each
    step's noise level sigma/alpha beside t (NaN where the store records none)."""
    q = relative_magnitude_quantiles(ds, (0.1, 0.5, 0.9), "active")
    src = active_by_source(ds, "mean")
    data = {
        "t": ds["t"].values.astype(float),
        "sigma_alpha": levels_at_steps(ds, np.arange(ds.sizes["step"])),
        "active_share": active_share(ds).values,
        "rel_q10_active": q.isel(quantile=0).values,
        "rel_median_active": q.isel(quantile=1).values,
        "rel_q90_active": q.isel(quantile=2).values,
        "rel_median_all": relative_magnitude_quantiles(ds, (0.5,), "all").isel(quantile=0).values,
        "rel_max": relative_magnitude_max(ds).values,
        "stopped_share": stopped_share(ds).values,
        **{f"active_{s}_mean": src.sel(source=s).values for s in schema.SOURCES},
    }
    return pd.DataFrame(data, index=pd.RangeIndex(ds.sizes["step"], name="step"))


def format_table(table: pd.DataFrame) -> str:
    """The summary table as aligned text: shares as percentages, t and magnitudes to 3 decimals, sigma/alpha to 3
    significant digits."""
    pct = [c for c in table.columns if c.startswith(("active_at", "share", "stops"))]
    shown = table.copy().astype(object)
    for c in table.columns:
        fmt = ((lambda v: f"{100 * v:.1f}%") if c in pct else (lambda v: f"{v:.3g}") if c.endswith("sigma_alpha")
               else (lambda v: f"{v:.3f}") if c != "n_samples" else str)
        shown[c] = [("—" if isinstance(v, float) and np.isnan(v) else fmt(v)) for v in table[c]]
    return shown.T.to_string()  # setups as columns: 11 rows stay readable in a terminal


# ----------------------------------------------------------------------------------------------- the entry

def statistics(datasets: dict, run_dir=None, gallery: dict | None = None) -> dict:
    """The summary table. gallery: the gallery's setup and conditions (plot_gallery keywords; default: iterative,
    the first two)."""
    return {"table": summary_table(datasets), "gallery": gallery}


def _gallery_flags(p) -> None:
    g = p.add_argument_group("gallery (Fig. 6)")
    g.add_argument("--gallery", metavar="SETUP", type=str | None, default=None,
                   help="the setup the gallery draws (default: iterative where present, else the first)")
    g.add_argument("--classes", metavar="C", type=str, nargs="+", default=None,
                   help="the conditions it shows, by value or name, e.g. --classes 3 5 (default: the first two)")


def _gallery_options(args, datasets) -> dict:
    """--gallery/--classes as analyse_run's `gallery` keywords; an unknown setup or class fails here, early."""
    gallery = {"setup": args.gallery, "conditions": args.classes}
    gallery_selection(datasets, **gallery)
    return {"gallery": gallery}


FIGURES = "spell_lab.analysis.sparsity_figures"
ANALYSIS = driver.register(driver.Analysis(
    experiment="sparsity", select=lambda ds: sorted(ds) if setups(ds) else [], statistics=statistics,
    figures=driver.lazy(FIGURES, "figures"), wandb_runs=driver.lazy(FIGURES, "wandb_runs"),
    files=lambda r: {"summary.csv": r["table"].to_csv()}, format_table=format_table,
    none_found="has no sparsity setup groups (only the reference group, or none)",
    flags=_gallery_flags, options=_gallery_options))
load_run, latest_run, analyse_run, main = driver.bind(ANALYSIS)


if __name__ == "__main__":
    sys.exit(main())
