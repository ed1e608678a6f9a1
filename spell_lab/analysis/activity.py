"""Per-step activity of SPELL over a store group (xarray): the definitions every analysis shares.

- A trajectory is *active* at a step when `active_shields > 0` (`spell_lab.activity`): x0_hat lies inside at least
  one shield, so its ReLU correction is non-zero (barring exact cancellation of opposite intra-batch pushes).
- *Active share* at a step: the fraction of all trajectories (samples) that are active there.
- *Share active at t = 0.8*: the active share at the step whose t is nearest 0.8; where t repeats (Heun-type
  samplers evaluate twice per t) the first such step, i.e. the earlier one in sampling order.
- *Share active at the paper's t = 0.8*: at the step whose sigma/alpha is nearest 5.11 in log scale, the level the
  paper's t = 0.8 has on Latent Diffusion's schedule (`schedules.paper_noise_levels`; 0.6: 2.28).
- *Last active t*: t at a trajectory's last active step (NaN if never active); its *sigma/alpha*, the noise level
  there (the store's own, `noise.step_levels`). Its activity *stops for good*
  when its active steps form one unbroken run; a trajectory still active at the final step also counts as one run.
- *Stopped share* at step i: among trajectories ever active, those whose last active step is before i.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import xarray as xr

from .. import schema
from ..activity import first_last_active, is_active
from ..schedules import paper_noise_levels
from .noise import levels_at_steps, step_levels

ACTIVITY_KEYS = ("mean_active_share", "active_at_0.8", "active_at_0.6", "active_at_paper_0.8", "active_at_paper_0.6",
                 "active_at_end", "share_changed", "median_last_active_t", "median_last_active_sigma_alpha",
                 "stops_for_good")


def active(ds: xr.Dataset) -> xr.DataArray:
    """(sample, step) bool: at least one shield is active, so SPELL's correction is non-zero."""
    return xr.apply_ufunc(is_active, ds["active_shields"])



def active_share(ds: xr.DataArray | xr.Dataset) -> xr.DataArray:
    """(step,) share of all trajectories active at each step (paper Fig. 5b)."""
    return active(ds).mean("sample")



def nearest_step(ds: xr.Dataset, t: float) -> int:
    """Index of the step whose t is nearest `t`; ties (repeated t) go to the first, earlier step."""
    return int(np.argmin(np.abs(ds["t"].values - t)))  # argmin returns the first minimiser



def active_at(ds: xr.Dataset, t: float) -> float:
    """Share of trajectories active at the step nearest t (see `nearest_step`)."""
    return float(active_share(ds).isel(step=nearest_step(ds, t)))



def nearest_noise_step(ds: xr.Dataset, level: float) -> int:
    """Index of the step whose noise level sigma/alpha is nearest `level` in log scale (ties: the earlier step), so
    that models on different schedules are compared where their inputs are equally noisy."""
    with np.errstate(divide="ignore"):  # alpha 0 (pure noise) or sigma 0 (the last step): infinitely far
        return int(np.argmin(np.abs(np.log(step_levels(ds)) - np.log(level))))


def active_at_noise(ds: xr.Dataset, level: float) -> float:
    """Share of trajectories active at the step nearest the noise level sigma/alpha = `level`."""
    return float(active_share(ds).isel(step=nearest_noise_step(ds, level)))



def active_by_source(ds: xr.Dataset, stat: str = "mean") -> xr.DataArray:
    """(source, step): mean number of active shields per trajectory from each source ("mean"), or the share of
    trajectories with at least one active shield from it ("share"). The means add up to mean `active_shields`."""
    if stat not in ("mean", "share"):
        raise ValueError(f"stat must be 'mean' or 'share', got {stat!r}.")
    per = [(ds[schema.count_name(s)] > 0) if stat == "share" else ds[schema.count_name(s)].clip(min=0) for s in schema.SOURCES]
    return xr.concat(per, dim=pd.Index(list(schema.SOURCES), name="source")).mean("sample")



def stopped_share(ds: xr.Dataset) -> xr.DataArray:
    """(step,) among ever-active trajectories, the share whose repellency has stopped for good before each step."""
    last = last_active_step(ds)
    ever = last >= 0
    steps = np.arange(ds.sizes["step"])
    share = ((last.values[ever.values, None] < steps[None, :]).mean(0) if bool(ever.any())
             else np.full(steps.size, np.nan))
    return xr.DataArray(share, dims="step", coords=ds["t"].coords)



def _active_np(ds: xr.Dataset) -> np.ndarray:
    return active(ds).transpose("sample", "step").values



def last_active_step(ds: xr.Dataset) -> xr.DataArray:
    """(sample,) index of the last active step; -1 where never active (recomputed from the counts)."""
    return xr.DataArray(first_last_active(_active_np(ds))[1], dims="sample")


def last_active_t(ds: xr.Dataset) -> xr.DataArray:
    """(sample,) t at the last active step; NaN where never active."""
    last = last_active_step(ds).values
    t = ds["t"].values.astype(float)
    return xr.DataArray(np.where(last >= 0, t[np.maximum(last, 0)], np.nan), dims="sample")



def active_runs(ds: xr.Dataset) -> xr.DataArray:
    """(sample,) number of separate runs of consecutive active steps: 0 never active, 1 stops for good, >1 restarts."""
    a = _active_np(ds)
    starts = a[:, :1].sum(1) + (a[:, 1:] & ~a[:, :-1]).sum(1)  # rising edges
    return xr.DataArray(starts, dims="sample")



def stops_for_good(ds: xr.Dataset) -> float:
    """Among trajectories ever active, the share whose activity never resumes once it stops (one unbroken run)."""
    runs = active_runs(ds).values
    return float(np.mean(runs[runs > 0] == 1)) if (runs > 0).any() else float("nan")



def ever_active(ds: xr.Dataset) -> np.ndarray:
    """(sample,) bool: the stored `intervened` flag, or any active step where the store lacks it."""
    return ds["intervened"].values.astype(bool) if "intervened" in ds else _active_np(ds).any(1)



def last_active_level(ds: xr.Dataset) -> np.ndarray:
    """(sample,) sigma/alpha at the last active step; NaN where never active (or the store records no level)."""
    return levels_at_steps(ds, last_active_step(ds).values)


def _nanmedian(x: np.ndarray) -> float:
    return float(np.nanmedian(x)) if np.isfinite(x).any() else float("nan")


def activity_numbers(ds: xr.Dataset) -> dict:
    """How much and how long SPELL acts on a group (keys ACTIVITY_KEYS): the active share averaged over
    (trajectory, step) pairs, at t = 0.8, 0.6, at the paper's t = 0.8, 0.6 noise levels (sigma/alpha 5.11, 2.28:
    `active_at_noise`) and at the last step, the share ever active, the median last active t and the median
    sigma/alpha there (over ever-active trajectories) and the share that stops for good. NaN where undefined."""
    act = _active_np(ds)
    has_levels = step_levels(ds) is not None
    return {
        "mean_active_share": float(active(ds).mean()),
        "active_at_0.8": active_at(ds, 0.8),
        "active_at_0.6": active_at(ds, 0.6),
        **{f"active_at_paper_{t}": active_at_noise(ds, level) if has_levels else float("nan")
           for t, level in paper_noise_levels().items()},
        "active_at_end": float(act[:, -1].mean()) if act.size else float("nan"),
        "share_changed": float(ever_active(ds).mean()) if ds.sizes["sample"] else float("nan"),
        "median_last_active_t": _nanmedian(last_active_t(ds).values),
        "median_last_active_sigma_alpha": _nanmedian(last_active_level(ds)),
        "stops_for_good": stops_for_good(ds),
    }
