"""One work unit's generation: its rounds in order, each repelled from the earlier ones, then the store's fields."""

from __future__ import annotations

import functools

import numpy as np
import torch

from ..repellency import Memory, Spell
from ..samplers import generate
from .plan import WorkUnit

RECORD_FIELDS = (
    "correction_norm", "score_norm", "relative_magnitude", "nearest_distance",
    "active_shields", "active_batch", "active_memory", "active_protected",
)


def activity_fields(active: np.ndarray) -> dict:
    """intervened, first and last active step (-1 where never active) from (samples, steps) shield counts."""
    on = active > 0
    any_on = on.any(axis=1)
    first = np.where(any_on, on.argmax(axis=1), -1)
    last = np.where(any_on, on.shape[1] - 1 - on[:, ::-1].argmax(axis=1), -1)
    return {"intervened": any_on, "first_active_step": first.astype(np.int32), "last_active_step": last.astype(np.int32)}


def run_unit(model, unit: WorkUnit, *, sampler, steps, guidance, protected=None, device=None) -> dict:
    """Generate every round of `unit` and return numpy arrays named as the store's variables."""
    s = unit.setting
    memory = Memory() if s.memory else None
    spell = Spell.build(s.radius, s.overcomp, intra_batch=s.intra_batch, memory=memory, protected=protected)
    sample = getattr(model, "generate", None) or functools.partial(generate, model)  # pipelines drive their own loop
    parts = []
    for round_index, seeds in unit.rounds:
        cond = torch.full((len(seeds),), unit.condition, dtype=torch.long, device=device)
        out = sample(cond, seeds, sampler=sampler, steps=steps, guidance=guidance, spell=spell, device=device)
        final = spell(out.x0, cond).nearest  # the output against the references it was shielded from
        if memory is not None:
            memory.add(out.x0, cond)  # later rounds repel from this one
        part = {k: out.records[k] for k in RECORD_FIELDS}
        part.update(x0=out.x0, final_nearest_distance=final, seed=torch.tensor(seeds))
        part.update(round=torch.full((len(seeds),), round_index), position=torch.arange(len(seeds)))
        images = model.to_images(out.x0)
        if images is not None:
            part["image"] = images
        parts.append(part)
    data = {k: torch.cat([p[k] for p in parts]).cpu().numpy() for k in parts[0]}  # one host transfer per unit
    data["condition"] = np.full(len(data["seed"]), unit.condition, dtype=np.int32)
    data["final_nearest_distance"] = data["final_nearest_distance"].astype(np.float32)
    data["inside_shield"] = data["final_nearest_distance"] < s.radius
    data.update(activity_fields(data["active_shields"]))
    return data
