"""What the semantic comparison draws: Figure 4's three fronts with the SPELL variants beside the baselines
(`analysis.baselines_figures`, the same axes and styles), every variant's radii as its own sweep in its own colour."""

from __future__ import annotations

import json

from .baselines_figures import plot_fronts
from .semantic import VARIANTS


def figures(datasets: dict, result: dict) -> dict:
    table = result["points"].copy()
    variant = table["sweep"].isin(VARIANTS)  # colours go by method: each variant counts as its own here
    table.loc[variant, "method"] = [json.dumps({"name": s}) for s in table.loc[variant, "sweep"]]
    return {"fronts": plot_fronts(table, result["hypervolume"])}
