"""SPELL in real diffusers schedulers and pipelines: the Gaussian-mixture oracle behind DDIM, DDPM, Euler, Heun and
FlowMatchEuler (exactness, agreement with the project's samplers), tiny random-weight pipelines (SD3, SD, DiT, DDPM
UNet: activity, radius-0 identity), other schedulers, half precision, bad input and offline loading. No downloads."""

import inspect
import os
import pickle
import subprocess
import sys
import time
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from spell_lab import schema

diffusers = pytest.importorskip("diffusers")
from diffusers import (  # noqa: E402
    AutoencoderKL,
    DDIMScheduler,
    DDPMPipeline,
    DDPMScheduler,
    DEISMultistepScheduler,
    DiTPipeline,
    DiTTransformer2DModel,
    DPMSolverMultistepScheduler,
    DPMSolverSinglestepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    FlowMatchHeunDiscreteScheduler,
    HeunDiscreteScheduler,
    KDPM2DiscreteScheduler,
    LMSDiscreteScheduler,
    PNDMScheduler,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
    StableDiffusionPipeline,
    UNet2DConditionModel,
    UNet2DModel,
    UniPCMultistepScheduler,
)

from spell_lab.diffusers import ModelNotAvailable, SpellScheduler, generate_pipeline, load_pipeline  # noqa: E402
from spell_lab.models.gmm import GaussianMixture  # noqa: E402
from spell_lab.parameterisation import from_x0  # noqa: E402
from spell_lab.repellency import Memory  # noqa: E402
from spell_lab.samplers import generate, sample_generators, stacked_normal  # noqa: E402

from conftest import inside  # noqa: E402

FLOATS = ("correction_norm", "score_norm", "relative_magnitude", "nearest_distance")
COUNTS = ("active_shields", "active_batch", "active_memory", "active_protected")


# --- the Gaussian-mixture oracle behind a diffusers scheduler ---------------------------------------------------


@dataclass(frozen=True)
class Grid:
    """A project schedule whose t is the noise level itself: vp (alpha = sqrt(1 - t^2), sigma = t), edm (1, t) or
    flow (1 - t, t); `grid` returns given levels, so the project's samplers visit exactly a scheduler's levels."""

    kind: str
    ts: tuple = ()

    def alpha_sigma(self, t):
        t = torch.as_tensor(t, dtype=torch.float64)
        if self.kind == "vp":
            return torch.sqrt(1 - t**2), t
        return (torch.ones_like(t), t) if self.kind == "edm" else (1 - t, t)

    def grid(self, steps):
        return torch.tensor(self.ts, dtype=torch.float64)


def mixture(kind="vp", ts=()):
    """Condition 0 has 3 well separated modes (the shields); condition 1 lives elsewhere."""
    return GaussianMixture(num_classes=2, components=3, shape=(4, 4), spread=3.0, std=0.15, seed=3,
                           schedule=Grid(kind, ts))


KARRAS = (EulerDiscreteScheduler, EulerAncestralDiscreteScheduler, HeunDiscreteScheduler, LMSDiscreteScheduler)
FLOW = (FlowMatchEulerDiscreteScheduler, FlowMatchHeunDiscreteScheduler)


class Oracle:
    """A fake network: the mixture's exact x0_hat, returned in the scheduler's parameterisation. It reads the noise
    level from the timestep alone (as a trained network would), never from the scheduler's internal state."""

    def __init__(self, scheduler):
        self.scheduler = scheduler
        self.flow, self.karras = isinstance(scheduler, FLOW), isinstance(scheduler, KARRAS)
        self.gmm = mixture("flow" if self.flow else "vp")
        self.calls = 0

    def __call__(self, x, timestep, cond):
        self.calls += 1
        t, config = float(timestep), self.scheduler.config
        if self.flow:
            s = t / config.num_train_timesteps
            return from_x0(self.gmm(x, torch.tensor(s, dtype=torch.float64), cond), x, 1 - s, s, "flow")
        abar = self.scheduler.alphas_cumprod.double()
        if self.karras:  # the model sees x / sqrt(1 + s^2): its VP alpha and sigma
            s_ve = float(np.interp(t, np.arange(len(abar)), ((1 - abar) / abar).sqrt().numpy()))
            a, s = (1 + s_ve**2) ** -0.5, s_ve * (1 + s_ve**2) ** -0.5
        else:
            a, s = float(abar[int(t)].sqrt()), float((1 - abar[int(t)]).sqrt())
        kind = config.get("prediction_type", "epsilon")
        out = from_x0(self.gmm(x, torch.tensor(s, dtype=torch.float64), cond), x, a, s, kind)
        if config.get("variance_type") in ("learned", "learned_range"):  # a variance head rides along in channels
            out = torch.cat([out, torch.zeros_like(out)], dim=1)
        return out


def sample_loop(scheduler, model, x, cond, steps, generators=None):
    """What a pipeline does: set_timesteps, scale_model_input, model, step (with the generators if step takes one)."""
    scheduler.set_timesteps(steps)
    takes_generator = "generator" in inspect.signature(scheduler.step).parameters
    scale = getattr(scheduler, "scale_model_input", lambda x, t: x)  # flow matching has none
    for t in scheduler.timesteps:
        out = model(scale(x, t), t, cond)
        kwargs = {"generator": generators} if takes_generator and generators is not None else {}
        x = scheduler.step(out, t, x, **kwargs).prev_sample
    return x


def first_level(scheduler, steps):
    """sigma at the first timestep in the scheduler's sample space (x_T = sigma_T * noise, as the project starts):
    the VE sigma for Karras schedulers, the flow sigma (1) for flow matching, the VP sigma for the others."""
    scheduler.set_timesteps(steps)
    if isinstance(scheduler, KARRAS + FLOW):
        return float(scheduler.sigmas[0])
    return float((1 - scheduler.alphas_cumprod[int(scheduler.timesteps[0])]).sqrt())


def oracle_run(make, steps, seeds, cond, dtype=torch.float32, **spell):
    """Run the oracle through `SpellScheduler(make(), **spell)`; returns (final x, wrapped scheduler, x_T)."""
    inner = make()
    sched = SpellScheduler(inner, **spell)
    sched.set_groups(cond)
    gens = sample_generators(seeds, "cpu")
    noise_dtype = torch.float64 if dtype == torch.float64 else torch.float32  # as `generate` draws it
    x_T = first_level(inner, steps) * stacked_normal(gens, (4, 4), "cpu", noise_dtype)
    model = Oracle(inner)
    net = (lambda x, t, c: model(x.float(), t, c).to(dtype)) if dtype in (torch.float16, torch.bfloat16) else model
    x = sample_loop(sched, net, x_T.to(dtype), cond, steps, gens)
    return x, sched, x_T


def noise_levels(scheduler) -> tuple:
    """The sigmas a scheduler visits (float64, each once) and a final 0: the grid for the project's samplers."""
    if isinstance(scheduler, (DDIMScheduler, DDPMScheduler)):
        abar = scheduler.alphas_cumprod.double()[scheduler.timesteps]
        return tuple((1 - abar).sqrt().tolist()) + (0.0,)  # t = sigma: alpha = sqrt(1 - t^2) stays accurate
    return tuple(torch.unique_consecutive(scheduler.sigmas.double()).tolist())  # Heun repeats levels; ends at 0


EXACT = {  # name -> (scheduler factory, the project's sampler on the same levels (None: none), its schedule kind)
    "ddim-epsilon": (lambda: DDIMScheduler(clip_sample=False), "ddim", "vp"),
    "ddim-v": (lambda: DDIMScheduler(clip_sample=False, prediction_type="v_prediction"), "ddim", "vp"),
    "ddim-sample": (lambda: DDIMScheduler(clip_sample=False, prediction_type="sample"), "ddim", "vp"),
    "ddpm-epsilon": (lambda: DDPMScheduler(clip_sample=False), "ddpm", "vp"),
    "ddpm-v": (lambda: DDPMScheduler(clip_sample=False, prediction_type="v_prediction"), "ddpm", "vp"),
    "ddpm-learned-variance": (lambda: DDPMScheduler(clip_sample=False, variance_type="learned_range"), None, "vp"),
    "euler-epsilon": (lambda: EulerDiscreteScheduler(), "euler", "edm"),
    "euler-v": (lambda: EulerDiscreteScheduler(prediction_type="v_prediction"), "euler", "edm"),
    "heun": (lambda: HeunDiscreteScheduler(), "heun", "edm"),
    "flow-match-euler": (lambda: FlowMatchEulerDiscreteScheduler(), "flow_euler", "flow"),
}
SEEDS = list(range(32))
COND = torch.tensor([0] * 24 + [1] * 8)
STEPS = 20
RADIUS = 1.0


@pytest.mark.parametrize("name", sorted(EXACT))
def test_exactness_through_real_schedulers(name):
    """Shields on the modes of condition 0: the baseline lands inside, SPELL never does (disjoint shields, lambda 1)."""
    make, _, _ = EXACT[name]
    shields = mixture().modes(0)
    assert torch.pdist(shields.flatten(1)).min() > 2 * RADIUS  # disjoint shields
    base, _, _ = oracle_run(make, STEPS, SEEDS, COND, radius=0.0, intra_batch=False, protected=shields)
    spelled, sched, _ = oracle_run(make, STEPS, SEEDS, COND, radius=RADIUS, intra_batch=False, protected=shields)
    assert inside(base[:24], shields, RADIUS).float().mean() > 0.5
    assert not inside(spelled, shields, RADIUS).any()
    r = sched.record_tensors()
    assert (r["active_protected"] > 0).any() and (r["active_batch"] == 0).all()


SAME_IN_PROJECT = [name for name in sorted(EXACT) if EXACT[name][1] is not None]
AGREEMENT = [(name, sources) for sources in ("memory+protected", "intra-batch") for name in SAME_IN_PROJECT]
# flow matching starts at sigma = 1, where the oracle's x0_hat is the same for every sample: intra-batch distances are
# 0 in the project and rounding noise (~1e-16) after diffusers' v round trip; both are one point (`repellency.pushes`)


@pytest.mark.parametrize("name, sources", AGREEMENT)
def test_records_agree_with_the_project_sampler(name, sources):
    """The same problem (oracle, noise levels, noise, references, groups) through diffusers and through `generate`,
    in float64. Without intra-batch shields the two agree to float rounding. Intra-batch repulsion of close pairs
    amplifies the schedulers' float32 coefficients (~1e-7) along the trajectory, so there the counts must agree
    exactly and the values to 1e-2."""
    make, sampler, kind = EXACT[name]
    if sources == "intra-batch":
        spell, rtol, atol = dict(radius=RADIUS, intra_batch=True), 1e-2, 1e-2
    else:
        memory = Memory(mixture().modes(0)[:1], torch.zeros(1, dtype=torch.long))
        spell, rtol, atol = dict(radius=RADIUS, overcomp=1.3, intra_batch=False, memory=memory,
                                 protected=mixture().modes(0)[1:]), 1e-4, 1e-5
    x, sched, _ = oracle_run(make, STEPS, SEEDS, COND, dtype=torch.float64, **spell)
    ours = sched.record_tensors()
    levels = noise_levels(sched.inner)
    project = generate(mixture(kind, levels), COND, SEEDS, sampler=sampler, steps=len(levels) - 1,
                       spell=SpellScheduler(make(), **spell).spell, dtype=torch.float64)
    theirs = project.records
    assert ours["correction_norm"].shape == theirs["correction_norm"].shape
    for c in ("alpha", "sigma"):
        assert torch.allclose(ours[c].double(), theirs[c].double(), rtol=1e-6, atol=1e-7), c
    for f in COUNTS:
        assert torch.equal(ours[f], theirs[f]), f
    for f in FLOATS:
        assert torch.allclose(ours[f], theirs[f], rtol=rtol, atol=atol), f
    assert torch.allclose(x, project.x0, atol=atol)
    if sources == "intra-batch":
        assert (ours["active_batch"] > 0).any()
    else:
        assert (ours["active_memory"][:24] > 0).any() and (ours["active_protected"] > 0).any()
        assert (ours["active_memory"][24:] == 0).all()  # memory shields its own group (condition 0) only


OTHERS = {  # schedulers that must run and record: (factory, evaluations for `steps`, whether the guarantee holds)
    "dpm-solver++": (lambda: DPMSolverMultistepScheduler(algorithm_type="dpmsolver++"), lambda n: n, True),
    "dpm-solver++-karras": (lambda: DPMSolverMultistepScheduler(use_karras_sigmas=True), lambda n: n, True),
    "dpm-solver-singlestep": (lambda: DPMSolverSinglestepScheduler(), lambda n: n, True),
    "unipc": (lambda: UniPCMultistepScheduler(), lambda n: n, True),
    "euler-ancestral": (lambda: EulerAncestralDiscreteScheduler(), lambda n: n, True),
    "heun": (lambda: HeunDiscreteScheduler(), lambda n: 2 * n - 1, True),
    "lms": (lambda: LMSDiscreteScheduler(), lambda n: n, True),
    # PNDM (SD 1.x's default) ends at abar_0 < 1 and mixes earlier outputs into its last step: no guarantee
    "pndm": (lambda: PNDMScheduler(skip_prk_steps=True), lambda n: n + 1, False),
    "deis": (lambda: DEISMultistepScheduler(), lambda n: n, True),
    "flow-match-heun": (lambda: FlowMatchHeunDiscreteScheduler(), lambda n: 2 * n - 1, True),
}


@pytest.mark.parametrize("name", sorted(OTHERS))
def test_other_schedulers_run_and_record(name):
    """Multistep, ancestral and second-order schedulers: SPELL runs, records every evaluation, and where the last
    step returns x0_hat' (final sigma 0, first order) no output lands inside a disjoint shield."""
    make, evaluations, guarantee = OTHERS[name]
    shields = mixture().modes(0)
    base, _, _ = oracle_run(make, 12, SEEDS, COND, radius=0.0, intra_batch=False, protected=shields)
    x, sched, _ = oracle_run(make, 12, SEEDS, COND, radius=RADIUS, intra_batch=False, protected=shields)
    r = sched.records()
    assert dict(r.sizes) == {"sample": 32, "step": evaluations(12)}
    assert torch.isfinite(x).all() and np.isfinite(r["score_norm"].values).all()
    assert (r["active_protected"] > 0).any()
    expected = (r.alpha / r.sigma**2 * r.correction_norm / r.score_norm).transpose("sample", "step")
    np.testing.assert_allclose(r.relative_magnitude, expected, rtol=1e-4, atol=1e-7)
    assert (r.t.diff("step") <= 0).all()  # time runs from noise to data
    assert inside(base[:24], shields, RADIUS).float().mean() > 0.5
    if guarantee:
        assert not inside(x, shields, RADIUS).any()


def test_one_record_per_denoiser_evaluation():
    for name, (make, evaluations, _) in OTHERS.items():
        inner = make()
        sched, model = SpellScheduler(inner, radius=RADIUS), Oracle(inner)
        gens = sample_generators(range(4), "cpu")
        sample_loop(sched, model, first_level(inner, 6) * stacked_normal(gens, (4, 4), "cpu"), COND[:4], 6, gens)
        assert sched.records().sizes["step"] == model.calls == evaluations(6), name


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", ["ddim-epsilon", "euler-epsilon", "flow-match-euler"])
def test_half_precision_samples(name, dtype):
    make, _, _ = EXACT[name]
    shields = mixture().modes(0)
    x, sched, _ = oracle_run(make, STEPS, SEEDS, COND, dtype=dtype, radius=RADIUS, intra_batch=False, protected=shields)
    r = sched.record_tensors()
    assert x.dtype == dtype and r["correction_norm"].dtype == torch.float32
    assert torch.isfinite(r["score_norm"]).all() and (r["active_protected"] > 0).any()
    assert not inside(x.float(), shields, RADIUS, rtol=3e-2).any()  # the guarantee up to half-precision rounding


# --- the wrapper behaves like the scheduler ------------------------------------------------------------------


def test_wrapper_looks_like_the_scheduler():
    inner = FlowMatchEulerDiscreteScheduler(shift=3.0)
    sched = SpellScheduler(inner, radius=2.0)
    assert isinstance(sched, FlowMatchEulerDiscreteScheduler) and sched.config.shift == 3.0
    assert {"sigmas", "mu"} <= set(inspect.signature(sched.set_timesteps).parameters)
    assert {"generator", "return_dict"} <= set(inspect.signature(sched.step).parameters)
    sched.set_timesteps(7)
    assert len(sched.timesteps) == 7 and sched.order == inner.order and torch.equal(sched.sigmas, inner.sigmas)
    sched.set_begin_index(0)
    assert inner.begin_index == 0  # attributes and methods reach the wrapped scheduler
    for copy in (pickle.loads(pickle.dumps(sched)), __import__("copy").deepcopy(sched)):
        assert type(copy) is SpellScheduler and copy.spell.radius == 2.0 and copy.inner is not inner


def test_records_dataset_has_the_store_names():
    x, sched, _ = oracle_run(EXACT["ddim-epsilon"][0], 8, SEEDS[:6], COND[:6], radius=RADIUS)
    r = sched.records()
    assert set(r.data_vars) == {f.name for f in schema.step_fields()}  # the store's per-step fields, no more
    assert set(FLOATS + COUNTS) <= set(r.data_vars)
    assert {"step", "t", "alpha", "sigma"} <= set(r.coords)
    assert all(r[v].dims == ("sample", "step") for v in r.data_vars)
    assert r.sizes == {"sample": 6, "step": 8} and r.attrs["scheduler"] == "DDIMScheduler"
    torch.testing.assert_close(sched.final_sample(), x)


# --- bad input --------------------------------------------------------------------------------------------------


def test_bad_input_gives_clear_errors():
    with pytest.raises(ValueError, match="prediction_type='foo'"):
        SpellScheduler(DDIMScheduler(prediction_type="foo"), radius=1.0)
    with pytest.raises(ValueError, match="does not know how KDPM2DiscreteScheduler"):
        SpellScheduler(KDPM2DiscreteScheduler(), radius=1.0)
    with pytest.raises(ValueError, match="radius must be"):
        SpellScheduler(DDIMScheduler(), radius=-1.0)
    with pytest.raises(ValueError, match="already a SpellScheduler"):
        SpellScheduler(SpellScheduler(DDIMScheduler(), radius=1.0), radius=1.0)
    wrong = torch.zeros(3, 4, 8)  # references in the wrong latent shape
    with pytest.raises(ValueError, match=r"reference shape \(4, 8\) does not match the sample shape \(4, 4\)"):
        oracle_run(EXACT["ddim-epsilon"][0], 4, SEEDS[:4], COND[:4], radius=1.0, protected=wrong)
    sched = SpellScheduler(EulerDiscreteScheduler(), radius=1.0)
    sched.set_timesteps(4)
    with pytest.raises(ValueError, match="s_churn"):
        sched.step(torch.zeros(2, 4), sched.timesteps[0], torch.zeros(2, 4), s_churn=1.0)
    sched.set_groups([0, 1, 2])
    with pytest.raises(ValueError, match="3 group ids but the scheduler steps 2 distinct samples"):
        sched.step(torch.zeros(2, 4), sched.timesteps[0], torch.zeros(2, 4))
    sched.set_groups([0])  # twice as many samples as ids is a CFG-duplicated batch only if the halves are equal
    with pytest.raises(ValueError, match="1 group ids but the scheduler steps 2 distinct samples"):
        sched.step(torch.zeros(2, 4), sched.timesteps[0], torch.arange(8.0).reshape(2, 4))
    with pytest.raises(RuntimeError, match="no run recorded"):
        SpellScheduler(DDIMScheduler(), radius=1.0).records()


# --- tiny pipelines with random weights -------------------------------------------------------------------------


def tiny_vae(**kwargs):
    blocks = dict(down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)
    return AutoencoderKL(block_out_channels=(8, 8), layers_per_block=1, latent_channels=4, norm_num_groups=2,
                         sample_size=16, **blocks, **kwargs)


def tiny_sd3():
    torch.manual_seed(0)
    tr = SD3Transformer2DModel(sample_size=8, patch_size=1, in_channels=4, num_layers=1, attention_head_dim=8,
                               num_attention_heads=2, joint_attention_dim=16, caption_projection_dim=16,
                               pooled_projection_dim=8, out_channels=4)
    none = dict(text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None, text_encoder_3=None,
                tokenizer_3=None)
    pipe = StableDiffusion3Pipeline(transformer=tr, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
                                    vae=tiny_vae(shift_factor=0.06, scaling_factor=1.5), **none)
    g = torch.Generator().manual_seed(1)
    emb, pooled = torch.randn(2, 5, 16, generator=g), torch.randn(2, 8, generator=g)
    prompts = dict(prompt_embeds=emb, pooled_prompt_embeds=pooled, negative_prompt_embeds=torch.zeros_like(emb),
                   negative_pooled_prompt_embeds=torch.zeros_like(pooled))
    return evaluating(pipe), prompts


def tiny_sd(scheduler):
    torch.manual_seed(0)
    unet = UNet2DConditionModel(block_out_channels=(8, 16), layers_per_block=1, sample_size=8, in_channels=4,
                                out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=16,
                                norm_num_groups=4, attention_head_dim=4)
    pipe = StableDiffusionPipeline(vae=tiny_vae(), text_encoder=None, tokenizer=None, unet=unet, scheduler=scheduler,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    emb = torch.randn(2, 5, 16, generator=torch.Generator().manual_seed(1))
    return evaluating(pipe), dict(prompt_embeds=emb, negative_prompt_embeds=torch.zeros_like(emb))


def tiny_dit():
    torch.manual_seed(0)
    dit = DiTTransformer2DModel(sample_size=8, num_layers=1, patch_size=2, attention_head_dim=8, num_attention_heads=2,
                                in_channels=4, out_channels=8, activation_fn="gelu-approximate",
                                num_embeds_ada_norm=1000, norm_type="ada_norm_zero", norm_elementwise_affine=False)
    return evaluating(DiTPipeline(transformer=dit, vae=tiny_vae(), scheduler=DDIMScheduler()))


def tiny_ddpm():
    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(8, 16), layers_per_block=1,
                       down_block_types=("DownBlock2D",) * 2, up_block_types=("UpBlock2D",) * 2, norm_num_groups=4)
    return evaluating(DDPMPipeline(unet=unet, scheduler=DDIMScheduler()))


def evaluating(pipe):
    """Models built from configs start in training mode (DiT would drop class labels at random): evaluate."""
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            component.eval()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def pipeline_case(name):
    """(pipe, conditions, extra pipeline kwargs, guidance) for 4 samples, two conditions of two samples each."""
    if name == "sd3":
        pipe, prompts = tiny_sd3()
        return pipe, None, {k: v.repeat_interleave(2, 0) for k, v in prompts.items()} | dict(height=16, width=16), 3.0
    if name == "sd":
        pipe, prompts = tiny_sd(EulerDiscreteScheduler())
        return pipe, None, {k: v.repeat_interleave(2, 0) for k, v in prompts.items()} | dict(height=16, width=16), 3.0
    if name == "dit":
        return tiny_dit(), [3, 3, 7, 7], {}, 4.0  # guidance > 1: DiT steps the duplicated batch [x, x]
    return tiny_ddpm(), None, {}, None


@pytest.mark.parametrize("name", ["sd3", "sd", "dit", "ddpm-unet"])
def test_pipelines_run_with_spell(name):
    pipe, conditions, extra, guidance = pipeline_case(name)
    seeds, groups = [5, 6, 7, 8], [0, 0, 1, 1]
    kw = dict(steps=6, guidance=guidance, groups=groups, **extra)
    base = generate_pipeline(pipe, conditions, seeds, **kw)
    # radius 0 through the wrapper == the unwrapped pipeline, bit for bit, with the same generators
    call = dict(num_inference_steps=6, generator=[torch.Generator().manual_seed(s) for s in seeds], output_type="np")
    call |= {"class_labels": conditions} if conditions else ({"batch_size": 4} if name == "ddpm-unet" else {})
    plain = pipe(**call, **({"guidance_scale": guidance} if guidance else {}), **extra).images
    assert np.array_equal(base.images, np.round(np.clip(plain, 0, 1) * 255).astype(np.uint8))
    assert base.images.dtype == np.uint8 and base.images.shape[0] == 4 and base.x0.shape[0] == 4
    # a radius near the median pairwise distance of the final outputs within a condition: SPELL acts, in groups
    radius = 1.1 * float(torch.stack([torch.dist(base.x0[0], base.x0[1]), torch.dist(base.x0[2], base.x0[3])]).median())
    gen = generate_pipeline(pipe, conditions, seeds, spell_kwargs=dict(radius=radius), **kw)
    r = gen.records
    assert r["correction_norm"].shape == (4, len(r["t"])) and (r["active_batch"] > 0).any()
    assert (r["active_batch"] <= 1).all()  # each sample has exactly one partner in its group
    assert not torch.equal(gen.x0, base.x0)
    assert type(pipe.scheduler) is not SpellScheduler  # the pipeline's own scheduler is back


def test_dit_duplicated_batch_is_found_without_groups():
    pipe = tiny_dit()
    pipe.scheduler = SpellScheduler(pipe.scheduler, radius=30.0)
    gens = [torch.Generator().manual_seed(s) for s in range(3)]
    pipe(class_labels=[3, 3, 7], num_inference_steps=3, generator=gens, guidance_scale=4.0, output_type="np")
    r = pipe.scheduler.records()
    assert r.sizes["sample"] == 3 and pipe.scheduler.final_sample().shape[0] == 3
    assert (r.active_batch > 0).any() and (r.active_batch <= 2).all()  # each sample sees the 2 others, not a twin


def test_sd_with_pndm_and_memory_in_bfloat16():
    pipe, prompts = tiny_sd(PNDMScheduler(skip_prk_steps=True))
    pipe = pipe.to(dtype=torch.bfloat16)
    extra = {k: v.to(torch.bfloat16) for k, v in prompts.items()} | dict(height=16, width=16)
    first = generate_pipeline(pipe, None, [0, 1], steps=5, guidance=2.0, **extra)
    memory = Memory(first.x0, torch.zeros(2, dtype=torch.long))
    radius = 2 * float(torch.pdist(first.x0.flatten(1)).max()) + 1.0
    gen = generate_pipeline(pipe, None, [2, 3], steps=5, guidance=2.0, memory=memory,
                            spell_kwargs=dict(radius=radius, intra_batch=False), **extra)
    r = gen.records
    assert gen.x0.dtype == torch.float32 and torch.isfinite(r["score_norm"]).all()
    assert (r["active_memory"] > 0).any() and (r["active_memory"] <= 2).all() and (r["active_batch"] == 0).all()
    alone = generate_pipeline(pipe, None, [2, 3], steps=5, guidance=2.0, **extra)
    assert not torch.equal(gen.x0, alone.x0) and torch.isfinite(gen.x0).all()


def test_wrong_latent_shape_in_a_pipeline_fails_at_the_first_step():
    pipe, prompts = tiny_sd3()
    with pytest.raises(ValueError, match=r"reference shape \(4, 16, 16\) does not match the sample shape \(4, 8, 8\)"):
        generate_pipeline(pipe, None, [0, 1], steps=3, guidance=2.0, height=16, width=16,
                          spell_kwargs=dict(radius=1.0, protected=torch.zeros(5, 4, 16, 16)), **prompts)
    assert type(pipe.scheduler) is FlowMatchEulerDiscreteScheduler  # the pipeline's own scheduler is back


# --- loading strictly offline ---------------------------------------------------------------------------------


def test_missing_model_fails_at_once_naming_it(tmp_path):
    start = time.perf_counter()
    with pytest.raises(ModelNotAvailable, match="'nobody/no-such-pipeline' is not in the Hugging Face cache"):
        load_pipeline("nobody/no-such-pipeline", cache_dir=tmp_path)
    with pytest.raises(ModelNotAvailable, match="does not exist"):
        load_pipeline(str(tmp_path / "missing" / "dir"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotAvailable, match="not a diffusers pipeline"):
        load_pipeline(str(tmp_path / "empty"))
    assert time.perf_counter() - start < 5


def test_missing_model_in_a_fresh_process_without_hf_hub_offline(tmp_path):
    """The user's environment may not set HF_HUB_OFFLINE: still no network, no hang, a clear message."""
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"} | {"HF_HOME": str(tmp_path)}
    code = "from spell_lab.diffusers import load_pipeline; load_pipeline('nobody/no-such-pipeline')"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "ModelNotAvailable: model 'nobody/no-such-pipeline'" in done.stderr


def test_local_pipeline_directory_loads(tmp_path):
    tiny_ddpm().save_pretrained(tmp_path / "pipe")
    pipe = load_pipeline(str(tmp_path / "pipe"))
    assert isinstance(pipe, DDPMPipeline) and pipe.unet.dtype == torch.float32 and pipe.device.type == "cpu"
