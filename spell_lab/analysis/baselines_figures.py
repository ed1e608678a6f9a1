"""The baselines figures (paper Figure 4: three quality-diversity fronts; Appendix I: CFG with and without SPELL)
and W&B run, drawn from `spell_lab.analysis.baselines`' statistics. Methods come in the table's order (the run's,
SPELL's sweep first); a method's colour follows its place there, and sweeps of one method share it (SPELL on top of
CFG has SPELL's colour; its line is drawn dashed beside CFG's).
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from . import plots
from .baselines import baseline_groups, fronts_present
from .load import model_name

LABELS = {"precision": "precision ↑", "recall": "recall ↑", "density": "density ↑", "coverage": "coverage ↑",
          "vendi": "Vendi (features) ↑", "fidelity": "condition fidelity ↑", "fd": "Fréchet distance ↓"}
APPENDIX_I = ("cfg", "spell_cfg")  # the Appendix I figure: the CFG sweep, and the same under SPELL


def colours(table: pd.DataFrame) -> dict:
    """One colour per sweep, by its method's place in the table's order: sweeps of one method share it (SPELL on
    top of CFG has SPELL's colour; its line is drawn dashed beside CFG's)."""
    methods = {s: json.loads(m)["name"] for s, m in zip(table["sweep"], table["method"])}
    colour = plots.setup_colors(dict.fromkeys(methods.values()))
    return {s: colour[m] for s, m in methods.items()}


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
    colour = colours(table)
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


def front_sweeps(table: pd.DataFrame) -> list[str]:
    """The methods Figure 4 draws, in the table's order: all but SPELL on top of CFG (Appendix I's)."""
    return [s for s in table["sweep"].unique() if s not in APPENDIX_I[1:]]


def make_figures(table: pd.DataFrame, hv: pd.DataFrame) -> dict:
    figs = {"fronts": plot_fronts(table, hv, front_sweeps(table))}
    if set(APPENDIX_I) <= set(table["sweep"]):
        figs["guidance_spell"] = plot_guidance(table)
    return figs


def figures(datasets: dict, result: dict) -> dict:
    """The driver's figures."""
    return make_figures(result["points"], result["table"])


# ----------------------------------------------------------------------------------------------- W&B

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
