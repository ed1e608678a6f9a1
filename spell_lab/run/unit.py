"""One work unit's generation: its rounds in order, each repelled from the earlier ones, then the store's fields."""

from __future__ import annotations

import functools

import numpy as np
import torch

from .. import schema
from ..activity import activity_fields
from ..methods import resolve
from ..plan import WorkUnit
from ..samplers import generate


def run_unit(model, unit: WorkUnit, *, sampler, steps, guidance, protected=None, device=None) -> dict:
    """Generate every round of `unit` with its setting's method and return numpy arrays named as the store's
    variables (`spell_lab.schema`). protected: the setting's protected-set shield source, already built."""
    s = unit.setting
    hooks = resolve(s.method, protected=protected)  # fresh per unit: the memory holds this condition's rounds only
    sample = getattr(model, "generate", None) or functools.partial(generate, model)  # pipelines drive their own loop
    recorded = [f.name for f in schema.step_fields()]
    parts = []
    for round_index, seeds in unit.rounds:
        cond = torch.full((len(seeds),), unit.condition, dtype=torch.long, device=device)
        out = sample(cond, seeds, sampler=sampler, steps=steps, guidance=guidance, method=hooks, device=device)
        final = hooks.final_nearest(out.x0, cond)  # the output against the references it was shielded from
        hooks.end_round(out.x0, cond)  # later rounds repel from this one
        part = {k: out.records[k] for k in recorded}
        part.update(x0=out.x0, final_nearest_distance=final, seed=torch.tensor(seeds))
        part.update(round=torch.full((len(seeds),), round_index), position=torch.arange(len(seeds)))
        images = model.to_images(out.x0)
        if images is not None:
            part["image"] = images
        parts.append(part)
    data = {k: torch.cat([p[k] for p in parts]).cpu().numpy() for k in parts[0]}  # one host transfer per unit
    data["condition"] = np.full(len(data["seed"]), unit.condition, dtype=np.int32)
    data["final_nearest_distance"] = data["final_nearest_distance"].astype(np.float32)
    data["inside_shield"] = data["final_nearest_distance"] < hooks.radius
    data.update(activity_fields(data["active_shields"]))
    return data
