"""Generate a batch with a built-in denoiser: noise from one generator per sample, a method's hooks (guidance
schedule, condition transform, interventions such as SPELL), recording."""

from __future__ import annotations

import hashlib
import math
import numbers
from dataclasses import dataclass

import torch

from ..methods import Hooks
from ..models.base import NULL_CONDITION, Denoiser, guided_x0
from ..repellency import Spell
from ..schedules import sampling_progress
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


SEED_LIMIT = 2**63  # torch's generators take 64-bit seeds; the run layer gives sample i the seed seed + i


def check_request(model, steps, guidance) -> None:
    """Refuse steps and guidance the sampler cannot use, with what to give instead."""
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1 (got {steps!r}); None takes the model's "
                         f"({model.default_steps}).")
    if isinstance(guidance, bool) or not isinstance(guidance, numbers.Real) or not (math.isfinite(guidance)
                                                                                    and guidance >= 0):
        raise ValueError(f"guidance must be a finite number >= 0 (got {guidance!r}); 1 is the conditional model "
                         f"alone, None the model's default ({model.default_guidance}).")


def check_seeds(seeds) -> list[int]:
    """Seeds as a list of integers in [0, 2**63): one per sample, each sample's own generator."""
    if isinstance(seeds, torch.Tensor):
        seeds = seeds.tolist()
    if not hasattr(seeds, "__len__") or isinstance(seeds, (str, bytes, dict)):
        raise TypeError(f"seeds must be a list of integers, one per sample (got {type(seeds).__name__}); e.g. "
                        "list(range(8)).")
    bad = [s for s in seeds if isinstance(s, bool) or not isinstance(s, numbers.Integral) or not 0 <= s < SEED_LIMIT]
    if bad:
        raise ValueError(f"seeds must be integers between 0 and 2**63 - 1 (got {bad[0]!r}).")
    return [int(s) for s in seeds]


def check_conditions(model, cond, n: int) -> torch.Tensor:
    """One condition per seed, each one of the model's (or -1, no condition)."""
    cond = torch.as_tensor(cond)
    if cond.is_floating_point() or cond.dtype == torch.bool or cond.ndim != 1:
        raise ValueError(f"cond must be a 1-d tensor of integer conditions, one per sample (got dtype {cond.dtype}, "
                         f"shape {tuple(cond.shape)}).")
    if cond.shape[0] != n:
        raise ValueError(f"got {n} seeds for {cond.shape[0]} conditions: give one seed per sample.")
    if n == 0:
        raise ValueError("nothing to generate: give at least one condition and one seed.")
    classes = getattr(model, "num_classes", 0)
    bad = cond[(cond != NULL_CONDITION) & ((cond < 0) | (cond >= classes))] if classes else cond[:0]
    if len(bad):
        raise ValueError(f"condition {int(bad[0])} does not exist: the model has conditions 0..{classes - 1} "
                         f"({NULL_CONDITION} means none).")
    return cond.long()


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
    steps = model.default_steps if steps is None else steps
    guidance = model.default_guidance if guidance is None else guidance
    check_request(model, steps, guidance)
    device = torch.device(device) if device is not None else next(model.parameters(), torch.empty(0)).device
    step_fn, eval_times = get_sampler(sampler, model.schedule.kind)
    seeds = check_seeds(seeds)
    cond = check_conditions(model, cond, len(seeds)).to(device)
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
    # w per sampler step, decided at the step's start ts[i] (its first evaluation) for all of its evaluations
    weight = [guidance if hooks.guidance is None else float(hooks.guidance(t, *coefs[t], guidance))
              for t in (float(t) for t in ts[:-1])]  # on the host, once

    condition = _condition_transform(hooks, model, cond, seeds, device, len(ts) - 1)

    def denoise(x_t, t, step):
        t = float(t)
        alpha, sigma = coefs[t]
        y, y_null = condition(step)
        x0 = guided_x0(model, x_t, t_dev[t], cond, weight[step], embedding=y, null_embedding=y_null)
        if not intervenes:
            return x0
        step = hooks.intervene(x0, cond, x_t=x_t, t=t, alpha=alpha, sigma=sigma)
        if recorder is not None:
            recorder.log(t, alpha, sigma, x_t, x0, step)
        return step.x0

    with torch.no_grad():
        x = step_fn(denoise, x, ts, model.schedule, noise=lambda: stacked_normal(gens, model.sample_shape, device, dtype))
    return Generation(x, recorder.result() if recorder is not None else {})


def _condition_transform(hooks: Hooks, model: Denoiser, cond, seeds, device, steps: int):
    """step -> the (conditional, unconditional) branches' embeddings of that sampler step; None for a branch means its
    plain labels (no transform, or the transform returned the embedding itself: the labels path then runs, bit for
    bit). The transform sees the sampling progress of the step (`schedules.sampling_progress`), not the grid's t, and
    runs once per step: every evaluation of the step (Heun's corrector too) gets the same embeddings. Each branch draws
    from its own per-sample stream, so the conditional branch's noise is the same with or without the other."""
    if hooks.condition is None:
        return lambda step: (None, None)
    with torch.no_grad():
        y = model.embed_condition(cond)
        y_null = model.embed_condition(torch.full_like(cond, NULL_CONDITION)) if hooks.condition_uncond else None
    noise, noise_null = (_noise(method_generators(seeds, device, stream), device, y.dtype)
                         for stream in ("condition", "condition_uncond"))  # one stream per branch
    progress = sampling_progress(steps)
    made = {}

    def at(step):
        if step not in made:  # the step's first evaluation: draw its noise
            made.clear()
            p = float(progress[step])
            y_t = hooks.condition(y, p, noise)
            u_t = hooks.condition(y_null, p, noise_null) if y_null is not None else None
            made[step] = (None if y_t is y else y_t, None if u_t is y_null else u_t)
        return made[step]

    return at


def _noise(gens, device, dtype):
    return lambda shape: stacked_normal(gens, shape, device, dtype)
