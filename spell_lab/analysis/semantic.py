"""Latent vs semantic vs scheduled SPELL (issue #25), the statistics; the fronts figure is
`spell_lab.analysis.semantic_figures`.

    python -m spell_lab.analysis.semantic RUN_DIR [--wandb offline|disabled|online]

Definitions:
- Every group's metrics, fronts and hypervolumes are the baselines analysis' (`analysis.baselines`): the run's groups
  are `<sweep>-<i>`, the variants `latent`, `semantic`, `scheduled` and the baselines beside them. Held-out items:
  as many per condition as were generated (`calibrate --select`'s matched count), so coverage and F mean what they
  mean in Appendix D's selection.
- *Selected radius* of a variant: Appendix D's, the grid point with the highest F = 2PC / (P + C) among the variant's
  own radii and radius 0 (the reference group, the plain sampler on the same seeds).
- *Near-duplicate share*: the share of within-condition output pairs closer, in the metrics' feature space, than half
  the reference group's median within-condition feature distance (one threshold for every group of the run).
- *Active at t*: share of trajectories with an active shield at the step nearest the paper's noise levels
  (sigma/alpha 5.11 and 2.28, its t = 0.8 and 0.6: `analysis.activity.active_at_noise`).
- *Relative magnitude*: median of alpha ||delta|| / sigma^2 ||score|| over active evaluations; *last active t*: the
  median t of each intervened trajectory's last active step (when the repellency is over).
- *Residual* (semantic only): mean of `shield_residual` over active evaluations, and the share of them still inside a
  feature shield after the correction.
- *Cost per evaluation*: sampling wall-clock (`sample_seconds`) per sample and denoiser evaluation, and its ratio to
  the reference group's: wall-clock on a shared machine, so a rough ratio.
"""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd
import torch

from . import baselines, driver
from .activity import active_at_noise
from .load import model_name, reference_of, subset
from .markdown import markdown
from .quality import generated
from ..calibration import with_f
from ..models import matched_reference
from ..schedules import paper_noise_levels

VARIANTS = ("latent", "semantic", "scheduled")
QUALITY = ("precision", "recall", "density", "coverage", "vendi", "fd", "fidelity", "f")


def semantic_groups(datasets: dict) -> list[str]:
    return baselines.baseline_groups(datasets)


def with_samples(datasets: dict) -> dict:
    """The groups with at least one complete unit (an interrupted run: the others are left out, and said so)."""
    return subset(datasets, [n for n in datasets if datasets[n].sizes["sample"] > 0])


def near_duplicate_share(f: torch.Tensor, cond: np.ndarray, threshold: float) -> float:
    """Share of within-condition pairs of features f (N, D) closer than `threshold`."""
    close = total = 0
    for c in np.unique(cond):
        d = torch.pdist(f[torch.as_tensor(cond == c)].double())
        close, total = close + int((d < threshold).sum()), total + d.numel()
    return close / total if total else float("nan")


def within_median(f: torch.Tensor, cond: np.ndarray) -> float:
    return float(torch.cat([torch.pdist(f[torch.as_tensor(cond == c)].double()) for c in np.unique(cond)]).median())


def sparsity(ds) -> dict:
    """Active share at the paper's noise levels and the median relative magnitude of active evaluations."""
    active = ds["active_shields"].values > 0
    rel = ds["relative_magnitude"].values[active]
    out = {f"active_at_t{t:g}": active_at_noise(ds, level) for t, level in paper_noise_levels().items()}
    out["relative_magnitude"] = float(np.median(rel)) if rel.size else float("nan")
    last = ds["last_active_step"].values
    out["median_last_active_t"] = float(np.median(ds["t"].values[last[last >= 0]])) if (last >= 0).any() else np.nan
    if "shield_residual" in ds:
        res = ds["shield_residual"].values[active]
        out["residual_mean"] = float(res.mean()) if res.size else float("nan")
        out["residual_inside_share"] = float((res > 0).mean()) if res.size else float("nan")
    return out


def group_extras(datasets: dict, names, features, reference: str) -> pd.DataFrame:
    """Per group: near-duplicate share, sparsity, residual and the time per evaluation (and vs the reference)."""
    feats = {}
    for n in names:
        x0, cond = generated(datasets[n])
        feats[n] = (torch.as_tensor(features(x0)).float(), cond)
    threshold = 0.5 * within_median(*feats[reference])
    rows = {}
    for n in names:
        ds = datasets[n]
        per_eval = float(np.nanmean(ds["sample_seconds"].values)) / ds.sizes["step"]
        rows[n] = {"near_duplicates": near_duplicate_share(*feats[n], threshold), **sparsity(ds),
                   "ms_per_evaluation": 1e3 * per_eval}
    out = pd.DataFrame.from_dict(rows, orient="index")
    out["cost_vs_plain"] = out["ms_per_evaluation"] / out.loc[reference, "ms_per_evaluation"]
    out.attrs["threshold"] = threshold
    return out


def selection(points: pd.DataFrame, reference: str) -> pd.DataFrame:
    """One row per variant: its F-best point among its radii and radius 0 (Appendix D's selection)."""
    rows = []
    for v in VARIANTS:
        own = points[(points["sweep"] == v) | (points.index == reference)]
        if own.empty:
            continue
        best = own["f"].idxmax()
        rows.append({"variant": v, "group": best, "radius": float(own.loc[best, "value"]),
                     **{c: own.loc[best, c] for c in points.columns if c not in ("sweep", "label", "parameter",
                                                                                  "value", "shown", "method",
                                                                                  "neutral", "n_samples")}})
    return pd.DataFrame(rows).set_index("variant")


def statistics(datasets: dict, run_dir=None, reference=None, k: int = 5) -> dict:
    """The baselines' statistics (metrics, fronts, hypervolumes), each group's extras and each variant's selection."""
    empty = [n for n in datasets if datasets[n].sizes["sample"] == 0]
    datasets = with_samples(datasets)
    names = semantic_groups(datasets)
    ref = reference_of(datasets) or names[0]
    desc = "given by the caller"
    if reference is None:  # as many held-out items per condition as were generated: Appendix D's selection compares so
        *reference, desc = matched_reference(model_name(datasets[names[0]].attrs), datasets[ref]["condition"].values)
    base = baselines.statistics(datasets, run_dir, (*reference,), k)
    extras = group_extras(datasets, names, reference[2], ref)
    points = with_f(base["points"]).join(extras)
    table = selection(points, ref)
    return {**base, "hypervolume": base["table"], "table": table, "points": points, "reference": desc,
            "threshold": extras.attrs["threshold"], "reference_group": ref,
            "left_out": f"{len(empty)} group(s) without a complete unit left out: {', '.join(empty)}" if empty else ""}


def format_table(table: pd.DataFrame) -> str:
    cols = [c for c in ("group", "radius", *QUALITY, "near_duplicates", "active_at_t0.8", "active_at_t0.6",
                        "relative_magnitude", "median_last_active_t", "residual_mean", "cost_vs_plain") if c in table]
    return table[cols].to_string(float_format=lambda v: f"{v:.3g}")


def _num(v, digits: int = 3, pct: bool = False) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "–"
    return f"{100 * v:.{digits}f} %" if pct else f"{v:.{digits}f}"


def _cells(table: pd.DataFrame, first: str, first_values) -> pd.DataFrame:
    """The page's columns of a points or selection table, as text."""
    t = table
    active = [f"{_num(a, 0, True)} / {_num(b, 0, True)}" if r else "–"
              for a, b, r in zip(t["active_at_t0.8"], t["active_at_t0.6"], first_values["active"])]
    residual = ["–" if not np.isfinite(m) else f"{m:.2f} ({_num(s, 0, True)})"
                for m, s in zip(t["residual_mean"].astype(float), t["residual_inside_share"].astype(float))]
    return pd.DataFrame({
        first: first_values["label"], "precision": t["precision"].map(_num), "recall": t["recall"].map(_num),
        "density": t["density"].map(lambda v: _num(v, 2)), "coverage": t["coverage"].map(_num),
        "Vendi": t["vendi"].map(lambda v: _num(v, 2)), "FD": t["fd"].map(lambda v: _num(v, 1)),
        "F": t["f"].map(_num), "near-dup. pairs": t["near_duplicates"].map(lambda v: _num(v, 1, True)),
        "active t=0.8 / 0.6": active, "rel. magnitude": t["relative_magnitude"].map(_num),
        "last active t": t["median_last_active_t"].map(lambda v: _num(v, 2)), "residual (inside share)": residual,
        "ms / eval. (x plain)": [f"{ms:.1f} ({x:.1f}x)" for ms, x in zip(t["ms_per_evaluation"], t["cost_vs_plain"])],
    })


def tables_markdown(result: dict) -> str:
    """The ledger page's two tables: each variant at its selection, and every point of the run."""
    sel, pts = result["table"], result["points"]
    sel_labels = [("0 (plain)" if r == 0 else f"{r:.4g}" + (" (features)" if v == "semantic" else ""))
                  for v, r in zip(sel.index, sel["radius"])]
    pts_labels = [f"{g} ({p} {v:.4g})" for g, p, v in zip(pts.index, pts["parameter"], pts["value"])]
    return ("Each variant at its selection (the F-best of its radii and 0):\n\n"
            + markdown(_cells(sel, "variant (selected r)", {"label": [f"{v}: {lab}" for v, lab in zip(sel.index, sel_labels)],
                                                             "active": sel["radius"] > 0}))
            + "\nEvery point:\n\n"
            + markdown(_cells(pts, "group", {"label": pts_labels,
                                             "active": pts["sweep"].isin(VARIANTS) & (pts["value"] > 0)})))


FIGURES = "spell_lab.analysis.semantic_figures"
ANALYSIS = driver.register(driver.Analysis(
    experiment="semantic", select=semantic_groups, keep=("x0", "image"), statistics=statistics,
    figures=driver.lazy(FIGURES, "figures"), wandb_runs=lambda datasets, result, images: [],
    files=lambda r: {"selected.csv": r["table"].to_csv(), "points.csv": r["points"].to_csv(),
                     "hypervolume.csv": r["hypervolume"].to_csv(), "tables.md": tables_markdown(r),
                     "per_condition.csv": r["per_condition"].to_csv(index=False)},
    format_table=format_table,
    none_found="has no semantic groups (<sweep>-<i>); make one with `python -m spell_lab.experiments.semantic`",
    summary_lines=lambda res: [f"\nnear-duplicate threshold (features): {res['threshold']:.4g}",
                               f"neutral points: {res['neutral']}", f"real data: {res['reference']}",
                               res["left_out"]]))
load_run, latest_run, analyse_run, main = driver.bind(ANALYSIS)


if __name__ == "__main__":
    sys.exit(main())
