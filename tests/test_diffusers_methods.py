"""The baselines through diffusers pipelines, on tiny pipelines with random weights (no downloads): interval guidance
(a per-step guidance_scale through the step-end callback), particle guidance (the scheduler wrapper, which sees x_t)
and CADS (the prompt embeddings through the callback); each the plain pipeline bit for bit at its neutral point."""

from functools import partial

import pytest
import torch

pytest.importorskip("diffusers")
from diffusers import EulerDiscreteScheduler, HeunDiscreteScheduler, PNDMScheduler  # noqa: E402
from conftest import same_outputs  # noqa: E402
from test_diffusers import tiny_dit, tiny_sd, tiny_sd3  # noqa: E402

from spell_lab.diffusers import MethodCallback, SpellScheduler, generate_pipeline  # noqa: E402
from spell_lab.methods import Hooks, cads_gamma, resolve  # noqa: E402

SEEDS = [5, 6, 7, 8]
STEPS = 6


def sd_case():
    pipe, prompts = tiny_sd(EulerDiscreteScheduler())
    kw = {k: v.repeat_interleave(2, 0) for k, v in prompts.items()} | dict(height=16, width=16)
    return pipe, kw


def sd3_case():
    pipe, prompts = tiny_sd3()
    return pipe, {k: v.repeat_interleave(2, 0) for k, v in prompts.items()} | dict(height=16, width=16)


def run(pipe, kw, method=None, guidance=3.0, seeds=SEEDS, groups=None):
    groups = [0] * len(seeds) if groups is None else groups
    return generate_pipeline(pipe, None, seeds, steps=STEPS, guidance=guidance, method=method, groups=groups, **kw)


# bit for bit: latents, images and every record but nearest_distance, which only the SPELL runs measure
same = partial(same_outputs, skip=("nearest_distance",))


@pytest.mark.parametrize("case", [sd_case, sd3_case])
def test_interval_covering_every_step_is_the_plain_pipeline_and_an_empty_one_is_guidance_1(case):
    pipe, kw = case()
    plain = run(pipe, kw)
    assert same(run(pipe, kw, resolve("interval")), plain)
    assert same(run(pipe, kw, resolve({"name": "cfg"})), plain)
    assert same(run(pipe, kw, resolve({"name": "cfg", "weight": 3.0}), guidance=1.0), plain)
    empty = resolve({"name": "interval", "sigma_lo": 0.0, "sigma_hi": 0.0})
    assert same(run(pipe, kw, empty), run(pipe, kw, guidance=1.0))


def test_interval_guidance_switches_cfg_off_outside_and_on_inside():
    pipe, kw = sd_case()
    middle = resolve({"name": "interval", "sigma_lo": 0.5, "sigma_hi": 5.0})
    weights = MethodCallback(pipe, middle, steps=STEPS, guidance=3.0, seeds=SEEDS, pipeline_kwargs=kw).weights
    assert weights[0] == weights[-1] == 1.0 and 3.0 in weights  # off, on, off: both switches happen
    first_on = weights.index(3.0)
    out, g1, g3 = run(pipe, kw, middle), run(pipe, kw, guidance=1.0), run(pipe, kw, guidance=3.0)
    score = lambda g: g.records["score_norm"]  # noqa: E731  (depends on each evaluation's guided x0_hat)
    assert torch.equal(score(out)[:, :first_on], score(g1)[:, :first_on])  # w = 1 before the interval, bit for bit
    assert not torch.equal(score(out)[:, first_on], score(g1)[:, first_on])  # guided inside it
    assert not torch.equal(out.x0, g1.x0) and not torch.equal(out.x0, g3.x0)
    without_negatives = {k: v for k, v in kw.items() if k != "negative_prompt_embeds"}
    with pytest.raises(ValueError, match="negative_prompt_embeds"):
        run(pipe, without_negatives, middle)


def test_interval_guidance_in_a_heun_pipeline_is_decided_once_per_step():
    """HeunDiscreteScheduler evaluates step j at sigma_j and (its corrector) at sigma_{j+1}: 2N - 1 timesteps. As in
    the authors' EDM sampler the step's starting sigma decides for both; re-derived here from the scheduler's sigmas."""
    pipe, kw = tiny_sd(HeunDiscreteScheduler())
    kw = {k: v.repeat_interleave(2, 0) for k, v in kw.items()} | dict(height=16, width=16)
    ref = HeunDiscreteScheduler.from_config(pipe.scheduler.config)
    ref.set_timesteps(STEPS)
    own, start = [], []  # each evaluation's sigma, and the sigma its step started at (diffusers' own state machine)
    for k, t in enumerate(ref.timesteps):
        own.append(float(ref.sigmas[k]))  # the sigma `step` k's model output was evaluated at
        if ref.state_in_first_order:  # a predictor: a new step starts here
            start.append(own[-1])
        else:
            start.append(start[-1])
        ref.step(torch.zeros(1, 1), t, torch.zeros(1, 1))
    levels = torch.unique_consecutive(ref.sigmas.double()).tolist()  # sigma_0 .. sigma_{N-1}, 0
    lo, hi = (levels[2] + levels[3]) / 2, (levels[0] + levels[1]) / 2  # edges inside steps 0 and 2
    middle = resolve({"name": "interval", "sigma_lo": lo, "sigma_hi": hi})
    weights = MethodCallback(pipe, middle, steps=STEPS, guidance=3.0, seeds=SEEDS, pipeline_kwargs=kw).weights
    per_step = [3.0 if lo < s <= hi else 1.0 for s in start]
    per_evaluation = [3.0 if lo < s <= hi else 1.0 for s in own]
    assert weights == per_step and per_step != per_evaluation
    out, g1 = run(pipe, kw, middle), run(pipe, kw, guidance=1.0)
    first_on = weights.index(3.0)  # step 1's predictor: step 0's corrector (at sigma_1, inside) stays unguided
    assert first_on == 2 and per_evaluation.index(3.0) == 1
    score = lambda g: g.records["score_norm"]  # noqa: E731
    assert torch.equal(score(out)[:, :first_on], score(g1)[:, :first_on])
    assert not torch.equal(score(out)[:, first_on], score(g1)[:, first_on])


def test_interval_guidance_with_pndm_keeps_its_first_steps_pair_together():
    """SD 1.x's default PNDM (PLMS) averages its first two evaluations into step 0 (the second, at t_1, is its
    corrector; `counter` 1 in diffusers' state), then one evaluation per step: N + 1 in all."""
    pipe, kw = tiny_sd(PNDMScheduler(skip_prk_steps=True))
    kw = {k: v.repeat_interleave(2, 0) for k, v in kw.items()} | dict(height=16, width=16)
    ref = PNDMScheduler.from_config(pipe.scheduler.config)
    ref.set_timesteps(STEPS)
    abar = ref.alphas_cumprod.double()
    level = lambda t: float(((1 - abar[int(t)]) / abar[int(t)]).sqrt())  # noqa: E731  (sigma / alpha)
    own, start = [], []
    for t in ref.timesteps:
        own.append(level(t))
        start.append(start[-1] if ref.counter == 1 else own[-1])  # counter 1: step 0's corrector
        ref.step(torch.zeros(1, 1), t, torch.zeros(1, 1))
    assert len(own) == STEPS + 1
    hi = (own[0] + own[1]) / 2  # inside step 0: its corrector is below sigma_hi, its start above
    middle = resolve({"name": "interval", "sigma_hi": hi})
    weights = MethodCallback(pipe, middle, steps=STEPS, guidance=3.0, seeds=SEEDS, pipeline_kwargs=kw).weights
    assert weights == [3.0 if s <= hi else 1.0 for s in start] and weights[:3] == [1.0, 1.0, 3.0]
    assert same(run(pipe, kw, resolve("interval")), run(pipe, kw))
    out, g1 = run(pipe, kw, middle), run(pipe, kw, guidance=1.0)
    assert torch.equal(out.records["score_norm"][:, :2], g1.records["score_norm"][:, :2])
    assert not torch.equal(out.x0, g1.x0)


@pytest.mark.parametrize("case, scheduler", [(sd3_case, None), (sd_case, HeunDiscreteScheduler)])
def test_condition_transforms_see_the_sampling_progress_once_per_step(case, scheduler):
    """CADS reads t = 1 - step / steps (v0xie/sd-webui-cads), not the shifted flow sigma or timestep / 1000."""
    pipe, kw = case()
    if scheduler is not None:
        pipe.scheduler = scheduler.from_config(pipe.scheduler.config)
    seen = []

    def spy(y, progress, noise):
        seen.append(progress)
        return y

    plain = run(pipe, kw)
    out = run(pipe, kw, Hooks({"name": "spy"}, condition=spy))
    assert same(out, plain)
    expected = [1 - j / STEPS for j in range(STEPS)]
    tensors = 2 if case is sd3_case else 1  # SD3 anneals prompt_embeds and pooled_prompt_embeds
    assert seen == pytest.approx([p for p in expected for _ in range(tensors)], abs=1e-15)  # once per step
    if case is sd3_case:
        t = out.records["t"].tolist()  # the flow sigma, shifted (shift 3)
        assert sum(abs(cads_gamma(a, 0.6, 0.9) - cads_gamma(b, 0.6, 0.9)) > 0.1 for a, b in zip(t, expected)) >= 2


def test_cads_noise_uncond_anneals_the_negative_embeddings_too():
    pipe, kw = sd_case()
    g = torch.Generator().manual_seed(1)
    kw["negative_prompt_embeds"] = torch.randn(kw["negative_prompt_embeds"].shape, generator=g)
    base = {"name": "cads", "noise_scale": 1.0}  # (zero negatives would stay zero: rescaled to their std, 0)
    plain, cads = run(pipe, kw), run(pipe, kw, resolve(base))
    assert same(run(pipe, kw, resolve({**base, "tau1": 1.0, "tau2": 1.0, "noise_uncond": True})), plain)
    both = run(pipe, kw, resolve({**base, "noise_uncond": True}))
    assert not torch.equal(both.x0, cads.x0)
    # without guidance there is no unconditional branch, and the conditional one draws from its own stream
    assert torch.equal(run(pipe, kw, resolve({**base, "noise_uncond": True}), guidance=1.0).x0,
                       run(pipe, kw, resolve(base), guidance=1.0).x0)
    with pytest.raises(ValueError, match="negative_prompt_embeds"):
        run(pipe, {k: v for k, v in kw.items() if k != "negative_prompt_embeds"},
            resolve({**base, "noise_uncond": True}))


@pytest.mark.parametrize("case", [sd_case, sd3_case])
def test_pg_through_the_scheduler_wrapper(case):
    pipe, kw = case()
    plain = run(pipe, kw)
    assert same(run(pipe, kw, resolve("pg")), plain)
    out = run(pipe, kw, resolve({"name": "pg", "strength": 0.5}))
    assert not torch.equal(out.x0, plain.x0) and torch.isfinite(out.x0).all()
    level = out.records["sigma"] / out.records["alpha"]
    expected = (level >= 1) & level.isfinite()  # flow matching's first step (alpha = 0): x0_hat plays no part
    assert torch.equal(out.records["correction_norm"] > 0, expected[None, :].expand(4, -1)) and expected.any()
    pairs = run(pipe, kw, resolve({"name": "pg", "strength": 0.5}), groups=[0, 0, 1, 1])
    assert same(pairs, plain)  # groups of two: no term (log 1 = 0)


@pytest.mark.parametrize("case", [sd_case, sd3_case])
def test_cads_through_the_prompt_embeddings(case):
    pipe, kw = case()
    plain = run(pipe, kw)
    assert same(run(pipe, kw, resolve({"name": "cads", "tau1": 1.0, "tau2": 1.0})), plain)
    cads = resolve({"name": "cads", "noise_scale": 1.0})
    out = run(pipe, kw, cads)
    assert (out.x0 - plain.x0).flatten(1).norm(dim=1).min() > 0  # every sample moved
    # a sample's output depends on its seed alone, not on its batch
    part = run(pipe, {k: v[[2, 0]] if torch.is_tensor(v) else v for k, v in kw.items()}, cads, seeds=[7, 5])
    torch.testing.assert_close(part.x0, out.x0[[2, 0]], rtol=0, atol=1e-5)
    # CFG off (guidance 1): the conditional branch alone, still annealed
    assert not torch.equal(run(pipe, kw, cads, guidance=1.0).x0, run(pipe, kw, guidance=1.0).x0)


def test_methods_a_pipeline_cannot_serve_are_refused():
    with pytest.raises(ValueError, match="takes no callback_on_step_end"):
        generate_pipeline(tiny_dit(), [3, 7], [0, 1], steps=2, guidance=4.0, method=resolve("interval"))
    pipe, kw = sd_case()
    no_embeds = {k: v for k, v in kw.items() if "prompt_embeds" not in k}
    with pytest.raises(ValueError, match="pass prompt_embeds="):
        generate_pipeline(pipe, None, [0, 1], steps=2, guidance=3.0, method=resolve("cads"), **no_embeds)
    with pytest.raises(ValueError, match="generate_pipeline"):
        SpellScheduler(EulerDiscreteScheduler(), method=resolve("interval"))
