"""Radius calibration and selection (paper Appendix D; design.md section 2), as pure functions.

- *Calibration*: the median over every within-condition pair (i < j, same condition) of the L2 distance between
  flattened final outputs generated without SPELL, all conditions pooled (the paper's reading); the grid is
  `GRID_SIZE` radii linspace(0, 2 x median).
"""

from __future__ import annotations

import numpy as np
import torch

GRID_SIZE = 16  # Appendix D: "We then test 16 values from 0 to 2 times the median distance."


def pairwise_within(x0, cond) -> np.ndarray:
    """Every within-condition pairwise L2 distance (i < j) of the flattened outputs, float64, as one flat array."""
    x = torch.as_tensor(x0).detach().cpu().reshape(len(x0), -1).double()
    cond = np.asarray(torch.as_tensor(cond).cpu())
    if cond.shape != (len(x),):
        raise ValueError(f"cond must hold one condition per sample, shape ({len(x)},); got {cond.shape}.")
    parts = []
    for c in np.unique(cond):
        xc = x[torch.from_numpy(cond == c)]
        if len(xc) > 1:
            i, j = torch.triu_indices(len(xc), len(xc), offset=1)
            parts.append((xc[i] - xc[j]).norm(dim=1).numpy())  # difference formula: exact, no cancellation
    return np.concatenate(parts) if parts else np.array([])


def median_within(x0, cond) -> float:
    """The calibration's scale: the median of every within-condition pairwise distance, conditions pooled."""
    d = pairwise_within(x0, cond)
    if d.size == 0:
        raise ValueError("calibration needs at least two samples of one condition; generate more per condition.")
    if not np.isfinite(d).all():
        raise ValueError("calibration outputs contain NaN or inf; the sampler diverged.")
    return float(np.median(d))


def radius_grid(median: float, n: int = GRID_SIZE) -> np.ndarray:
    """The paper's sweep: n radii linspace(0, 2 x median)."""
    if n < 2:
        raise ValueError(f"the radius grid needs >= 2 radii (got {n}).")
    return np.linspace(0.0, 2.0 * median, n)


def calibrate(x0, cond, n: int = GRID_SIZE) -> tuple[float, np.ndarray]:
    """(median within-condition pairwise distance, n radii linspace(0, 2 x median)) of outputs made without SPELL."""
    median = median_within(x0, cond)
    return median, radius_grid(median, n)
