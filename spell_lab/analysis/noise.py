"""The noise level sigma/alpha as the time axis every model shares (docs/design.md section 2, "Time and noise level").

A store records each step's t, sigma and alpha (section 5), so its own sigma/alpha per step is read, never recomputed
from a schedule: a diffusers pipeline's scheduler and a built-in schedule are read the same way. Between recorded steps
the level is interpolated linearly in log(sigma/alpha) against t, which is what a figure's secondary axis needs; a
statistic reads recorded steps only (`activity.nearest_noise_step`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import xarray as xr


def step_levels(ds: xr.Dataset) -> np.ndarray | None:
    """(step,) sigma/alpha at each recorded step: inf where alpha = 0 (pure noise), 0 where sigma = 0 (the data);
    None for a store made without sigma and alpha."""
    if "sigma" not in ds or "alpha" not in ds:
        return None
    with np.errstate(divide="ignore", invalid="ignore"):
        return ds["sigma"].values.astype(float) / ds["alpha"].values.astype(float)


def levels_at_steps(ds: xr.Dataset, steps) -> np.ndarray:
    """sigma/alpha at the given step indices; NaN where the index is -1 (never active) or the store lacks the level."""
    steps = np.asarray(steps, dtype=int)
    levels = step_levels(ds)
    if levels is None:
        return np.full(steps.shape, np.nan)
    return np.where(steps >= 0, levels[np.maximum(steps, 0)], np.nan)


@dataclass(frozen=True)
class NoiseMap:
    """t <-> sigma/alpha of one store's steps: knots (t ascending, level finite and > 0), log-linear between them,
    held at the end knots outside them."""

    t: np.ndarray
    level: np.ndarray

    def to_level(self, t) -> np.ndarray:
        return np.exp(np.interp(np.asarray(t, float), self.t, np.log(self.level)))

    def to_t(self, level) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):  # matplotlib probes levels <= 0 too
            return np.interp(np.log(np.asarray(level, float)), np.log(self.level), self.t)

    def covers(self, level: float) -> bool:
        return bool(self.level[0] <= level <= self.level[-1])


def noise_map(ds: xr.Dataset) -> NoiseMap | None:
    """The store's own t <-> sigma/alpha, or None where it records no level or fewer than two usable steps."""
    levels = step_levels(ds)
    if levels is None:
        return None
    t = ds["t"].values.astype(float)
    keep = np.isfinite(levels) & (levels > 0)
    t, idx = np.unique(t[keep], return_index=True)  # Heun-type samplers repeat t, with the same level
    level = levels[keep][idx]
    if t.size < 2 or np.any(np.diff(level) <= 0):  # a level that does not grow with t cannot be an axis
        return None
    return NoiseMap(t, level)


def common_map(datasets: dict, names) -> NoiseMap | None:
    """One map for groups drawn on the same axes: the first group's, where every group's recorded levels agree
    with it (one model, one schedule); None where they differ or none records a level."""
    maps = [noise_map(datasets[n]) for n in names]
    if not maps or any(m is None for m in maps):
        return None
    first = maps[0]
    for m in maps[1:]:
        shared, i, j = np.intersect1d(first.t, m.t, return_indices=True)
        if not shared.size or not np.allclose(first.level[i], m.level[j], rtol=1e-6):
            return None
    return first
