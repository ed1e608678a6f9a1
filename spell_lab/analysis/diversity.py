"""The diversity benchmark (paper Section 4.2, Table 1): each model without and with SPELL on the same seeds.

The statistics: pure functions over the run stores and held-out real data, and the driver's entry (`analyse_run`,
`main`); the figures and W&B runs are `spell_lab.analysis.diversity_figures`.

    python -m spell_lab.analysis.diversity RUN_DIR [--wandb offline|disabled|online]

Layout (docs/design.md section 5; a store holds one model): RUN_DIR/<model>/store.zarr, one store per model, each with
the groups `without-s<k>` and `spell-s<k>` of seed set k (the same seeds in both; seed sets are disjoint). The
combined table, its CSV and Markdown, the per-seed-set and per-condition tables and the figures go to
RUN_DIR/figures; a run directory that is itself one model's store is read as a one-model run.

Definitions:
- Per seed set and group, the per-condition metrics of `spell_lab.analysis.quality` (precision, recall, density,
  coverage with k = 5, Vendi on the metric features and on raw x0, the condition-fidelity score where the model
  has a classifier) are averaged over conditions with equal weight; `fd` is the *marginal* Fréchet distance
  (all conditions pooled, fakes against every held-out real sample: the paper's FID / FD_DINOv2 columns, its
  "overall score"); `f` = F(precision, coverage), the Appendix D selection criterion.
- The table: per model and arm, the mean ± std (ddof 1) over seed sets; `change` is the relative change of the
  means, (SPELL − without) / without, and `change_std` the std over seed sets of the paired relative change.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from . import driver
from .load import model_name
from .markdown import markdown
from ..models import condition_fidelity, matched_reference
from .quality import condition_metrics, generated

GROUP = re.compile(r"^(without|spell)-s(\d+)$")
ARMS = {"without": "without SPELL", "spell": "+ SPELL"}
# Table 1's columns in the paper's order, then ours: fidelity (the CLIP-score stand-in), F(P, C), Vendi on raw x0
METRICS = ("recall", "vendi", "coverage", "precision", "density", "fd", "fidelity", "f", "vendi_raw")
LABELS = {"recall": "Recall ↑", "vendi": "Vendi ↑", "coverage": "Coverage ↑", "precision": "Precision ↑",
          "density": "Density ↑", "fd": "FD (marginal) ↓", "fidelity": "Fidelity ↑", "f": "F(P, C) ↑",
          "vendi_raw": "Vendi (raw x0) ↑"}


def group_name(arm: str, seed_set: int) -> str:
    return f"{arm}-s{seed_set}"


def parse_group(name: str) -> tuple[str, int] | None:
    """("without" | "spell", seed set) of a group name, None for any other group."""
    m = GROUP.match(name.split("/")[-1])
    return (m.group(1), int(m.group(2))) if m else None


# ----------------------------------------------------------------------------------------------- loading

def model_dirs(run_dir) -> list[Path]:
    """The model stores of a run: RUN_DIR itself when it holds a store, else its subdirectories that do."""
    run_dir = Path(run_dir)
    if run_dir.name == "store.zarr":
        run_dir = run_dir.parent
    if (run_dir / "store.zarr").exists():
        return [run_dir]
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory {run_dir} does not exist; pass a directory made by "
                                f"`python -m spell_lab.experiments.diversity` (runs/diversity/<run-name>).")
    found = sorted(p for p in run_dir.iterdir() if (p / "store.zarr").exists())
    if not found:
        raise FileNotFoundError(f"{run_dir} holds no model store (<model>/store.zarr); is it a diversity run "
                                f"directory? (found: {sorted(p.name for p in run_dir.iterdir())[:10]})")
    return found


def model_of(ds: xr.Dataset) -> str:
    return model_name(dict(ds.attrs))


def by_model(datasets: dict) -> dict[str, dict[str, xr.Dataset]]:
    """{model dir: {group: Dataset}} from load_run's flat keys."""
    out: dict[str, dict] = {}
    for key, ds in datasets.items():
        model, _, group = key.rpartition("/")
        out.setdefault(model or model_of(ds), {})[group] = ds
    return out


# ----------------------------------------------------------------------------------------------- metrics

def group_metrics(ds: xr.Dataset, real_x, real_cond, features, real_features, fidelity=None, k: int = 5):
    """(per-condition rows, the group's row: means over conditions, marginal FD and F) of one group."""
    from ..calibration import f_score
    from ..metrics import frechet_distance

    x0, cond = generated(ds)
    per = condition_metrics(x0, cond, real_x, real_cond, features, k, real_features=real_features, fidelity=fidelity)
    means = {m: float(per[m].mean()) for m in METRICS if m in per and m != "fd"}
    means["fd"] = float(frechet_distance(real_features, features(x0)))  # marginal: all conditions pooled
    means["f"] = float(f_score(means["precision"], means["coverage"]))
    means.update(n_samples=int(len(cond)), n_conditions=int(per["condition"].nunique()),
                 changed=float(ds["intervened"].values.astype(bool).mean()))
    return per.rename(columns={"fd": "fd_condition"}), means


def metric_tables(datasets: dict, reference=None, k: int = 5) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per_seed_set, per_condition): one row per (model, arm, seed set) and per (model, arm, seed set, condition).
    reference: {model dir: (x, cond, features, fidelity)}; missing models get their built-in held-out data."""
    rows, long = [], []
    reference = dict(reference or {})
    for model, groups in by_model(datasets).items():
        groups = {n: ds for n, ds in groups.items() if parse_group(n)}
        if not groups:
            continue
        if model not in reference:
            first = next(iter(groups.values()))  # one seed set's count per condition (every arm and set: the same)
            name = model_of(first)
            x, c, feats, _ = matched_reference(name, first["condition"].values)
            reference[model] = (x, c, feats, condition_fidelity(name))
        real_x, real_cond, features, fidelity = reference[model]
        rf = features(real_x)
        for name, ds in sorted(groups.items(), key=lambda kv: (parse_group(kv[0])[1], kv[0] != "without")):
            arm, seed_set = parse_group(name)
            per, means = group_metrics(ds, real_x, real_cond, features, rf, fidelity, k)
            key = dict(model=model, arm=arm, seed_set=seed_set, radius=float(ds.attrs.get("radius", 0.0)),
                       first_seed=int(ds["seed"].values.min()))
            rows.append(key | means)
            long.append(per.assign(**key))
    if not rows:
        raise ValueError("no diversity groups (without-s0, spell-s0, ...) to measure; make them with "
                         "`python -m spell_lab.experiments.diversity`.")
    per_seed = pd.DataFrame(rows)
    per_condition = pd.concat(long, ignore_index=True)
    first = ["model", "arm", "seed_set", "radius", "first_seed", "condition"]
    return per_seed, per_condition[first + [c for c in per_condition if c not in first]]


def measured_metrics(per_seed: pd.DataFrame, metrics=METRICS) -> list[str]:
    """The metrics a table has values for (fidelity only where the model has a classifier)."""
    return [m for m in metrics if m in per_seed and per_seed[m].notna().any()]


def benchmark_table(per_seed: pd.DataFrame) -> pd.DataFrame:
    """Table 1: one row per (model, setup) with setup in {without, spell, change}; columns `<metric>` (the mean over
    seed sets; for `change` the relative change of the means) and `<metric>_std` (std over seed sets; for `change`
    the std of the paired relative change), plus n_seed_sets. Only seed sets with both arms count."""
    rows = []
    for model, g in per_seed.groupby("model", sort=False):
        metrics = measured_metrics(g)
        wide = g.pivot(index="seed_set", columns="arm", values=metrics).dropna()
        if wide.empty or not {"spell", "without"} <= set(wide.columns.get_level_values(1)):
            continue
        n = len(wide)
        for arm in ("without", "spell"):
            row = {"model": model, "setup": arm, "n_seed_sets": n}
            for m in metrics:
                v = wide[(m, arm)].to_numpy(float)
                row[m], row[f"{m}_std"] = float(v.mean()), float(v.std(ddof=1)) if n > 1 else np.nan
            row["radius"] = float(g.loc[g["arm"] == arm, "radius"].iloc[0])
            rows.append(row)
        change = {"model": model, "setup": "change", "n_seed_sets": n}
        for m in metrics:
            a, b = wide[(m, "without")].to_numpy(float), wide[(m, "spell")].to_numpy(float)
            change[m] = float((b.mean() - a.mean()) / a.mean()) if a.mean() else np.nan
            paired = (b - a) / a
            change[f"{m}_std"] = float(paired.std(ddof=1)) if n > 1 else np.nan
        rows.append(change)
    if not rows:
        raise ValueError("no model has both arms (without-s<k> and spell-s<k>) of one seed set; the table needs both.")
    return pd.DataFrame(rows).set_index(["model", "setup"])


def _cell(v, s, change: bool) -> str:
    if not np.isfinite(v):
        return "—"
    if change:
        return f"{100 * v:+.1f}%" + (f" ± {100 * s:.1f}" if np.isfinite(s) else "")
    digits = 2 if abs(v) >= 10 else 3
    return f"{v:.{digits}f}" + (f" ± {s:.{digits}f}" if np.isfinite(s) else "")


def table_cells(table: pd.DataFrame, metrics=METRICS) -> pd.DataFrame:
    """The table as text cells in the paper's layout: 'mean ± std' per metric, the change row as '+x.x% ± y.y'."""
    metrics = [m for m in metrics if m in table and table[m].notna().any()]
    out = []
    for (model, setup), row in table.iterrows():
        label = {"without": model, "spell": f"+ SPELL (r = {row.get('radius', np.nan):.4g})",
                 "change": "relative change"}[setup]
        out.append({"Model": label, **{LABELS[m]: _cell(row[m], row[f"{m}_std"], setup == "change") for m in metrics}})
    return pd.DataFrame(out)


def format_table(table: pd.DataFrame) -> str:
    """Aligned text of Table 1 (what the command prints)."""
    return table_cells(table).to_string(index=False)


def to_markdown(table: pd.DataFrame) -> str:
    return markdown(table_cells(table))


# ----------------------------------------------------------------------------------------------- the entry

def statistics(datasets: dict, run_dir=None, reference=None, k: int = 5) -> dict:
    """Per-condition metrics against held-out real data and Table 1 (mean ± std over seed sets, relative change)."""
    per_seed, per_condition = metric_tables(datasets, reference, k)
    return {"table": benchmark_table(per_seed), "per_seed_set": per_seed, "per_condition": per_condition}


FIGURES = "spell_lab.analysis.diversity_figures"
TABLE_FILES = ("diversity_table.csv", "diversity_table.md", "diversity_per_seed_set.csv", "diversity_per_condition.csv")
ANALYSIS = driver.register(driver.Analysis(
    experiment="diversity", select=lambda ds: sorted(n for n in ds if parse_group(n)), keep=("x0",),
    stores=model_dirs, statistics=statistics, figures=driver.lazy(FIGURES, "figures"),
    wandb_runs=driver.lazy(FIGURES, "wandb_runs"),
    files=lambda r: dict(zip(TABLE_FILES, (r["table"].to_csv(), to_markdown(r["table"]),
                                           r["per_seed_set"].to_csv(index=False), r["per_condition"].to_csv(index=False)))),
    format_table=format_table,
    none_found="has no diversity groups (without-s0, spell-s0, ...); make one with "
               "`python -m spell_lab.experiments.diversity`",
    summary_lines=lambda res: [f"tables: {', '.join(str(p) for p in res['files'].values())}"]))
load_run, latest_run, analyse_run, main = driver.bind(ANALYSIS)


if __name__ == "__main__":
    sys.exit(main())
