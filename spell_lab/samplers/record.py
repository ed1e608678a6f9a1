"""Per-step statistics of SPELL (docs/design.md section 2), written into preallocated device tensors: no host sync.

Per evaluation the recorder keeps three norms and the per-source shield counts (two stacked writes), and the cells a
protected-set index probed where the step reports them (`cells_probed`, one write); the derived fields (score_norm,
relative_magnitude, active_shields) are computed once, in `result()`.
"""

from __future__ import annotations

import math

import torch

from .. import schema
from ..repellency import SpellStep


class Recorder:
    """Collects, for every denoiser evaluation, the (B,) statistics of each sample; `result()` gives (B, n) tensors."""

    def __init__(self, batch: int, evaluations: int, device):
        self.norms = torch.full((3, batch, evaluations), math.nan, device=device)  # ||delta||, sigma^2 ||s||, nearest
        self.sources = schema.SOURCES  # the store's count fields, one per source
        self.counts = torch.zeros((len(self.sources), batch, evaluations), dtype=torch.long, device=device)
        self.none = torch.zeros(batch, dtype=torch.long, device=device)  # a source absent from a step counts 0
        self.cells = torch.full((batch, evaluations), -1, dtype=torch.long, device=device)  # -1: no cells probed
        self.optional = {}  # schema.optional_step_fields the steps report (r(t), lambda(t), residual): name -> (B, n)
        self.batch, self.evaluations, self.device = batch, evaluations, device
        self.t: list[float] = []
        self.alpha: list[float] = []
        self.sigma: list[float] = []

    def log(self, t: float, alpha: float, sigma: float, x: torch.Tensor, x0: torch.Tensor, spell: SpellStep) -> None:
        i = len(self.t)
        self.t.append(t), self.alpha.append(alpha), self.sigma.append(sigma)
        wd = torch.float64 if x.dtype == torch.float64 else torch.float32  # half inputs: norms in float32
        flat = lambda v: v.reshape(v.shape[0], -1).to(wd)  # noqa: E731
        delta_norm = flat(spell.delta).norm(dim=1)
        model_dir = (alpha * flat(x0) - flat(x)).norm(dim=1)  # sigma^2 * ||score||
        self.norms[:, :, i] = torch.stack([delta_norm, model_dir, spell.nearest.to(wd)]).float()
        self.counts[:, :, i] = torch.stack([spell.active.get(n, self.none) for n in self.sources])
        probed = getattr(spell, "cells_probed", None)  # (B,) from an index with cells; None: exhaustive or no search
        if probed is not None:
            self.cells[:, i] = probed
        for name, value in (("radius_t", spell.radius), ("overcomp_t", spell.overcomp),
                            ("shield_residual", spell.residual)):
            if value is not None:  # host floats or (B,) device tensors: no sync
                self._optional(name)[:, i] = value

    def _optional(self, name: str) -> torch.Tensor:
        if name not in self.optional:
            self.optional[name] = torch.full((self.batch, self.evaluations), math.nan, device=self.device)
        return self.optional[name]

    def result(self) -> dict:
        n = len(self.t)
        alpha = torch.tensor(self.alpha, device=self.norms.device)
        sigma = torch.tensor(self.sigma, device=self.norms.device)
        delta_norm, model_dir, nearest = self.norms[:, :, :n]
        counts = self.counts[:, :, :n]
        out = {
            "correction_norm": delta_norm,
            "score_norm": model_dir / sigma**2,
            # the correction as a score term, alpha/sigma^2 * delta, relative to the score: sigma^2 cancels
            "relative_magnitude": alpha * delta_norm / model_dir,
            "nearest_distance": nearest,
            "active_shields": counts.sum(0),
            "cells_probed": self.cells[:, :n],
        }
        out.update({schema.count_name(name): counts[k] for k, name in enumerate(self.sources)})
        out.update({name: values[:, :n] for name, values in self.optional.items()})
        out.update(t=torch.tensor(self.t), alpha=torch.tensor(self.alpha), sigma=torch.tensor(self.sigma))
        return out
