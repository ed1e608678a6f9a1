"""Pareto fronts of two metrics that are both better higher (quality x, diversity y), and the area they dominate.

The dominated hypervolume of a point set P above a reference point (rx, ry) is the area of the union of the
rectangles [rx, x] x [ry, y] over p = (x, y) in P: one number per method and front, larger is better, and it only
grows when a method adds a point no other of its points dominates. A 2-D sweep is a few lines, so it is written
here rather than pulled in with an optimisation library; `hypervolume_reference` is the slow, obvious version
(union of grid cells) that the sweep is tested against.
"""

from __future__ import annotations

import numpy as np


def pareto_mask(x, y) -> np.ndarray:
    """True for the points no other point dominates (>= in both metrics and > in one); NaN points are never on it."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = np.isfinite(x) & np.isfinite(y)
    keep = ok.copy()
    for i in np.flatnonzero(ok):
        dom = ok & (x >= x[i]) & (y >= y[i]) & ((x > x[i]) | (y > y[i]))
        keep[i] = not dom.any()
    return keep


def hypervolume_2d(x, y, ref: tuple[float, float]) -> float:
    """Area dominated by the points (x_i, y_i) above `ref` (points not above it in both metrics add nothing)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = np.isfinite(x) & np.isfinite(y) & (x > ref[0]) & (y > ref[1])
    order = np.argsort(-x[ok], kind="stable")  # sweep from the best quality down
    area, top = 0.0, ref[1]
    for xi, yi in zip(x[ok][order], y[ok][order]):
        if yi > top:  # a point adds the strip between the best diversity so far and its own
            area += (xi - ref[0]) * (yi - top)
            top = yi
    return float(area)


def hypervolume_reference(x, y, ref: tuple[float, float]) -> float:
    """The same area by brute force: the grid of every point's coordinates, each cell counted once if dominated."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = np.isfinite(x) & np.isfinite(y) & (x > ref[0]) & (y > ref[1])
    x, y = x[ok], y[ok]
    xs, ys = np.unique(np.r_[ref[0], x]), np.unique(np.r_[ref[1], y])
    area = 0.0
    for x0, x1 in zip(xs[:-1], xs[1:]):
        for y0, y1 in zip(ys[:-1], ys[1:]):
            if np.any((x >= x1) & (y >= y1)):  # the cell's upper corner is dominated: the whole cell is
                area += (x1 - x0) * (y1 - y0)
    return float(area)
