"""A method's guidance schedule (interval guidance, a CFG weight) and condition transform (CADS) inside a diffusers
pipeline, through `callback_on_step_end`: the pattern diffusers documents for dynamic CFG (set
`pipe._guidance_scale`, swap `prompt_embeds` between the CFG layout [uncond, cond] and the conditional half alone).

    cb = MethodCallback(pipe, resolve({"name": "interval", "sigma_lo": 0.3, "sigma_hi": 5.0}), steps=28,
                        guidance=7.0, seeds=seeds, pipeline_kwargs=dict(prompt_embeds=..., negative_prompt_embeds=...))
    pipe(**cb.call_kwargs(), num_inference_steps=28, ...)       # generate_pipeline(..., method=...) does this

The callback runs after each denoiser evaluation (diffusers calls it once per timestep), so it sets what the next one
sees; the first evaluation's weight and condition go into the pipeline call itself (`call_kwargs`). Both are decided
once per sampler step, as in the built-in samplers (`spell_lab.methods`): a second-order scheduler (Heun,
FlowMatchHeun: `order` 2, 2N - 1 timesteps for N steps) evaluates step j twice, and its corrector keeps the step's
choice; so does PNDM's first step (`sampler_steps`). The noise levels come from a copy of the scheduler, in the same coordinates as `SpellScheduler`'s records
(sigma / alpha is the VP/EDM noise level).

- Guidance: step j runs at the weight its starting noise level gives. Where w <= 1 the pipeline runs the conditional
  branch alone (diffusers turns CFG off for guidance_scale <= 1), so interval guidance outside its interval is
  guidance 1 bit for bit. Turning CFG on after a start with it off needs the unconditional embeddings: pass
  `negative_prompt_embeds` (and, for SD3, `negative_pooled_prompt_embeds`).
- Condition (CADS): the conditional embeddings given as `prompt_embeds` (and `pooled_prompt_embeds` where the
  pipeline has them) are annealed at each step's sampling progress 1 - j / N (never the timestep / 1000 or the flow
  sigma); the unconditional branch keeps the negative embeddings, or is annealed too with `noise_uncond` (then pass
  the negative embeddings). Each sample's noise comes from its own stream derived from its seed
  (`spell_lab.samplers.generate.method_generators`), apart from the pipeline's generators. Prompts as strings are
  refused: encode them first (`pipe.encode_prompt`).
"""

from __future__ import annotations

import copy
import inspect

import torch

from ..methods import Hooks
from ..samplers.generate import method_generators, stacked_normal
from ..schedules import sampling_progress
from .scheduler import evaluation, scheduler_family, scheduler_prediction

CONDITION_TENSORS = ("prompt_embeds", "pooled_prompt_embeds")  # concatenated [uncond, cond] under CFG
NEGATIVE = {"prompt_embeds": "negative_prompt_embeds", "pooled_prompt_embeds": "negative_pooled_prompt_embeds"}


def step_levels(scheduler, steps: int) -> tuple[list, torch.Tensor]:
    """The `Evaluation` (t, alpha, sigma) of every pipeline evaluation and the timesteps, from a copy of the scheduler
    (the pipeline's own is untouched). One per timestep: diffusers calls the callback once per timestep."""
    s = copy.deepcopy(getattr(scheduler, "inner", scheduler))
    s.set_timesteps(steps)
    family = scheduler_family(s)
    prediction = scheduler_prediction(s, family)
    out = []
    for i, t in enumerate(s.timesteps):
        if family != "vp":
            s._step_index = i  # the sigma that `step` i consumes
        out.append(evaluation(s, family, prediction, t))
    return out, s.timesteps.cpu()


def sampler_steps(scheduler, evaluations: int, steps: int) -> list[int]:
    """The sampler step each of a pipeline's evaluations belongs to. Heun's schedulers (`order` 2) evaluate step j at
    sigma_j and, its corrector, at sigma_{j+1}: 2 steps - 1 evaluations, the last step alone. PNDM (PLMS) starts with
    the same pair: its first step takes two evaluations, then one each (steps + 1). The others: one per step."""
    if getattr(getattr(scheduler, "inner", scheduler), "order", 1) == 2 and evaluations == 2 * steps - 1:
        return [k // 2 for k in range(evaluations)]
    if evaluations == steps + 1:
        return [0] + list(range(steps))
    if evaluations == steps:
        return list(range(steps))
    raise ValueError(f"{type(getattr(scheduler, 'inner', scheduler)).__name__} runs {evaluations} evaluations for "
                     f"{steps} steps, and which step each belongs to is not known; run the method with another "
                     "scheduler (e.g. Euler, DDIM, Heun, PNDM).")


def needs_callback(hooks: Hooks) -> bool:
    return hooks.guidance is not None or hooks.condition is not None


class MethodCallback:
    """`callback_on_step_end` for a method's guidance schedule and condition transform (module docstring)."""

    def __init__(self, pipe, hooks: Hooks, *, steps: int, guidance: float, seeds, pipeline_kwargs: dict):
        name = type(pipe).__name__
        params = inspect.signature(pipe.__call__).parameters
        if "callback_on_step_end" not in params:
            raise ValueError(f"{name} takes no callback_on_step_end, so method {hooks.params.get('name')!r} cannot "
                             "change its guidance or condition per step; use a pipeline that does (e.g. SD, SD3).")
        if pipeline_kwargs.get("callback_on_step_end") is not None:
            raise ValueError("a method that changes guidance or the condition brings its own callback_on_step_end; "
                             "run without yours.")
        self.hooks, self.names = hooks, [n for n in CONDITION_TENSORS if n in pipe._callback_tensor_inputs]
        self.levels, self.timesteps = step_levels(pipe.scheduler, steps)
        self.step_of = sampler_steps(pipe.scheduler, len(self.levels), steps)
        start = {}
        for k, j in enumerate(self.step_of):
            start.setdefault(j, self.levels[k])  # a step's first evaluation is at its starting noise level
        run = float(guidance)
        per_step = [run if hooks.guidance is None else float(hooks.guidance(e.t, e.alpha, e.sigma, run))
                    for e in (start[j] for j in range(steps))]
        self.weights = [per_step[j] for j in self.step_of]  # one per evaluation, the step's
        self.progress = sampling_progress(steps)
        self.y = {n: pipeline_kwargs[n] for n in self.names if pipeline_kwargs.get(n) is not None}
        self.negatives = {n: pipeline_kwargs.get(NEGATIVE[n]) for n in self.names}
        self.y_null = {}  # the clean unconditional embeddings, annealed at each step (noise_uncond)
        if hooks.condition is not None:
            if "prompt_embeds" not in self.y:
                raise ValueError(f"method {hooks.params.get('name')!r} anneals the prompt embeddings: pass "
                                 "prompt_embeds= (encode the prompts first, e.g. with pipe.encode_prompt).")
            if hooks.condition_uncond:
                missing = [NEGATIVE[n] for n in self.y if self.negatives[n] is None]
                if missing:
                    raise ValueError(f"method {hooks.params.get('name')!r} with noise_uncond anneals the unconditional "
                                     f"embeddings too: pass {', '.join(missing)}.")
                self.y_null = {n: self.negatives[n] for n in self.y}
            # CPU: a sample's draws depend on its seed only; one stream per branch, as in the built-in samplers
            self.noise = {branch: _noise(method_generators(seeds, "cpu", stream))
                          for branch, stream in (("cond", "condition"), ("uncond", "condition_uncond"))}
        if self.weights[0] <= 1 < max(self.weights):
            missing = [NEGATIVE[n] for n in self.names if n in self.y and self.negatives[n] is None]
            if missing or "prompt_embeds" not in self.y:
                raise ValueError("guidance turns on after a start without it: pass prompt_embeds and "
                                 f"{', '.join(missing) or 'negative_prompt_embeds'} (the unconditional embeddings).")
        self.current = {n: self.y[n] for n in self.y}  # the conditional half each step sees (step 0: below)
        self.current.update(self._conditions(0))

    @property
    def tensor_inputs(self) -> list[str]:  # what diffusers hands the callback (it reads this attribute)
        return list(self.names)

    def call_kwargs(self) -> dict:
        """What step 0 needs in the pipeline call: its weight, its condition, and this callback."""
        out = dict(callback_on_step_end=self, callback_on_step_end_tensor_inputs=self.tensor_inputs)
        out.update(self.current)
        if self.hooks.guidance is not None:
            out["guidance_scale"] = self.weights[0]
        return out

    def _conditions(self, k: int) -> dict:
        """The embeddings of evaluation k's step: the conditional ones under their names, the annealed unconditional
        ones (noise_uncond) under the negative names; the given ones themselves where the transform leaves them."""
        if self.hooks.condition is None:
            return {}
        p = float(self.progress[self.step_of[k]])
        anneal = lambda y, b: self.hooks.condition(y, p, lambda shape: self.noise[b](shape, y))  # noqa: E731
        out = {n: anneal(y, "cond") for n, y in self.y.items()}
        out.update({NEGATIVE[n]: anneal(y, "uncond") for n, y in self.y_null.items()})
        return out

    def __call__(self, pipe, i: int, timestep, kwargs: dict) -> dict:
        if i == 0 and not torch.equal(pipe.scheduler.timesteps.cpu(), self.timesteps):
            raise RuntimeError("the pipeline's timesteps differ from the scheduler's own set_timesteps(steps) (custom "
                               "timesteps, sigmas or shifting?); run the method without them.")
        nxt = i + 1
        if nxt >= len(self.weights) or self.step_of[nxt] == self.step_of[i]:
            return {}  # the end, or Heun's corrector: the step keeps its weight and condition
        was_on = pipe.do_classifier_free_guidance
        if self.hooks.guidance is not None:
            pipe._guidance_scale = self.weights[nxt]
        on = pipe.do_classifier_free_guidance
        new = self._conditions(nxt)
        out = {}
        for n in self.names:
            if kwargs.get(n) is None:
                continue
            u = NEGATIVE[n]
            moved = any(m in new and new[m] is not self.current.get(m) for m in (n, u))
            if on == was_on and not moved:
                continue  # nothing changed for this tensor: the pipeline keeps its own, bit for bit
            uncond, cond = kwargs[n].chunk(2) if was_on else (self.negatives.get(n), kwargs[n])
            if u not in new:
                self.negatives[n] = uncond  # the pipeline's own unconditional embeddings, kept for later steps
            uncond, cond = new.get(u, uncond), new.get(n, cond)
            self.current[n], self.current[u] = cond, uncond
            out[n] = torch.cat([uncond, cond]) if on else cond
        return out


def _noise(gens):
    return lambda shape, like: stacked_normal(gens, shape, "cpu").to(like.device, like.dtype)
