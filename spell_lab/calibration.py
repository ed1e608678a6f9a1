"""Radius calibration and selection (paper Appendix D; docs/design.md section 2): pure functions, and the calibration
run (`calibration_batch`, `run_calibration`) that generates the batch they measure.

- *Calibration*: the median over every within-condition pair (i < j, same condition) of the L2 distance between
  flattened final outputs generated without SPELL, all conditions pooled (the paper's reading); the grid is
  `GRID_SIZE` radii linspace(0, 2 x median).
- *Selection*: the paper tunes the CFG weight by the F-score of precision and coverage, F = 2PC / (P + C), without
  SPELL, then picks the grid radius with the highest F at that weight. A table here is any DataFrame with
  `precision` and `coverage` columns (means over conditions) and one row per candidate; ties go to the first row.
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import torch

GRID_SIZE = 16  # Appendix D: "We then test 16 values from 0 to 2 times the median distance."
CALIBRATION_SEED_OFFSET = 1_000_000  # calibration sample i uses seed + offset + i: never a seed of a sweep
SIZE_CONDITIONS = {"quick": 2, "default": 5, "full": None}  # conditions calibrated by size (None: every one)
SIZE_PER_CONDITION = {"quick": 8, "default": 16, "full": 32}  # calibration samples per condition by size


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


def f_score(precision, coverage):
    """F = 2PC / (P + C), the harmonic mean of precision and coverage (0 where both are 0); scalars or arrays."""
    p, c = np.asarray(precision, dtype=float), np.asarray(coverage, dtype=float)
    if ((p < 0) | (p > 1) | (c < 0)).any():
        raise ValueError(f"precision must lie in [0, 1] and coverage be >= 0 (got {p}, {c}).")
    total = p + c
    f = np.divide(2 * p * c, total, out=np.zeros_like(total), where=total > 0)
    return float(f) if f.ndim == 0 else f


def with_f(table: pd.DataFrame) -> pd.DataFrame:
    """The table with an `f` column: F(precision, coverage) of every row."""
    missing = {"precision", "coverage"} - set(table.columns)
    if missing:
        raise ValueError(f"the table needs columns precision and coverage (missing: {', '.join(sorted(missing))}).")
    return table.assign(f=f_score(table["precision"].to_numpy(), table["coverage"].to_numpy()))


def _leave_one_out_f(precision, coverage) -> np.ndarray:
    """F(mean precision, mean coverage) of every candidate with each condition left out in turn: (candidates, n)."""
    p, c = np.atleast_2d(np.asarray(precision, dtype=float)), np.atleast_2d(np.asarray(coverage, dtype=float))
    if p.shape != c.shape:
        raise ValueError(f"precision and coverage need the same (candidates, conditions) shape (got {p.shape}, {c.shape}).")
    keep = ~np.eye(p.shape[1], dtype=bool)  # row k: every condition but k
    return np.stack([f_score(p[:, m].mean(1), c[:, m].mean(1)) for m in keep], axis=1)


def _jackknife_se(leave_out: np.ndarray) -> np.ndarray:
    n = leave_out.shape[1]
    return np.sqrt((n - 1) / n * ((leave_out - leave_out.mean(1, keepdims=True)) ** 2).sum(1))


def f_standard_error(precision, coverage) -> np.ndarray:
    """The jackknife standard error of F(mean precision, mean coverage) over conditions, one per candidate:
    `precision` and `coverage` are (candidates, conditions) per-condition values. Conditions are the independent
    units (every candidate uses the same seeds and real images), so F is recomputed leaving one condition out at a
    time: SE = sqrt((n - 1) / n * sum_k (F_(k) - mean F_(.))^2). NaN with fewer than 2 conditions."""
    p = np.atleast_2d(np.asarray(precision, dtype=float))
    if p.shape[1] < 2:
        return np.full(p.shape[0], np.nan)
    return _jackknife_se(_leave_one_out_f(precision, coverage))


def f_gap_standard_error(precision, coverage) -> np.ndarray:
    """The paired jackknife standard error of each candidate's gap to the F-best one, F(row) - F(best): the
    candidates share seeds and real images, so the gap is recomputed leaving one condition out from both (what
    two candidates' separate SEs overstate). 0 for the best itself; NaN with fewer than 2 conditions."""
    p, c = np.atleast_2d(np.asarray(precision, dtype=float)), np.atleast_2d(np.asarray(coverage, dtype=float))
    if p.shape[1] < 2:
        return np.full(p.shape[0], np.nan)
    leave_out = _leave_one_out_f(p, c)  # checks the shapes first
    best = int(np.nanargmax(f_score(p.mean(1), c.mean(1))))
    return _jackknife_se(leave_out - leave_out[best])


def within_one_se(table: pd.DataFrame, key: str) -> list[float]:
    """The candidates whose F lies within one standard error of the best F: where the selection's argmax cannot be
    told apart from its neighbours at this sample size. With an `f_gap_se` column, each row's paired SE of its gap
    to the best; otherwise the best row's `f_se`."""
    t = with_f(table)
    best = int(np.nanargmax(t["f"].to_numpy()))
    margin = t["f_gap_se"] if "f_gap_se" in t else t["f_se"].iloc[best]
    return [float(v) for v in t.loc[t["f"] >= t["f"].iloc[best] - margin, key]]


def best_row(table: pd.DataFrame, key: str) -> tuple[float, float]:
    """(table[key], F) of the row with the highest F(precision, coverage); ties go to the first row."""
    if key not in table.columns or not len(table):
        raise ValueError(f"selection needs a non-empty table with a {key!r} column.")
    f = with_f(table)["f"].to_numpy()
    if not np.isfinite(f).any():
        raise ValueError("no row has a finite F(precision, coverage); the metrics are missing.")
    i = int(np.nanargmax(f))
    return float(table[key].iloc[i]), float(f[i])


def best_guidance(table: pd.DataFrame) -> tuple[float, float]:
    """The CFG tuning (Appendix D): (guidance weight, F) of the F-best row of a table with a `guidance` column."""
    return best_row(table, "guidance")


def best_radius(table: pd.DataFrame) -> tuple[float, float]:
    """The radius selection (Appendix D): (radius, F) of the F-best row of a table with a `radius` column."""
    return best_row(table, "radius")


def grid_steps(grid, radius: float, target: float) -> float:
    """How many grid steps `radius` lies from `target` (the grid's spacing: linspace, so one step)."""
    grid = np.asarray(grid, dtype=float)
    if len(grid) < 2:
        raise ValueError(f"a grid needs >= 2 radii (got {len(grid)}).")
    return abs(float(radius) - float(target)) / float(grid[1] - grid[0])


def rescale_for(selected: float, target: float) -> float:
    """The factor on a space's global scale that moves a selected radius to `target`: distances, the calibrated
    median and (to first order) the selection scale with the space, so the factor is target / selected."""
    if not (selected > 0 and target > 0):
        raise ValueError(f"rescaling needs a selected radius > 0 and a target > 0 (got {selected}, {target}).")
    return float(target) / float(selected)


def calibration_batch(model, conditions, per_condition: int, *, seed: int, sampler, steps, guidance):
    """Final outputs without SPELL, one batch holding `per_condition` samples of every condition: (x0, cond)."""
    from .samplers import generate

    if per_condition < 2:
        raise ValueError(f"calibration needs >= 2 samples per condition to have a pair (got {per_condition}).")
    cond = torch.tensor([int(c) for c in conditions], dtype=torch.long).repeat_interleave(per_condition)
    seeds = list(range(seed + CALIBRATION_SEED_OFFSET, seed + CALIBRATION_SEED_OFFSET + len(cond)))
    out = generate(model, cond, seeds, sampler=sampler, steps=steps, guidance=guidance, spell=None, record=False)
    return out.x0.cpu(), cond


def run_calibration(model, conditions, per_condition: int, *, seed: int, sampler: str, steps: int, guidance: float,
                    grid_size: int = GRID_SIZE) -> dict:
    """Generate the calibration batch and return a JSON-ready dict: median, grid, and how they were made."""
    start = time.perf_counter()
    x0, cond = calibration_batch(model, conditions, per_condition, seed=seed, sampler=sampler, steps=steps,
                                 guidance=guidance)
    seconds = time.perf_counter() - start
    median, grid = calibrate(x0, cond, grid_size)
    return dict(median=median, grid=[float(r) for r in grid], per_condition=per_condition,
                conditions=[int(c) for c in conditions], first_seed=seed + CALIBRATION_SEED_OFFSET,
                sampler=sampler, steps=steps, guidance=guidance, seconds=round(seconds, 2))


def format_grid(grid) -> str:
    return "  ".join(f"{r:.4g}" for r in grid)
