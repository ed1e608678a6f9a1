"""Noise schedules: continuous time t in [0, 1] -> (alpha_t, sigma_t), with x_t = alpha_t * x0 + sigma_t * eps.

Time runs from noise (t = 1) to data (t = 0); every schedule has alpha(0) = 1, sigma(0) = 0 so that a sampler's
last step returns x0_hat itself. `grid(steps)` gives the descending times a sampler visits (steps + 1 values, the
last 0): `steps` is the number of sampler steps.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch


def uniform_grid(steps: int) -> torch.Tensor:
    """steps + 1 times from 1 (noise) to 0 (data), evenly spaced: the schedule shapes the sigmas."""
    return torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)


def sampling_progress(steps: int) -> torch.Tensor:
    """The progress of each sampler step, 1 at the first step, 1 - i / steps at step i (0 at the end; steps + 1 values):
    the t that CADS's schedule reads on every model, schedule and grid, as the reference implementation does
    (v0xie/sd-webui-cads: t = 1 - step / steps). On a uniform grid (VP) it is the grid itself, bit for bit."""
    return uniform_grid(steps)


@dataclass(frozen=True)
class VPLinear:
    """Variance preserving, DDPM's linear betas in continuous time: abar(t) = exp(-(b0 t + (b1 - b0) t^2 / 2))."""

    beta_min: float = 0.1
    beta_max: float = 20.0
    kind: str = "vp"

    def alpha_sigma(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = torch.as_tensor(t, dtype=torch.float64)
        log_abar = -(self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2)
        return torch.exp(0.5 * log_abar), torch.sqrt(-torch.expm1(log_abar))

    def grid(self, steps: int) -> torch.Tensor:
        return uniform_grid(steps)


@dataclass(frozen=True)
class EDM:
    """Karras et al. (2022): alpha = 1, sigma = sigma_max * t (EDM's own time is sigma itself; t is it over sigma_max).

    `grid(N)` is their discretisation, as k-diffusion's `get_sigmas_karras` and EDM/EDM2's samplers build it: N levels
    sigma_i = (smax^(1/rho) + i / (N - 1) (smin^(1/rho) - smax^(1/rho)))^rho, i = 0 .. N - 1 (sigma_max ... sigma_min),
    then 0. So N steps visit sigma_max ... sigma_min and step to the data; `--steps` counts them as k-diffusion does.
    """

    sigma_min: float = 0.002
    sigma_max: float = 80.0
    rho: float = 7.0
    kind: str = "edm"

    def alpha_sigma(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = torch.as_tensor(t, dtype=torch.float64)
        return torch.ones_like(t), self.sigma_max * t

    def grid(self, steps: int) -> torch.Tensor:
        if steps < 1:
            raise ValueError(f"the EDM grid needs steps >= 1 (got {steps}).")
        ramp = torch.linspace(0.0, 1.0, steps, dtype=torch.float64)  # [0] for one step: sigma_max alone, then 0
        lo, hi = self.sigma_min ** (1 / self.rho), self.sigma_max ** (1 / self.rho)
        sigmas = (hi + ramp * (lo - hi)) ** self.rho
        return torch.cat([sigmas / self.sigma_max, sigmas.new_zeros(1)])


@dataclass(frozen=True)
class RectifiedFlow:
    """Rectified flow (SD3): alpha = 1 - t, sigma = t; `shift` warps the grid as SD3's scheduler does."""

    shift: float = 1.0
    t_max: float = 1.0
    kind: str = "flow"

    def alpha_sigma(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = torch.as_tensor(t, dtype=torch.float64)
        return 1.0 - t, t

    def grid(self, steps: int) -> torch.Tensor:
        u = torch.linspace(self.t_max, 0.0, steps + 1, dtype=torch.float64)
        return self.shift * u / (1 + (self.shift - 1) * u)


def ld_alphas_cumprod(num_train_timesteps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012):
    """Latent Diffusion's abar_n (float64), n = 0..T-1: betas on a square-root-linear ramp (diffusers'
    'scaled_linear')."""
    betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, 0)


@functools.lru_cache(maxsize=4)
def _log_abar_knots(num_train_timesteps: int, beta_start: float, beta_end: float) -> torch.Tensor:
    """log abar at n = 0..T-1, computed once per schedule (every denoiser evaluation reads it)."""
    log_abar = ld_alphas_cumprod(num_train_timesteps, beta_start, beta_end).log()
    return torch.cat([torch.zeros(1, dtype=torch.float64), log_abar[1:]])  # knot n = 0 is the data itself


@dataclass(frozen=True)
class LatentDiffusionSchedule:
    """LD's discrete schedule seen in continuous time t = timestep / T: abar(n / T) = alphas_cumprod[n] at every
    training timestep n >= 1, abar(0) = 1 (so a sampler's last step returns x0_hat, as DDIM with
    set_alpha_to_one), log abar linear in between. `grid(steps)`: LDM's uniform DDIM timesteps (diffusers'
    'leading' spacing with steps_offset 1: 981, 961, ..., 1 for 50 steps) / T, then 0."""

    num_train_timesteps: int = 1000
    beta_start: float = 0.00085
    beta_end: float = 0.012
    kind: str = "vp"
    init_noise_sigma: float = 1.0  # x at the first step ~ N(0, 1), as diffusers' DDIM starts (alpha_1 = 0.07 here)

    def alpha_sigma(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = torch.as_tensor(t, dtype=torch.float64)
        knots = _log_abar_knots(self.num_train_timesteps, self.beta_start, self.beta_end).to(t.device)
        n = (t * self.num_train_timesteps).clamp(0, self.num_train_timesteps - 1)
        lo = n.floor().long().clamp(max=self.num_train_timesteps - 2)
        log_abar = torch.lerp(knots[lo], knots[lo + 1], n - lo)
        return torch.exp(0.5 * log_abar), torch.sqrt(-torch.expm1(log_abar))

    def timesteps(self, steps: int) -> torch.Tensor:
        ratio = self.num_train_timesteps // steps
        return (torch.arange(steps - 1, -1, -1, dtype=torch.float64) * ratio).round() + 1

    def grid(self, steps: int) -> torch.Tensor:
        if not 1 <= steps <= self.num_train_timesteps:
            raise ValueError(f"steps must be in 1..{self.num_train_timesteps} for this schedule (got {steps}).")
        return torch.cat([self.timesteps(steps), torch.zeros(1, dtype=torch.float64)]) / self.num_train_timesteps


SCHEDULES = {"vp": VPLinear, "edm": EDM, "flow": RectifiedFlow}

# The paper's Figure 5 times on Latent Diffusion's schedule, as noise levels sigma/alpha (5.11 and 2.28): where the
# comparisons with the paper are made on every model, whatever its own schedule puts at those t.
PAPER_TIMES = (0.8, 0.6)


def noise_level(schedule, t) -> torch.Tensor:
    """sigma_t / alpha_t of a schedule at times t (float64): the noise level comparisons across schedules use."""
    a, s = schedule.alpha_sigma(torch.as_tensor(t, dtype=torch.float64))
    return s / a


def paper_noise_levels() -> dict[float, float]:
    """{the paper's t: sigma/alpha there on LD's schedule}."""
    levels = noise_level(LatentDiffusionSchedule(), PAPER_TIMES)
    return {t: float(v) for t, v in zip(PAPER_TIMES, levels)}


def snr_db(schedule, t: float) -> float:
    """Signal-to-noise ratio of a schedule at time t, in dB (a readable way to compare schedules)."""
    a, s = schedule.alpha_sigma(torch.tensor(t))
    return 20 * math.log10(float(a) / max(float(s), 1e-12))
