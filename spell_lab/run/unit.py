"""One work unit's generation: its rounds in order, each repelled from the earlier ones, then the store's fields."""

from __future__ import annotations

import functools
import math
import time

import numpy as np
import torch

from .. import schema
from ..activity import activity_fields
from ..methods import recorded_fields, resolve
from ..plan import WorkUnit
from ..samplers import generate


def run_unit(model, unit: WorkUnit, *, sampler, steps, guidance, protected=None, device=None) -> dict:
    """Generate every round of `unit` with its setting's method and return numpy arrays named as the store's
    variables (`spell_lab.schema`). protected: the setting's protected-set shield source, already built."""
    s = unit.setting
    hooks = resolve(s.method, protected=protected)  # fresh per unit: the memory holds this condition's rounds only
    sample = getattr(model, "generate", None) or functools.partial(generate, model)  # pipelines drive their own loop
    recorded = [f.name for f in schema.step_fields()] + list(recorded_fields(s.method))
    parts = []
    for round_index, seeds in unit.rounds:
        cond = torch.full((len(seeds),), unit.condition, dtype=torch.long, device=device)
        with RoundClock(protected, device) as clock:
            out = sample(cond, seeds, sampler=sampler, steps=steps, guidance=guidance, method=hooks, device=device)
        final = hooks.final_nearest(out.x0, cond)  # the output against the references it was shielded from
        hooks.end_round(out.x0, cond)  # later rounds repel from this one
        part = {k: out.records[k] for k in recorded}
        part.update(x0=out.x0, final_nearest_distance=final, seed=torch.tensor(seeds))
        part.update(round=torch.full((len(seeds),), round_index), position=torch.arange(len(seeds)))
        part.update(clock.shares(len(seeds)))
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


class RoundClock:
    """Wall-clock time of one round's sampling and, where a protected source counts it (`search_seconds`, cumulative),
    the part of it spent searching the protected set. One device sync at each end of the round, none per step."""

    def __init__(self, protected, device):
        self.protected, self.device = protected, torch.device(device) if device is not None else None

    def _now(self) -> tuple[float, float]:
        if self.device is not None and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # queued kernels belong to this round
        return time.perf_counter(), getattr(self.protected, "search_seconds", math.nan)

    def __enter__(self):
        self.start = self._now()
        return self

    def __exit__(self, *exc):
        self.stop = self._now()

    def shares(self, batch: int) -> dict:
        """Each sample's share of the round: sample_seconds, search_seconds (NaN without a counted search)."""
        wall, search = (b - a for a, b in zip(self.start, self.stop))
        return {name: torch.full((batch,), v / batch, dtype=torch.float32)
                for name, v in (("sample_seconds", wall), ("search_seconds", search))}
