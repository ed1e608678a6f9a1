"""SPELL against the training-free baselines (paper Section 4.3, Figure 4; Appendix I): per-group metrics, the three
Pareto fronts, each method's dominated hypervolume, the CFG sweep with and without SPELL, W&B.

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
"""

from __future__ import annotations

import json
import re
import sys

import numpy as np
import pandas as pd
import xarray as xr

from . import driver, plots
from .load import measured, method_of, model_name
from .pareto import hypervolume_2d, pareto_mask
from ..models import condition_fidelity, reference_data
from .quality import condition_metrics, generated

GROUP = re.compile(r"^(?P<sweep>[a-z_]+)-(?P<i>\d+)$")
FRONTS = {  # name -> (quality on x, diversity on y)
    "precision_recall": ("precision", "recall"),
    "density_coverage": ("density", "coverage"),
    "fidelity_vendi": ("fidelity", "vendi"),
}
METRICS = ("precision", "recall", "density", "coverage", "vendi", "fidelity", "fd")
LABELS = {"precision": "precision ↑", "recall": "recall ↑", "density": "density ↑", "coverage": "coverage ↑",
          "vendi": "Vendi (features) ↑", "fidelity": "condition fidelity ↑", "fd": "Fréchet distance ↓"}
ORDER = ("spell", "cfg", "interval", "pg", "cads", "spell_cfg")  # fixes colours and table order
APPENDIX_I = ("cfg", "spell_cfg")
NADIR_MARGIN = 0.1  # the hypervolume's reference point: each metric's worst value in the run, less 10% of its range


# ----------------------------------------------------------------------------------------------- run groups

def baseline_groups(datasets: dict) -> list[str]:
    """The sweep groups of a run, sweep by sweep (the canonical order), then by grid position."""
    names = [n for n in datasets if GROUP.match(n)]
    rank = {s: i for i, s in enumerate(ORDER)}
    return sorted(names, key=lambda n: (rank.get(GROUP.match(n)["sweep"], len(ORDER)), GROUP.match(n)["sweep"],
                                        int(GROUP.match(n)["i"])))


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
    over conditions) and the long per-(group, condition) table behind it. Measured samples only."""
    names = baseline_groups(datasets)
    if not names:
        raise ValueError("no baseline groups (<sweep>-<i>) in the run; make one with "
                         "`python -m spell_lab.experiments.baselines`.")
    sweeps = sweeps_of(datasets[names[0]])
    rf = features(real_x)
    rows, long = [], []
    for name in names:
        ds = measured(datasets[name])
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
    run), its points on the joint front of every method, and the hypervolume relative to CFG's where there is one."""
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
    rank = {s: i for i, s in enumerate(ORDER)}
    return hv.loc[sorted(hv.index, key=lambda s: rank.get(s, len(ORDER)))]


def with_hypervolumes(table: pd.DataFrame, hv: pd.DataFrame) -> pd.DataFrame:
    """fronts.csv: every group's row with its method's hypervolume on each front beside it."""
    cols = [c for c in hv.columns if c.startswith("hv_")]
    return table.join(hv[cols], on="sweep")


def neutral_check(datasets: dict, table: pd.DataFrame) -> str:
    """One line: do the neutral groups' outputs equal each other bit for bit (they are all the plain sampler)?"""
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


# ----------------------------------------------------------------------------------------------- figures

def colours(sweeps) -> dict:
    """One colour per sweep; SPELL on top of CFG shares SPELL's colour (its line is drawn dashed beside CFG's)."""
    import seaborn as sns

    palette = sns.color_palette("colorblind", 10)
    fixed = {"spell": 0, "cfg": 1, "interval": 2, "pg": 3, "cads": 4, "spell_cfg": 0}
    extra = iter(range(5, 10))
    return {s: palette[fixed[s] if s in fixed else next(extra, 9)] for s in sweeps}


def _front_axes(ax, table: pd.DataFrame, qx: str, dy: str, sweeps, colour, label_points: bool = True):
    for j, sweep in enumerate(sweeps):
        rows = table[table["sweep"] == sweep].copy()
        rows = rows.sort_values("value", key=lambda v: pd.to_numeric(v, errors="coerce"))
        style = dict(marker=plots.MARKERS[j % len(plots.MARKERS)], ls=plots.LINE_STYLES[j % len(plots.LINE_STYLES)])
        ax.plot(rows[qx], rows[dy], color=colour[sweep], lw=1.6, ms=6, label=rows["label"].iloc[0], **style)
        if label_points:
            for _, r in rows[~rows["neutral"]].iterrows():  # the star stands for every neutral point
                ax.annotate(r["shown"], (r[qx], r[dy]), textcoords="offset points", xytext=(4, 3), fontsize=7,
                            color=colour[sweep])
    neutral = table[table["neutral"]]
    if len(neutral):
        ax.scatter(neutral[qx].iloc[:1], neutral[dy].iloc[:1], marker="*", s=260, c="k", zorder=5,
                   label="plain sampler (every neutral point)")
    ax.set_xlabel(LABELS[qx])
    ax.set_ylabel(LABELS[dy])


@plots.styled
def plot_fronts(table: pd.DataFrame, hv: pd.DataFrame | None = None, sweeps=None):
    """Figure 4: the three fronts, one line per method through its grid, points labelled by their parameter."""
    sweeps = list(dict.fromkeys(sweeps or table["sweep"]))
    fronts = fronts_present(table)
    fig = plots.Figure(figsize=(5.2 * len(fronts), 4.8), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(fronts)))
    colour = colours(table["sweep"].unique())
    for ax, (front, (qx, dy)) in zip(axes, fronts.items()):
        _front_axes(ax, table, qx, dy, sweeps, colour)
        title = f"{dy} vs {qx}"
        if hv is not None and f"hv_{front}" in hv:
            best = hv[f"hv_{front}"].loc[[s for s in sweeps if s in hv.index]].idxmax()
            title += f"\nlargest hypervolume: {hv.loc[best, 'label']}"
        ax.set_title(title, fontsize=10)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 4), frameon=False)
    params = ", ".join(f"{table[table['sweep'] == s]['label'].iloc[0]}: {table[table['sweep'] == s]['parameter'].iloc[0]}"
                       for s in sweeps)
    fig.suptitle(f"Diversity vs quality fronts, same seeds for every method (up and right is better)\n"
                 f"points labelled by the swept parameter ({params})", fontsize=10, fontweight="bold")
    return fig


def plot_guidance(table: pd.DataFrame):
    """Appendix I: the CFG weight sweep without and with SPELL on top, on the same three fronts."""
    return plot_fronts(table[table["sweep"].isin(APPENDIX_I)], None, list(APPENDIX_I))


def make_figures(table: pd.DataFrame, hv: pd.DataFrame) -> dict:
    figs = {"fronts": plot_fronts(table, hv, [s for s in ORDER if s in set(table["sweep"]) and s != "spell_cfg"]
                                  + [s for s in table["sweep"].unique() if s not in ORDER])}
    if set(APPENDIX_I) <= set(table["sweep"]):
        figs["guidance_spell"] = plot_guidance(table)
    return figs


# ----------------------------------------------------------------------------------------------- edges

def wandb_runs(datasets: dict, result: dict, images: dict) -> list:
    """One W&B run: the fronts and hypervolume tables, the per-condition metrics and the figures; each method's
    hypervolumes as summary numbers."""
    from .wandb_log import RunLog, config_from_attrs

    hv = result["table"]
    attrs = dict(datasets[baseline_groups(datasets)[0]].attrs) | {"reference": result["reference"]}
    summary = {f"{front}/{sweep}": v for sweep, row in hv.iterrows() for front, v in row.items()
               if front.startswith(("hv_", "vs_cfg_"))}
    return [RunLog(name="baselines", config=config_from_attrs(attrs), summary=summary,
                   tags=("baselines", model_name(attrs)),
                   tables={"fronts": result["fronts"].reset_index(), "hypervolume": hv.reset_index(),
                           "per_condition": result["per_condition"]}, images=images)]


def statistics(datasets: dict, run_dir=None, reference=None, k: int = 5) -> dict:
    """Metrics against held-out real data (reference: (x, cond, features) or None for the built-in model's), the
    fronts and each method's hypervolumes ("table"), and the neutral-point check."""
    model = model_name(datasets[baseline_groups(datasets)[0]].attrs)
    desc = "given by the caller"
    if reference is None:
        conds = np.unique(np.concatenate([datasets[n]["condition"].values for n in datasets]))
        *reference, desc = reference_data(model, conds)
    real_x, real_cond, features = reference
    points, per = front_table(datasets, real_x, real_cond, features, fidelity=condition_fidelity(model), k=k)
    hv = hypervolumes(points)
    return {"table": hv, "points": points, "fronts": with_hypervolumes(points, hv), "per_condition": per,
            "reference": desc, "neutral": neutral_check(datasets, points)}


ANALYSIS = driver.register(driver.Analysis(
    experiment="baselines", select=baseline_groups, keep=("x0",), statistics=statistics,
    figures=lambda datasets, r: make_figures(r["points"], r["table"]),
    files=lambda r: {"fronts.csv": r["fronts"].to_csv(), "hypervolume.csv": r["table"].to_csv(),
                     "per_condition.csv": r["per_condition"].to_csv(index=False)},
    wandb_runs=wandb_runs, format_table=format_table,
    none_found="has no baseline groups (<sweep>-<i>); make one with `python -m spell_lab.experiments.baselines`",
    summary_lines=lambda res: [f"\nneutral points: {res['neutral']}", f"real data: {res['reference']}"]))
load_run, latest_run, analyse_run, main = driver.bind(ANALYSIS)


if __name__ == "__main__":
    sys.exit(main())
