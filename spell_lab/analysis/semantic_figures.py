"""What the semantic comparison draws: Figure 4's three fronts with the SPELL variants beside the baselines
(`analysis.baselines_figures`, the same axes and styles), every variant's radii as its own sweep."""

from __future__ import annotations

from .baselines_figures import plot_fronts


def figures(datasets: dict, result: dict) -> dict:
    return {"fronts": plot_fronts(result["points"], result["hypervolume"])}
