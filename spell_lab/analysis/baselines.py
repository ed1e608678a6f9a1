"""SPELL against the training-free baselines (paper Section 4.3, Figure 4; Appendix I), the statistics: per-group
metrics, the three Pareto fronts and each method's dominated hypervolume; the figures (the fronts, the CFG sweep
with and without SPELL) and the W&B run are `spell_lab.analysis.baselines_figures`.

    python -m spell_lab.analysis.baselines RUN_DIR [--wandb offline|disabled|online]

Definitions:
- A run has one store group per (sweep, grid value), `<sweep>-<i>`; the sweep's label, varied parameter and grid
  are in the groups' `config` attribute, the value in each group's `method` attribute.
- Metrics per condition against held-out real data (`spell_lab.analysis.quality`), averaged over conditions with
  equal weight: precision, recall, density, coverage, Vendi (on the metric features) and fidelity (the model's
  classifier's probability of the requested condition, the paper's CLIP-score stand-in).
- Fronts (Figure 4), quality on x, diversity on y, both higher is better: recall vs precision, coverage vs density,
  Vendi vs fidelity. A method's *joint* count is how many of its points no group of any method dominates. Its
  *hypervolume* on a front is the area its points dominate above the reference point
  (each metric's worst value over every group of the run, less 10% of its range: the usual nadir margin, so an
  extreme point still counts), so the methods of one run share one box.
- *Neutral* groups are the plain sampler (each sweep's neutral point); their outputs are compared bit for bit.
- Order: the groups in the run's order (`group_order`), SPELL's own sweep (the one varying its radius: the method
  studied) first; the other methods follow as the run made them.
"""

from __future__ import annotations

import json
import re
import sys

import numpy as np
import pandas as pd
import xarray as xr

from . import driver
from .load import every_round, method_of, model_name, order_of
from .pareto import hypervolume_2d, pareto_mask
from ..models import condition_fidelity, matched_reference
from .quality import condition_metrics, generated

GROUP = re.compile(r"^(?P<sweep>[a-z_]+)-(?P<i>\d+)$")
FRONTS = {  # name -> (quality on x, diversity on y)
    "precision_recall": ("precision", "recall"),
    "density_coverage": ("density", "coverage"),
    "fidelity_vendi": ("fidelity", "vendi"),
}
METRICS = ("precision", "recall", "density", "coverage", "vendi", "fidelity", "fd")
NADIR_MARGIN = 0.1  # the hypervolume's reference point: each metric's worst value in the run, less 10% of its range


# ----------------------------------------------------------------------------------------------- run groups

def baseline_groups(datasets: dict) -> list[str]:
    """The sweep groups of a run in the run's order, SPELL's own sweep first (`lead_sweep`)."""
    names = [n for n in order_of(datasets) if GROUP.match(n)]
    lead = lead_sweep(sweeps_of(datasets[names[0]])) if names else None
    return [n for n in names if sweep_of(n) == lead] + [n for n in names if sweep_of(n) != lead]


def sweep_of(name: str) -> str:
    return GROUP.match(name)["sweep"]


def lead_sweep(sweeps: dict) -> str | None:
    """The sweep of the method studied: the one that varies SPELL's radius (None where the run has none)."""
    return next((s for s, spec in sweeps.items()
                 if (spec.get("method") or {}).get("name") == "spell" and spec.get("vary") == "radius"), None)


def sweeps_of(ds: xr.Dataset) -> dict:
    """The sweeps the run was made with (label, method, vary, values), from a group's config attribute."""
    cfg = ds.attrs.get("config")
    cfg = json.loads(cfg) if isinstance(cfg, str) else (cfg or {})
    return cfg.get("sweeps") or {}


def describe(name: str, ds: xr.Dataset, sweeps: dict) -> dict:
    """A group's sweep, label, varied parameter and its value ("off" for a dict-valued neutral point)."""
    sweep = GROUP.match(name)["sweep"]
    spec = sweeps.get(sweep, {})
    vary = spec.get("vary", "")
    method = method_of(ds)
    i = int(GROUP.match(name)["i"])
    values = spec.get("values") or []
    grid_value = values[i] if i < len(values) else None
    value = method.get(vary, np.nan)
    shown = "off" if isinstance(grid_value, dict) else f"{value:g}" if isinstance(value, (int, float)) else str(value)
    return {"sweep": sweep, "label": spec.get("label", sweep), "parameter": vary, "value": value, "shown": shown,
            "method": json.dumps(method, sort_keys=True), "neutral": i == 0 and spec.get("neutral", True)}


# ----------------------------------------------------------------------------------------------- tables

def front_table(datasets: dict, real_x, real_cond, features, fidelity=None, k: int = 5):
    """(fronts, per_condition): one row per group (its sweep, parameter, value, method and every metric averaged
    over conditions) and the long per-(group, condition) table behind it."""
    names = baseline_groups(datasets)
    if not names:
        raise ValueError("no baseline groups (<sweep>-<i>) in the run; make one with "
                         "`python -m spell_lab.experiments.baselines`.")
    sweeps = sweeps_of(datasets[names[0]])
    rf = features(real_x)
    rows, long = [], []
    for name in names:
        ds = datasets[name]
        x0, cond = generated(ds)
        per = condition_metrics(x0, cond, real_x, real_cond, features, k, real_features=rf, fidelity=fidelity)
        per.insert(0, "group", name)
        long.append(per)
        rows.append({"group": name, **describe(name, ds, sweeps), "n_samples": int(ds.sizes["sample"]),
                     **{m: float(per[m].mean()) for m in METRICS if m in per}})
    return pd.DataFrame(rows).set_index("group"), pd.concat(long, ignore_index=True)


def fronts_present(table: pd.DataFrame) -> dict:
    return {f: xy for f, xy in FRONTS.items() if all(m in table for m in xy)}


def nadir(values, margin: float = NADIR_MARGIN) -> float:
    """The reference value of one metric: the run's worst, less `margin` of its range, so a method's most extreme
    point still adds area (at the worst value itself it would add none)."""
    lo, hi = float(np.nanmin(values)), float(np.nanmax(values))
    return lo - margin * (hi - lo)


def hypervolumes(table: pd.DataFrame) -> pd.DataFrame:
    """One row per sweep: its dominated hypervolume on each front (reference point: `nadir` of each metric over the
    run), its points on the joint front of every method, and the hypervolume relative to CFG's where there is one;
    in the table's order."""
    out = {}
    for front, (qx, dy) in fronts_present(table).items():
        ref = (nadir(table[qx]), nadir(table[dy]))
        joint = pd.Series(pareto_mask(table[qx], table[dy]), index=table.index)  # no group of any method beats it
        for sweep, rows in table.groupby("sweep", sort=False):
            row = out.setdefault(sweep, {"label": rows["label"].iloc[0], "points": len(rows)})
            row[f"hv_{front}"] = hypervolume_2d(rows[qx], rows[dy], ref)
            row[f"joint_{front}"] = int(joint[rows.index].sum())
    hv = pd.DataFrame.from_dict(out, orient="index")
    hv.index.name = "sweep"
    if "cfg" in hv.index:
        for c in [c for c in hv.columns if c.startswith("hv_")]:
            base = hv.loc["cfg", c]
            hv[c.replace("hv_", "vs_cfg_")] = hv[c] / base if base > 0 else np.nan
    return hv


def with_hypervolumes(table: pd.DataFrame, hv: pd.DataFrame) -> pd.DataFrame:
    """fronts.csv: every group's row with its method's hypervolume on each front beside it."""
    cols = [c for c in hv.columns if c.startswith("hv_")]
    return table.join(hv[cols], on="sweep")


def neutral_check(datasets: dict, table: pd.DataFrame) -> str:
    """One line: do the neutral groups' outputs equal each other bit for bit (they are all the plain sampler)?
    datasets: every round (`load.every_round`)."""
    names = [n for n in table.index[table["neutral"]] if n in datasets]
    if len(names) < 2:
        return f"{len(names)} neutral group(s): nothing to compare"
    first = datasets[names[0]]["x0"].values
    same = [n for n in names[1:] if np.array_equal(datasets[n]["x0"].values, first)]
    differ = sorted(set(names[1:]) - set(same))
    return (f"the {len(names)} neutral groups ({', '.join(names)}) have bit-identical outputs" if not differ else
            f"neutral groups {differ} differ from {names[0]}: a neutral point is not the plain sampler")


def format_table(hv: pd.DataFrame) -> str:
    """The hypervolume table as aligned text."""
    shown = hv.drop(columns=[c for c in hv.columns if c.startswith(("vs_cfg_", "joint_"))]).copy()
    for c in [c for c in shown.columns if c.startswith("hv_")]:
        shown[c] = [f"{v:.3g}" for v in shown[c]]
        ratio = c.replace("hv_", "vs_cfg_")
        if ratio in hv:
            shown[c] = [f"{s} ({r:.2f}x CFG)" if np.isfinite(r) else s for s, r in zip(shown[c], hv[ratio])]
        joint = c.replace("hv_", "joint_")
        shown[c] = [f"{s}, {j}/{n} on joint front" for s, j, n in zip(shown[c], hv[joint], hv["points"])]
    return shown.rename(columns=lambda c: c.replace("hv_", "HV ").replace("_", "/")).to_string()


# ----------------------------------------------------------------------------------------------- the entry

def statistics(datasets: dict, run_dir=None, reference=None, k: int = 5) -> dict:
    """Metrics against held-out real data (reference: (x, cond, features) or None for the built-in model's), the
    fronts and each method's hypervolumes ("table"), and the neutral-point check."""
    model = model_name(datasets[baseline_groups(datasets)[0]].attrs)
    desc = "given by the caller"
    if reference is None:  # as many real items per condition as each group generates (every group: the same seeds)
        *reference, desc = matched_reference(model, datasets[baseline_groups(datasets)[0]]["condition"].values)
    real_x, real_cond, features = reference
    points, per = front_table(datasets, real_x, real_cond, features, fidelity=condition_fidelity(model), k=k)
    hv = hypervolumes(points)
    return {"table": hv, "points": points, "fronts": with_hypervolumes(points, hv), "per_condition": per,
            "reference": desc, "neutral": neutral_check(every_round(datasets), points)}


FIGURES = "spell_lab.analysis.baselines_figures"
ANALYSIS = driver.register(driver.Analysis(
    experiment="baselines", select=baseline_groups, keep=("x0",), statistics=statistics,
    figures=driver.lazy(FIGURES, "figures"), wandb_runs=driver.lazy(FIGURES, "wandb_runs"),
    files=lambda r: {"fronts.csv": r["fronts"].to_csv(), "hypervolume.csv": r["table"].to_csv(),
                     "per_condition.csv": r["per_condition"].to_csv(index=False)},
    format_table=format_table,
    none_found="has no baseline groups (<sweep>-<i>); make one with `python -m spell_lab.experiments.baselines`",
    summary_lines=lambda res: [f"\nneutral points: {res['neutral']}", f"real data: {res['reference']}"]))
load_run, latest_run, analyse_run, main = driver.bind(ANALYSIS)


if __name__ == "__main__":
    sys.exit(main())
