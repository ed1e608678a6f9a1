"""Per-step statistics of SPELL (design.md section 2), written into preallocated device tensors: no host sync."""

from __future__ import annotations

import math

import torch

from ..repellency import SOURCE_NAMES, SpellStep

FLOAT_FIELDS = ("correction_norm", "score_norm", "relative_magnitude", "nearest_distance")
COUNT_FIELDS = ("active_shields",) + tuple(f"active_{n}" for n in SOURCE_NAMES)


class Recorder:
    """Collects, for every denoiser evaluation, the (B,) statistics of each sample; `result()` gives (B, n) tensors."""

    def __init__(self, batch: int, evaluations: int, device):
        self.fields = {f: torch.full((batch, evaluations), math.nan, device=device) for f in FLOAT_FIELDS}
        self.fields.update({f: torch.zeros((batch, evaluations), dtype=torch.long, device=device) for f in COUNT_FIELDS})
        self.t: list[float] = []
        self.alpha: list[float] = []
        self.sigma: list[float] = []

    def log(self, t: float, alpha: float, sigma: float, x: torch.Tensor, x0: torch.Tensor, spell: SpellStep) -> None:
        i = len(self.t)
        self.t.append(t), self.alpha.append(alpha), self.sigma.append(sigma)
        f = self.fields
        wd = torch.float64 if x.dtype == torch.float64 else torch.float32  # half inputs: norms in float32
        flat = lambda v: v.reshape(v.shape[0], -1).to(wd)  # noqa: E731
        delta_norm = flat(spell.delta).norm(dim=1)
        model_dir = (alpha * flat(x0) - flat(x)).norm(dim=1)  # sigma^2 * ||score||
        f["correction_norm"][:, i] = delta_norm
        f["score_norm"][:, i] = model_dir / sigma**2
        # the correction as a score term, alpha/sigma^2 * delta, relative to the score: sigma^2 cancels
        f["relative_magnitude"][:, i] = alpha * delta_norm / model_dir
        f["nearest_distance"][:, i] = spell.nearest.float()
        total = torch.zeros_like(f["active_shields"][:, i])
        for name in SOURCE_NAMES:
            f[f"active_{name}"][:, i] = spell.active[name]
            total += spell.active[name]
        f["active_shields"][:, i] = total

    def result(self) -> dict:
        n = len(self.t)
        out = {k: v[:, :n] for k, v in self.fields.items()}
        out.update(t=torch.tensor(self.t), alpha=torch.tensor(self.alpha), sigma=torch.tensor(self.sigma))
        return out
