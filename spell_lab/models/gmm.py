"""`gmm`: a Gaussian mixture per condition with an exact, closed-form denoiser (the correctness oracle).

Condition c has J isotropic components N(mu_cj, std^2 I) with equal weights. Under x_t = alpha x0 + sigma eps,
component j gives x_t ~ N(alpha mu_j, (alpha^2 std^2 + sigma^2) I) and E[x0 | x_t, j] = mu_j + alpha std^2 /
(alpha^2 std^2 + sigma^2) (x_t - alpha mu_j); x0_hat is their average under the posterior responsibilities.
The unconditional model (cond = -1) is the mixture of all conditions, so classifier-free guidance is exact too.
"""

from __future__ import annotations

import math

import torch

from ..schedules import SCHEDULES
from .base import NULL_CONDITION, Denoiser


class GaussianMixture(Denoiser):
    name = "gmm"
    default_sampler = "ddim"
    default_steps = 50
    default_guidance = 1.0

    def __init__(
        self,
        num_classes: int = 4,
        components: int = 4,
        shape: tuple[int, ...] = (16,),
        spread: float = 4.0,
        std: float = 0.25,
        schedule: str = "vp",
        seed: int = 0,
        means: torch.Tensor | None = None,
    ):
        super().__init__()
        self.num_classes, self.components, self.sample_shape = num_classes, components, tuple(shape)
        dim = math.prod(self.sample_shape)
        if means is None:
            g = torch.Generator().manual_seed(seed)
            means = spread * torch.randn(num_classes, components, dim, generator=g)
        if means.shape != (num_classes, components, dim):
            raise ValueError(f"means must have shape {(num_classes, components, dim)}, got {tuple(means.shape)}.")
        self.register_buffer("means", means.float())
        self.std = float(std)
        self.schedule = SCHEDULES[schedule]() if isinstance(schedule, str) else schedule
        self.default_sampler = "flow_euler" if self.schedule.kind == "flow" else "ddim"

    def modes(self, cond: int | None = None) -> torch.Tensor:
        """The component means of one condition (or all), in the sample shape: the natural shields."""
        m = self.means if cond is None else self.means[cond]
        return m.reshape(-1, *self.sample_shape)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        alpha, sigma = self.schedule.alpha_sigma(t.detach().to(torch.float64))  # 0-dim tensors on x's device: no sync
        B, C, J = x.shape[0], self.num_classes, self.components
        xf = x.reshape(B, 1, -1).to(torch.float64)
        mu = self.means.reshape(1, C * J, -1).to(torch.float64)
        var = alpha**2 * self.std**2 + sigma**2  # the same for every component
        # log N(x_t; alpha mu, var I) up to a constant shared by all components (same var everywhere)
        logp = -((xf - alpha * mu) ** 2).sum(-1) / (2 * var)  # (B, C*J); elementwise + row sums: batch-independent
        owner = torch.arange(C, device=x.device).repeat_interleave(J)[None, :]
        allowed = (owner == cond[:, None]) | (cond[:, None] == NULL_CONDITION)
        gamma = torch.softmax(logp.masked_fill(~allowed, -math.inf), dim=1)  # equal weights within the allowed set
        e = mu + (alpha * self.std**2 / var) * (xf - alpha * mu)  # E[x0 | x_t, component]
        return (gamma[..., None] * e).sum(1).reshape(x.shape).to(x.dtype)


def load_gmm(device="cpu", **kwargs) -> GaussianMixture:
    """The built-in `gmm` model (its registry entry's loader)."""
    return GaussianMixture(**kwargs).to(device)


def held_out(conditions, per_condition: int | None, seed: int):
    """The built-in gmm's held-out data (its registry entry's `reference`): `mixture_samples` of the default mixture."""
    return mixture_samples(GaussianMixture(), conditions, per_condition, seed)


def mixture_samples(gmm: GaussianMixture, conditions, per_condition: int | None, seed: int):
    """`per_condition` (None: 256) exact samples of each condition's mixture (the mean of a uniformly drawn component
    + std x noise, seeded): (x, cond, description)."""
    per_condition = 256 if per_condition is None else int(per_condition)
    g = torch.Generator().manual_seed(seed)
    xs, cs = [], []
    for c in conditions:
        j = torch.randint(gmm.components, (per_condition,), generator=g)
        noise = torch.randn(per_condition, gmm.means.shape[-1], generator=g)
        xs.append((gmm.means[c, j] + gmm.std * noise).reshape(per_condition, *gmm.sample_shape))
        cs.append(torch.full((per_condition,), c))
    desc = f"{per_condition} exact mixture samples per condition (seed {seed}); features: raw vectors"
    return torch.cat(xs), torch.cat(cs).numpy(), desc


def feature_map(device="cpu"):
    """phi for semantic SPELL: the raw vectors (its metrics' features), so feature and diffusion SPELL coincide."""
    return lambda x: x.reshape(x.shape[0], -1)
