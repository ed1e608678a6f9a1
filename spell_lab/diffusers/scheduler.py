"""`SpellScheduler`: SPELL inside a diffusers pipeline, by wrapping the pipeline's scheduler (docs/design.md section 3).

    pipe.scheduler = SpellScheduler(pipe.scheduler, radius=40.0, intra_batch=True)
    images = pipe(prompts, generator=generators).images
    pipe.scheduler.records()            # xarray.Dataset (sample, step), the run store's names

Pipelines call `scheduler.step(model_output, timestep, sample)` once per denoiser evaluation, after classifier-free
guidance. The wrapper reads alpha_t and sigma_t of that evaluation from the scheduler's own state, turns the output
into x0_hat, applies SPELL, turns x0_hat' back into the scheduler's prediction type with x_t fixed, and calls the
real `step`. Everything else (set_timesteps, timesteps, scale_model_input, init_noise_sigma, config, order, ...)
is the wrapped scheduler's.

Spaces and recorded coordinates follow the scheduler's own convention, one family at a time:

    family     schedulers                              its sample x_t              recorded alpha, sigma
    vp         DDIM, DDPM, PNDM                        alpha x0 + sigma eps        sqrt(abar_t), sqrt(1 - abar_t)
    vp_sigmas  DPM-Solver(++) multi/single step,       alpha x0 + sigma eps        _sigma_to_alpha_sigma_t(sigmas[i])
               UniPC, DEIS, SA-Solver                  (flow sigmas: 1-s, s)
    karras     Euler, Euler ancestral, Heun, LMS       x0 + sigma eps (VE scale)   1, sigmas[i]
    flow       FlowMatchEuler, FlowMatchHeun (SD3)     (1 - s) x0 + s eps          1 - s, s

The recorded t is timestep / num_train_timesteps (1 = noise; for flow matching t = sigma). Statistics are those of
`spell_lab.samplers.record.Recorder` in the space the scheduler's sample lives in, so relative_magnitude =
alpha / sigma^2 * correction_norm / score_norm holds for every family (score_norm itself depends on the space).

Limits: the scheduler's own clip_sample / thresholding act on x0 after SPELL and can pull it back inside a shield;
Euler's `s_churn > 0` re-noises the sample inside `step` and is refused.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass

import torch

from ..methods import Hooks
from ..parameterisation import from_x0, to_x0
from ..repellency import Spell
from ..samplers.record import Recorder

FAMILIES = {  # scheduler class name -> how its sample relates to x0 (see the module docstring)
    "DDIMScheduler": "vp",
    "DDPMScheduler": "vp",
    "PNDMScheduler": "vp",
    "DPMSolverMultistepScheduler": "vp_sigmas",
    "DPMSolverSinglestepScheduler": "vp_sigmas",
    "UniPCMultistepScheduler": "vp_sigmas",
    "DEISMultistepScheduler": "vp_sigmas",
    "SASolverScheduler": "vp_sigmas",
    "EulerDiscreteScheduler": "karras",
    "EulerAncestralDiscreteScheduler": "karras",
    "HeunDiscreteScheduler": "karras",
    "LMSDiscreteScheduler": "karras",
    "FlowMatchEulerDiscreteScheduler": "flow",
    "FlowMatchHeunDiscreteScheduler": "flow",
}

PREDICTIONS = {  # scheduler's prediction_type -> spell_lab.parameterisation name
    "epsilon": "epsilon",
    "v_prediction": "v_prediction",
    "sample": "sample",
    "original_sample": "sample",
    "flow_prediction": "flow",
}


def scheduler_family(scheduler) -> str:
    """The family of a diffusers scheduler (subclasses count as their base), or a ValueError listing the supported."""
    for cls in type(scheduler).__mro__:
        if cls.__name__ in FAMILIES:
            return FAMILIES[cls.__name__]
    raise ValueError(
        f"SpellScheduler does not know how {type(scheduler).__name__} relates its sample to x0_hat; "
        f"use one of {sorted(FAMILIES)} (e.g. pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config))."
    )


def scheduler_prediction(scheduler, family: str) -> str:
    """The parameterisation of the model output the scheduler expects, as a spell_lab.parameterisation name."""
    if family == "flow":
        return "flow"  # flow-matching schedulers take a velocity v = eps - x0 and have no prediction_type
    kind = scheduler.config.get("prediction_type", "epsilon")
    if kind not in PREDICTIONS:
        raise ValueError(
            f"SpellScheduler cannot convert a model output of prediction_type={kind!r} "
            f"({type(scheduler).__name__}) to x0_hat; supported prediction types are {sorted(PREDICTIONS)}."
        )
    return PREDICTIONS[kind]


@dataclass(frozen=True)
class Evaluation:
    """One denoiser evaluation: sample x_t = alpha x0 + sigma eps, and the model's input is `scale * x_t`.

    scale is 1 except for the Karras family, whose model sees x_t / sqrt(1 + sigma^2) (the VP view in which the
    network was trained): multiplying x_t = alpha x0 + sigma eps by scale gives the model's own alpha and sigma.
    """

    t: float
    alpha: float
    sigma: float
    scale: float
    prediction: str

    def to_x0(self, output: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        s = self.scale
        return to_x0(output, s * sample, s * self.alpha, s * self.sigma, self.prediction)

    def from_x0(self, x0: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        s = self.scale
        return from_x0(x0, s * sample, s * self.alpha, s * self.sigma, self.prediction)


def evaluation(scheduler, family: str, prediction: str, timestep) -> Evaluation:
    """alpha_t, sigma_t of the evaluation that `scheduler.step(output, timestep, sample)` is about to consume."""
    t = float(timestep) / scheduler.config.num_train_timesteps
    if family == "vp":
        abar = float(scheduler.alphas_cumprod[int(timestep)])
        return Evaluation(t, abar**0.5, (1.0 - abar) ** 0.5, 1.0, prediction)
    if scheduler.step_index is None:  # what the real step does first; it is then a no-op there
        scheduler._init_step_index(timestep)
    sigma = scheduler.sigmas[scheduler.step_index]  # Heun's second call: sigmas[i] is the point evaluated too
    if family == "vp_sigmas":
        alpha, sigma = (float(v) for v in scheduler._sigma_to_alpha_sigma_t(sigma))
        return Evaluation(t, alpha, sigma, 1.0, prediction)
    sigma = float(sigma)
    if family == "karras":
        return Evaluation(t, 1.0, sigma, (1.0 + sigma**2) ** -0.5, prediction)
    return Evaluation(t, 1.0 - sigma, sigma, 1.0, prediction)  # flow


class SpellScheduler:
    """A diffusers scheduler with SPELL applied to x0_hat at every `step` (module docstring for the conventions).

    radius, overcomp: the correction (docs/design.md section 2); radius 0 passes the model output through untouched.
    intra_batch: the other samples of the batch repel each other (within the same group, `set_groups`).
    memory, protected: reference latents (K, *latent_shape) or the project's shield sources (`repellency.Memory`,
        a protected index); they must live in the scheduler's sample space (latents for latent pipelines).
    method: instead of the SPELL arguments, a resolved method (`spell_lab.methods.resolve`): its interventions act
        on x0_hat at every step, as in the built-in samplers.

    A batch whose two halves are identical at the first step is taken as DiT's classifier-free-guidance layout
    ([x, x] with the guided output twice): SPELL and the records see each sample once and both halves get the same
    corrected output. `set_groups` states the layout explicitly (n ids for a batch of n or of 2n).
    """

    _OWN = frozenset({"inner", "hooks", "family", "prediction", "_groups", "_run"})

    def __init__(self, scheduler, radius: float | None = None, overcomp: float = 1.0, intra_batch: bool = True,
                 memory=None, protected=None, *, method: Hooks | None = None):
        if isinstance(scheduler, SpellScheduler):
            raise ValueError("this scheduler is already a SpellScheduler; wrap its `.inner` scheduler instead.")
        if (radius is None) == (method is None):
            raise ValueError("give SpellScheduler either a radius (SPELL) or method= (a resolved method), not both.")
        if method is not None and (method.guidance is not None or method.condition is not None):
            raise ValueError(f"method {method.params.get('name')!r} changes the guidance weight or the condition, "
                             "which a scheduler cannot see; run it with generate_pipeline(..., method=), which adds "
                             "the step-end callback (spell_lab.diffusers.callbacks.MethodCallback).")
        family = scheduler_family(scheduler)
        self.inner = scheduler
        self.family = family
        self.prediction = scheduler_prediction(scheduler, family)
        if method is None:
            method = Hooks.of_spell(Spell.build(radius, overcomp, intra_batch=intra_batch, memory=memory,
                                                protected=protected))
        self.hooks = method
        self._groups = None
        self._run = None

    @property
    def spell(self) -> Spell | None:
        """The method's SPELL (radius, overcompensation, shield sources); None for methods without shields."""
        return self.hooks.shields

    # --- behave like the wrapped scheduler -------------------------------------------------------------------
    # `step` and `set_timesteps` carry the wrapped methods' signatures: pipelines inspect them for "eta",
    # "generator" (step) and "timesteps", "sigmas" (set_timesteps).

    @property
    def step(self):
        def step(*args, **kwargs):
            return self._spell_step(*args, **kwargs)

        return functools.update_wrapper(step, self.inner.step)

    @property
    def set_timesteps(self):
        def set_timesteps(*args, **kwargs):
            self._run = None  # a new run starts: fresh records, batch layout found again at the first step
            return self.inner.set_timesteps(*args, **kwargs)

        return functools.update_wrapper(set_timesteps, self.inner.set_timesteps)

    def __getattr__(self, name):
        if name in SpellScheduler._OWN:  # not set yet (e.g. during copying): never recurse into `inner`
            raise AttributeError(name)
        return getattr(self.inner, name)

    def __setattr__(self, name, value):
        if name in SpellScheduler._OWN:
            object.__setattr__(self, name, value)
        else:
            setattr(self.inner, name, value)

    @property
    def __class__(self):  # pipelines that branch on isinstance(self.scheduler, EulerDiscreteScheduler) still do
        return type(self.inner)

    def __reduce__(self):  # pickle checks obj.__class__, which the property above redirects: rebuild explicitly
        return (_rebuild, (self.inner, self.hooks, self.family, self.prediction, self._groups))

    def __len__(self):
        return len(self.inner)

    def __repr__(self):
        s = self.spell
        if s is None:
            return f"SpellScheduler(method={self.hooks.params}, {self.inner!r})"
        names = [x.name for x in s.sources]
        return f"SpellScheduler(radius={s.radius}, overcomp={s.overcomp}, sources={names}, {self.inner!r})"

    # --- groups, records ----------------------------------------------------------------------------------

    def set_groups(self, groups) -> None:
        """Group id per sample (e.g. the prompt index): only samples of the same group repel each other, and
        memory items shield only their own group. Default: all one group. With `num_images_per_prompt = n`,
        diffusers orders the batch prompt by prompt, so groups = torch.arange(prompts).repeat_interleave(n)."""
        self._groups = None if groups is None else torch.as_tensor(groups, dtype=torch.long).reshape(-1)
        self._run = None

    def record_tensors(self) -> dict:
        """The last run's statistics: field -> (B, evaluations) tensors, plus t / alpha / sigma (evaluations,)."""
        if self._run is None:
            raise RuntimeError("no run recorded yet: run the pipeline (or call step) after wrapping the scheduler.")
        return self._run.recorder.result()

    def records(self):
        """The last run's statistics as an xarray.Dataset with dims (sample, step), as in the run store."""
        import xarray as xr

        r = {k: v.detach().cpu().numpy() for k, v in self.record_tensors().items()}
        coords = {"step": list(range(len(r["t"]))), "t": ("step", r.pop("t")), "alpha": ("step", r.pop("alpha")),
                  "sigma": ("step", r.pop("sigma"))}
        attrs = {"method": json.dumps(self.hooks.params, sort_keys=True), "scheduler": type(self.inner).__name__,
                 "family": self.family, "prediction": self.prediction}
        if self.spell is not None:
            attrs.update(radius=self.spell.radius, overcomp=self.spell.overcomp)
        return xr.Dataset({k: (("sample", "step"), v) for k, v in r.items()}, coords=coords, attrs=attrs)

    def final_sample(self) -> torch.Tensor:
        """The sample returned by the last step of the last run (B, ...): the final latents, before decoding."""
        if self._run is None or self._run.final is None:
            raise RuntimeError("no run recorded yet: run the pipeline (or call step) after wrapping the scheduler.")
        return self._run.final

    # --- the step ---------------------------------------------------------------------------------------------

    def _spell_step(self, model_output, timestep, sample, *args, **kwargs):
        if kwargs.get("s_churn", 0.0) or kwargs.get("per_token_timesteps") is not None:
            raise ValueError("SpellScheduler needs the x_t the model saw: s_churn > 0 and per_token_timesteps "
                             "change it inside step; run without them.")
        ev = evaluation(self.inner, self.family, self.prediction, timestep)
        run = self._start(model_output, sample) if self._run is None else self._run
        run.check(sample)
        n, c = run.samples, sample.shape[1]
        learned = model_output.shape[1] == 2 * c  # DDPM's learned variance rides in extra channels
        out = model_output[:n, :c] if learned else model_output[:n]
        work = torch.float64 if sample.dtype == torch.float64 else torch.float32  # half precision: float32 math
        x = sample[:n].to(work)
        x0 = ev.to_x0(out.to(work), x)
        spelled = self.hooks.intervene(x0, run.groups, x_t=x, t=ev.t, alpha=ev.alpha, sigma=ev.sigma)
        run.log(ev, x, x0, spelled)
        if spelled.x0 is not x0:  # nothing changed (SPELL at radius 0): the original output goes on, bit for bit
            model_output = self._corrected(model_output, out, ev, x, spelled, n, learned)
        result = self.inner.step(model_output, timestep, sample, *args, **kwargs)
        run.final = (result[0] if isinstance(result, tuple) else result.prev_sample)[:n]
        return result

    def _corrected(self, model_output, out, ev, x, spelled, n, learned):
        """The model output that encodes x0_hat' (x_t fixed); samples without an active shield keep theirs exactly."""
        moved = (sum(spelled.active.values(), torch.zeros_like(spelled.nearest, dtype=torch.long)) > 0) | (
            spelled.delta.flatten(1) != 0).any(1)  # shields active, or an intervention without shields moved it
        new = ev.from_x0(spelled.x0, x).to(out.dtype)
        out = torch.where(moved.reshape(-1, *[1] * (out.ndim - 1)), new, out)
        out = torch.cat([out] * (model_output.shape[0] // n))  # a CFG-duplicated batch gets the same halves again
        if learned:
            out = torch.cat([out, model_output[:, out.shape[1]:]], dim=1)  # the variance channels stay as they are
        return out

    def _start(self, model_output, sample) -> "_Run":
        """First step of a run: find the batch layout, check the references' shape, allocate the records."""
        B = sample.shape[0]
        # DiT with guidance steps the batch twice, [x, x] with the same guided output: SPELL sees each sample once
        if self._groups is not None:
            n = self._groups.shape[0]
            if B not in (n, 2 * n) or (B == 2 * n and not _halves_equal(sample, model_output)):
                raise ValueError(f"set_groups got {n} group ids but the scheduler steps {B} distinct samples: give "
                                 "one id per sample of the batch.")
        else:
            n = B // 2 if _halves_equal(sample, model_output) else B
        groups = (self._groups if self._groups is not None else torch.zeros(n, dtype=torch.long)).to(sample.device)
        self.hooks.validate(sample[:n])  # reference set in the wrong (latent) shape: a clear error, at once
        if getattr(self.inner, "timesteps", None) is None:
            raise RuntimeError("call set_timesteps before step, as pipelines do.")
        evaluations = len(self.inner.timesteps)
        self._run = _Run(B, n, groups, Recorder(n, evaluations, sample.device), evaluations)
        return self._run


def _halves_equal(sample: torch.Tensor, model_output: torch.Tensor) -> bool:
    half = sample.shape[0] // 2
    if sample.shape[0] == 0 or sample.shape[0] % 2:
        return False
    return torch.equal(sample[:half], sample[half:]) and torch.equal(model_output[:half], model_output[half:])


def _rebuild(inner, hooks, family, prediction, groups) -> SpellScheduler:
    new = object.__new__(SpellScheduler)
    for name, value in dict(inner=inner, hooks=hooks, family=family, prediction=prediction, _groups=groups).items():
        object.__setattr__(new, name, value)
    object.__setattr__(new, "_run", None)
    return new


class _Run:
    """State of one pipeline run: batch layout, group ids, the recorder and the last sample."""

    def __init__(self, batch: int, samples: int, groups: torch.Tensor, recorder: Recorder, evaluations: int):
        self.batch, self.samples, self.groups = batch, samples, groups
        self.recorder, self.evaluations, self.final = recorder, evaluations, None

    def check(self, sample: torch.Tensor) -> None:
        if sample.shape[0] != self.batch:
            raise ValueError(f"the batch changed from {self.batch} to {sample.shape[0]} samples within a run; "
                             "call set_timesteps before each run.")

    def log(self, ev: Evaluation, x, x0, spelled) -> None:
        if len(self.recorder.t) >= self.evaluations:
            raise RuntimeError(f"step was called more than the scheduler's {self.evaluations} timesteps; "
                               "call set_timesteps before each run.")
        self.recorder.log(ev.t, ev.alpha, ev.sigma, x, x0, spelled)
