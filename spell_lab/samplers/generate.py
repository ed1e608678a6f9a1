"""Generate a batch with a built-in denoiser: noise from one generator per sample, guidance, SPELL, recording."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..models.base import Denoiser, guided_x0
from ..repellency import Spell
from .loops import get_sampler
from .record import Recorder


@dataclass
class Generation:
    x0: torch.Tensor  # (B, *sample_shape) final outputs
    records: dict  # field -> (B, evaluations) tensors, plus t / alpha / sigma (evaluations,)


def sample_generators(seeds, device) -> list[torch.Generator]:
    """One RNG per sample, seeded from the sample's seed: noise never depends on the batch a sample is in."""
    return [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]


def stacked_normal(generators, shape, device, dtype=torch.float32) -> torch.Tensor:
    return torch.stack([torch.randn(shape, generator=g, device=device, dtype=dtype) for g in generators])


def generate(
    model: Denoiser,
    cond,
    seeds,
    *,
    sampler: str | None = None,
    steps: int | None = None,
    guidance: float | None = None,
    spell: Spell | None = None,
    device=None,
    dtype=torch.float32,
    record: bool = True,
) -> Generation:
    """Sample len(seeds) outputs for conditions `cond` (B,), with SPELL applied to x0_hat at every evaluation."""
    sampler = sampler or model.default_sampler
    steps = steps or model.default_steps
    guidance = model.default_guidance if guidance is None else guidance
    device = torch.device(device) if device is not None else next(model.parameters(), torch.empty(0)).device
    step_fn, eval_times = get_sampler(sampler, model.schedule.kind)
    cond = torch.as_tensor(cond, dtype=torch.long, device=device)
    if len(seeds) != cond.shape[0]:
        raise ValueError(f"got {len(seeds)} seeds for {cond.shape[0]} conditions: give one seed per sample.")
    gens = sample_generators(seeds, device)
    ts = model.schedule.grid(steps)
    s1 = float(model.schedule.alpha_sigma(ts[0])[1])
    x = s1 * stacked_normal(gens, model.sample_shape, device, dtype)  # x_1 ~ N(0, sigma_1^2), alpha_1 x0 neglected
    if spell is not None:
        spell.validate(x)
    times = eval_times(ts)
    recorder = Recorder(len(seeds), len(times), device) if record else None
    spell = spell if spell is not None else (Spell(0.0) if record else None)  # records distances even without SPELL
    a_s = model.schedule.alpha_sigma(torch.tensor(times, dtype=torch.float64))
    coefs = {t: (float(a), float(s)) for t, a, s in zip(times, *a_s)}  # host floats, computed once
    t_dev = dict(zip(times, torch.tensor(times, dtype=dtype).to(device)))  # one transfer: no per-step copy or sync

    def denoise(x_t, t):
        t = float(t)
        alpha, sigma = coefs[t]
        x0 = guided_x0(model, x_t, t_dev[t], cond, guidance)
        if spell is None:
            return x0
        step = spell(x0, cond)
        if recorder is not None:
            recorder.log(t, alpha, sigma, x_t, x0, step)
        return step.x0

    with torch.no_grad():
        x = step_fn(denoise, x, ts, model.schedule, noise=lambda: stacked_normal(gens, model.sample_shape, device, dtype))
    return Generation(x, recorder.result() if recorder is not None else {})
