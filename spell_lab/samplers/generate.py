"""Generate a batch with a built-in denoiser: noise from one generator per sample, a method's hooks (guidance
schedule, condition transform, interventions such as SPELL), recording."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

from ..methods import Hooks
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


def method_generators(seeds, device, stream: str = "method") -> list[torch.Generator]:
    """One RNG per sample for a method's own draws (CADS's condition noise), apart from the sampler's stream:
    seeded with the first 63 bits of sha256(f"{seed}/{stream}"), so the sampler's noise (DDPM draws every step)
    is never disturbed, and a sample's draws still depend on its seed alone, not on its batch."""
    def derived(seed):
        digest = hashlib.sha256(f"{int(seed)}/{stream}".encode()).digest()
        return int.from_bytes(digest[:8], "little") >> 1
    return [torch.Generator(device=device).manual_seed(derived(s)) for s in seeds]


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
    method: Hooks | None = None,
    device=None,
    dtype=torch.float32,
    record: bool = True,
) -> Generation:
    """Sample len(seeds) outputs for conditions `cond` (B,) with a resolved method (`spell_lab.methods.resolve`), or
    with an already built `spell` (SPELL applied to x0_hat at every evaluation); neither: the plain sampler."""
    if spell is not None and method is not None:
        raise ValueError("give either spell= or method=, not both (a method resolves its own SPELL).")
    hooks = method if method is not None else Hooks.of_spell(spell)
    hooks.validate_model(model)
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
    # x_1 ~ N(0, s1^2): sigma_1 (alpha_1 x0 neglected), or the schedule's own init_noise_sigma (diffusers' convention)
    s1 = getattr(model.schedule, "init_noise_sigma", None) or float(model.schedule.alpha_sigma(ts[0])[1])
    x = s1 * stacked_normal(gens, model.sample_shape, device, dtype)
    hooks.validate(x)
    times = eval_times(ts)
    recorder = Recorder(len(seeds), len(times), device) if record else None
    intervenes = bool(hooks.interventions) or recorder is not None  # records distances even without SPELL
    a_s = model.schedule.alpha_sigma(torch.tensor(times, dtype=torch.float64))
    coefs = {t: (float(a), float(s)) for t, a, s in zip(times, *a_s)}  # host floats, computed once
    t_dev = dict(zip(times, torch.tensor(times, dtype=dtype).to(device)))  # one transfer: no per-step copy or sync
    weight = {t: guidance if hooks.guidance is None else float(hooks.guidance(t, *coefs[t], guidance))
              for t in times}  # w(t), on the host, once

    condition = _condition_transform(hooks, model, cond, seeds, device)

    def denoise(x_t, t):
        t = float(t)
        alpha, sigma = coefs[t]
        x0 = guided_x0(model, x_t, t_dev[t], cond, weight[t], embedding=condition(t))
        if not intervenes:
            return x0
        step = hooks.intervene(x0, cond, x_t=x_t, t=t, alpha=alpha, sigma=sigma)
        if recorder is not None:
            recorder.log(t, alpha, sigma, x_t, x0, step)
        return step.x0

    with torch.no_grad():
        x = step_fn(denoise, x, ts, model.schedule, noise=lambda: stacked_normal(gens, model.sample_shape, device, dtype))
    return Generation(x, recorder.result() if recorder is not None else {})


def _condition_transform(hooks: Hooks, model: Denoiser, cond, seeds, device):
    """t -> the conditional branch's embedding at t, or None for the plain labels (no transform, or the transform
    returned the embedding itself: the labels path then runs, bit for bit)."""
    if hooks.condition is None:
        return lambda t: None
    with torch.no_grad():
        y = model.embed_condition(cond)
    gens = method_generators(seeds, device, "condition")
    noise = lambda shape: stacked_normal(gens, shape, device, y.dtype)  # noqa: E731

    def at(t):
        y_t = hooks.condition(y, t, noise)
        return None if y_t is y else y_t

    return at
