"""The diversity benchmark's figures (the relative change SPELL makes per metric, each model's gallery) and W&B runs,
drawn from `spell_lab.analysis.diversity`'s statistics.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from . import plots
from .diversity import LABELS, METRICS, by_model, group_name, measured_metrics, model_of
from .load import every_round


@plots.styled
def plot_change(per_seed: pd.DataFrame, metrics=METRICS[:7]):
    """The relative change SPELL makes to each metric, per model: one dot per seed set (paired: same seeds), the
    bar their mean; dotted, the paper's coverage band (-1% .. +2%). FD is lower-is-better."""
    metrics = measured_metrics(per_seed, metrics)
    models = list(dict.fromkeys(per_seed["model"]))
    colors = plots.setup_colors(models)
    fig = plots.Figure(figsize=(1.25 * len(metrics) * max(1, len(models)) ** 0.5 + 2.5, 4.2), layout="constrained")
    ax = fig.subplots()
    width = 0.8 / max(1, len(models))
    for j, model in enumerate(models):
        g = per_seed[per_seed["model"] == model]
        own = measured_metrics(g, metrics)
        wide = g.pivot(index="seed_set", columns="arm", values=own).dropna()
        for i, m in ((metrics.index(m), m) for m in own):
            rel = 100 * (wide[(m, "spell")] - wide[(m, "without")]) / wide[(m, "without")]
            x = i + (j - (len(models) - 1) / 2) * width
            ax.bar(x, rel.mean(), width * 0.9, color=colors[model], alpha=0.35, label=model if i == 0 else None)
            ax.scatter(np.full(len(rel), x), rel, color=colors[model], s=16, zorder=3, edgecolor="k", lw=0.4)
    ax.axhline(0, color="0.2", lw=0.8)
    i = metrics.index("coverage") if "coverage" in metrics else None
    if i is not None:
        ax.hlines([-1, 2], i - 0.45, i + 0.45, colors="0.3", linestyles=":", lw=1.2)
    ax.set_xticks(range(len(metrics)), [LABELS[m] for m in metrics], fontsize=9)
    ax.set_ylabel("SPELL vs without, same seeds (%)")
    ax.legend(frameon=False, fontsize=9, loc="best")
    ax.set_title("Relative change by SPELL (dots: seed sets; bars: their mean; dotted: the paper's coverage band)",
                 fontsize=10)
    return fig


def make_figures(datasets: dict, per_seed: pd.DataFrame) -> dict:
    from .gallery import plot_gallery

    figs = {"relative_change": plot_change(per_seed)}
    for model, groups in by_model(every_round(datasets)).items():  # the gallery draws every round
        spell, without = group_name("spell", 0), group_name("without", 0)  # seed set 0: with SPELL over its pair
        if spell in groups and without in groups and "image" in groups[spell]:
            figs[f"gallery_{model}"] = plot_gallery(groups, setup=spell, baseline=without)
    return figs


def figures(datasets: dict, result: dict) -> dict:
    """The driver's figures."""
    return make_figures(datasets, result["per_seed_set"])


# ----------------------------------------------------------------------------------------------- W&B

def wandb_runs(datasets: dict, result: dict, images: dict) -> list:
    """One W&B run per model: the Table 1 rows as summary (`without/<metric>`, `spell/<metric>`, `change/<metric>`),
    the tables and the figures."""
    from .wandb_log import RunLog, config_from_attrs

    table, per_seed, per_condition = result["table"], result["per_seed_set"], result["per_condition"]
    runs = []
    for model, groups in by_model(datasets).items():
        if model not in table.index.get_level_values(0):
            continue
        spell = next(ds for n, ds in sorted(groups.items()) if n.startswith("spell-"))
        summary = {f"{setup}/{col}": v for setup, row in table.loc[model].iterrows() for col, v in row.items()}
        own = {k: v for k, v in images.items() if k == "relative_change" or k == f"gallery_{model}"}
        runs.append(RunLog(name=f"diversity-{model}", config=config_from_attrs(dict(spell.attrs)), summary=summary,
                           tags=("diversity", model_of(spell)), images=own,
                           tables={"table1": table.loc[[model]], "per_seed_set": per_seed[per_seed["model"] == model],
                                   "per_condition": per_condition[per_condition["model"] == model]}))
    return runs
