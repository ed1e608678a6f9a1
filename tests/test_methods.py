"""The training-free baselines in the registry: each at its neutral point equals the plain sampler bit for bit."""

import math

import pytest
import torch

from conftest import same_outputs

from spell_lab.methods import cads_embedding, cads_gamma, method_params, particle_guidance, resolve
from spell_lab.plan import Setting
from spell_lab.run.launch import run_generation
from spell_lab.samplers import generate

COND = torch.tensor([0, 0, 1, 2])
DIGITS_COND = torch.tensor([3, 3, 3, 7, 7, 7])


@pytest.fixture(scope="module")
def digits():
    from spell_lab.models.digits import load_digits

    return load_digits()


def test_cfg_at_the_run_weight_is_the_plain_sampler(gmm):
    plain = generate(gmm, COND, range(4), steps=10, guidance=2.5)
    assert same_outputs(generate(gmm, COND, range(4), steps=10, guidance=2.5, method=resolve("cfg")), plain)
    fixed = generate(gmm, COND, range(4), steps=10, guidance=1.0, method=resolve({"name": "cfg", "weight": 2.5}))
    assert same_outputs(fixed, plain)  # the method's weight overrides the run's


def test_interval_covering_every_step_is_the_plain_sampler_and_an_empty_one_is_w_1(gmm):
    plain = generate(gmm, COND, range(4), steps=10, guidance=3.0)
    assert same_outputs(generate(gmm, COND, range(4), steps=10, guidance=3.0, method=resolve("interval")), plain)
    empty = resolve({"name": "interval", "sigma_lo": 0.0, "sigma_hi": 0.0})
    assert same_outputs(generate(gmm, COND, range(4), steps=10, guidance=3.0, method=empty),
                generate(gmm, COND, range(4), steps=10, guidance=1.0))
    middle = resolve({"name": "interval", "sigma_lo": 0.3, "sigma_hi": 5.0})  # the middle steps: w = 3 there
    out = generate(gmm, COND, range(4), steps=10, guidance=3.0, method=middle)
    assert not torch.equal(out.x0, plain.x0) and not torch.equal(out.x0, empty_x0(gmm))


def empty_x0(gmm):
    return generate(gmm, COND, range(4), steps=10, guidance=1.0).x0


def test_interval_schedule_is_the_piecewise_definition():
    w = resolve({"name": "interval", "weight": 4.0, "sigma_lo": 0.5, "sigma_hi": 2.0}).guidance
    # sigma/alpha = 0.5 (edge: outside, the interval is (lo, hi]), 1.0 inside, 2.0 (edge: inside), 3.0 outside
    assert [w(0.5, 1.0, s, 7.0) for s in (0.5, 1.0, 2.0, 3.0)] == [1.0, 4.0, 4.0, 1.0]
    assert w(0.5, 0.5, 0.5, 7.0) == 4.0  # sigma / alpha = 1
    assert resolve({"name": "interval", "sigma_lo": 0.5}).guidance(0.5, 1.0, 1.0, 7.0) == 7.0  # the run's weight
    assert resolve({"name": "interval"}).guidance(1.0, 0.0, 1.0, 7.0) == 7.0  # alpha = 0: infinite noise level


def test_baselines_refuse_what_they_cannot_do(tmp_path):
    with pytest.raises(ValueError, match="sigma_lo <= sigma_hi"):
        resolve({"name": "interval", "sigma_lo": 2.0, "sigma_hi": 1.0})
    with pytest.raises(ValueError, match="no shields to repel from a protected set"):
        resolve("cfg", protected=object())
    assert method_params("interval") == {"name": "interval", "weight": None, "sigma_lo": 0.0, "sigma_hi": math.inf}


# --- particle guidance -------------------------------------------------------------------------------------------


def pg_reference(x, cond, strength, sigma_ve):
    """docs/design.md section 2's formula, sample by sample, in float64."""
    f = x.reshape(len(x), -1).double()
    out = torch.zeros_like(f)
    if sigma_ve < 1:
        return out.reshape(x.shape)
    for i in range(len(f)):
        js = [j for j in range(len(f)) if j != i and cond[j] == cond[i]]
        if len(js) < 2:
            continue  # n <= 2: log(n - 1) = 0, the term vanishes
        d = torch.stack([(f[i] - f[j]).norm() for j in js])
        h = torch.median(d) ** 2 / math.log(len(js))  # torch.median: the lower middle of an even count
        for j, dj in zip(js, d):
            out[i] += (2 / h) * torch.exp(-dj**2 / h) * (f[i] - f[j])
    return (strength * sigma_ve**2 * out).reshape(x.shape)


@pytest.mark.parametrize("sigma_ve, batch", [(1.0, 12), (3.5, 11)])
def test_particle_guidance_is_the_float64_formula(sigma_ve, batch):
    g = torch.Generator().manual_seed(0)
    cond = torch.tensor([1, 0, 1, 0, 0, 1, 0, 1, 1, 2, 2, 3])[:batch]  # groups of 5 (odd), 4 (even), 2 and 1 (zero)
    x = torch.randn(len(cond), 2, 3, 3, generator=g) * torch.rand(len(cond), 1, 1, 1, generator=g)
    ours = particle_guidance(x, cond, 0.7, sigma_ve)
    ref = pg_reference(x, cond, 0.7, sigma_ve)
    assert ours.shape == x.shape and ours.dtype == x.dtype
    torch.testing.assert_close(ours.double(), ref, rtol=1e-5, atol=1e-6)
    assert (ref[cond >= 2] == 0).all() and (ref[cond < 2].flatten(1).norm(dim=1) > 0).all()
    torch.testing.assert_close(particle_guidance(x.double(), cond, 0.7, sigma_ve), ref, rtol=1e-10, atol=1e-12)


def test_particle_guidance_is_zero_below_sigma_1_for_small_groups_and_at_strength_0():
    x = torch.randn(6, 4, generator=torch.Generator().manual_seed(1))
    cond = torch.tensor([0, 0, 0, 0, 1, 1])
    assert particle_guidance(x, cond, 1.0, 2.0)[:4].abs().sum() > 0
    assert not particle_guidance(x, cond, 1.0, 2.0)[4:].any()  # a pair: n = 2
    assert not particle_guidance(x, cond, 1.0, 0.999).any()
    assert not particle_guidance(x, cond, 0.0, 2.0).any()
    assert not particle_guidance(x[:2], cond[:2], 1.0, 2.0).any()


def test_pg_at_strength_0_is_the_plain_sampler_and_moves_x0_only_while_sigma_ve_is_at_least_1(gmm, digits):
    for model, cond in ((gmm, torch.tensor([0, 0, 0, 1, 1])), (digits, DIGITS_COND)):
        seeds = range(len(cond))
        plain = generate(model, cond, seeds, steps=6)
        assert same_outputs(generate(model, cond, seeds, steps=6, method=resolve("pg")), plain)
        out = generate(model, cond, seeds, steps=6, method=resolve({"name": "pg", "strength": 2.0}))
        assert not torch.equal(out.x0, plain.x0)
        level = out.records["sigma"] / out.records["alpha"]
        moved = out.records["correction_norm"] > 0
        groups = torch.stack([(cond == c).sum() for c in cond])
        assert torch.equal(moved, (level >= 1)[None, :] & (groups > 2)[:, None])  # gmm: a group of 3 and a pair
        assert not out.records["active_shields"].any()


# --- CADS ---------------------------------------------------------------------------------------------------------


def test_cads_gamma_is_the_piecewise_definition():
    assert [cads_gamma(t, 0.6, 0.9) for t in (0.0, 0.6, 0.75, 0.9, 1.0)] == [1.0, 1.0, pytest.approx(0.5), 0.0, 0.0]
    assert cads_gamma(0.66, 0.6, 0.9) == pytest.approx(0.8)
    assert [cads_gamma(t, 0.5, 0.5) for t in (0.4, 0.5, 0.6)] == [1.0, 1.0, 0.0]  # tau1 = tau2: a step at tau
    assert all(cads_gamma(t, 1.0, 1.0) == 1.0 for t in (0.0, 0.5, 1.0))  # the neutral point: never noised


def test_cads_embedding_is_the_papers_rescaled_mix():
    g = torch.Generator().manual_seed(2)
    y, eps = torch.randn(3, 5, generator=g).double() * 2 + 1, torch.randn(3, 5, generator=g).double()
    y_hat = math.sqrt(0.3) * y + 0.25 * math.sqrt(0.7) * eps
    rescaled = (y_hat - y_hat.mean(1, keepdim=True)) / y_hat.std(1, keepdim=True) * y.std(1, keepdim=True) + \
        y.mean(1, keepdim=True)
    torch.testing.assert_close(cads_embedding(y, 0.3, eps, 0.25, 0.6), 0.6 * rescaled + 0.4 * y_hat)
    torch.testing.assert_close(cads_embedding(y, 0.3, eps, 0.25, 0.0), y_hat)


def test_cads_batch_statistics_are_the_reference_implementations():
    """stats="batch": v0xie/sd-webui-cads's add_noise, which takes torch.mean / torch.std of the whole tensor."""
    g = torch.Generator().manual_seed(4)
    y, eps = torch.randn(3, 4, 5, generator=g).double() * 2 + 1, torch.randn(3, 4, 5, generator=g).double()
    y_hat = math.sqrt(0.3) * y + 0.25 * math.sqrt(0.7) * eps
    rescaled = (y_hat - torch.mean(y_hat)) / torch.std(y_hat) * torch.std(y) + torch.mean(y)
    torch.testing.assert_close(cads_embedding(y, 0.3, eps, 0.25, 0.6, "batch"), 0.6 * rescaled + 0.4 * y_hat)
    assert not torch.allclose(cads_embedding(y, 0.3, eps, 0.25, 0.6, "sample"), 0.6 * rescaled + 0.4 * y_hat)
    with pytest.raises(ValueError, match="stats must be one of"):
        resolve({"name": "cads", "stats": "pooled"})


def test_cads_reference_choices_keep_the_neutral_point_and_act_where_stated(digits):
    seeds, kw = [5, 6, 7, 8, 9, 10], dict(steps=5, guidance=2.0)
    plain = generate(digits, DIGITS_COND, seeds, **kw)
    base = {"name": "cads", "tau1": 0.2, "tau2": 0.7, "noise_scale": 1.0}
    for extra in ({"noise_uncond": True}, {"stats": "batch"}):
        assert same_outputs(generate(digits, DIGITS_COND, seeds, method=resolve({"name": "cads", "tau1": 1.0, "tau2": 1.0,
                                                                           **extra}), **kw), plain), extra
        assert not torch.equal(generate(digits, DIGITS_COND, seeds, method=resolve({**base, **extra}), **kw).x0,
                               generate(digits, DIGITS_COND, seeds, method=resolve(base), **kw).x0), extra
    # the unconditional branch draws from its own stream: without guidance (no unconditional branch) nothing changes
    w1 = dict(steps=5, guidance=1.0)
    assert torch.equal(generate(digits, DIGITS_COND, seeds, method=resolve({**base, "noise_uncond": True}), **w1).x0,
                       generate(digits, DIGITS_COND, seeds, method=resolve(base), **w1).x0)


def test_cads_neutral_is_the_plain_sampler_and_otherwise_changes_outputs_per_sample(digits):
    seeds = [5, 6, 7, 8, 9, 10]
    for sampler in ("ddim", "ddpm"):  # ddpm draws from the samples' own noise streams every step
        plain = generate(digits, DIGITS_COND, seeds, sampler=sampler, steps=5)
        neutral = resolve({"name": "cads", "tau1": 1.0, "tau2": 1.0})
        assert same_outputs(generate(digits, DIGITS_COND, seeds, sampler=sampler, steps=5, method=neutral), plain)
        cads = resolve({"name": "cads", "tau1": 0.2, "tau2": 0.7, "noise_scale": 1.0})
        out = generate(digits, DIGITS_COND, seeds, sampler=sampler, steps=5, method=cads)
        assert (out.x0 - plain.x0).flatten(1).norm(dim=1).min() > 0  # every sample moved
        # a sample's output depends on its seed alone, not on the batch it is in
        part = generate(digits, DIGITS_COND[[2, 0]], [seeds[2], seeds[0]], sampler=sampler, steps=5, method=cads)
        torch.testing.assert_close(part.x0, out.x0[[2, 0]], rtol=0, atol=1e-5)


def test_class_embeddings_stand_in_for_labels(digits):
    x = torch.randn(4, *digits.sample_shape, generator=torch.Generator().manual_seed(3))
    t = torch.tensor(0.5)
    labels = torch.tensor([0, 3, -1, 9])
    torch.testing.assert_close(digits(x, t, digits.embed_condition(labels)), digits(x, t, labels), rtol=0, atol=0)


def test_cads_refuses_a_model_without_a_condition_embedding(gmm, tmp_path):
    with pytest.raises(ValueError, match="transforms the condition embedding, and model 'gmm' has none"):
        generate(gmm, COND, range(4), steps=3, method=resolve("cads"))
    with pytest.raises(ValueError, match="tau1 <= tau2"):
        resolve({"name": "cads", "tau1": 0.9, "tau2": 0.6})
    out = tmp_path / "run"
    with pytest.raises(ValueError, match="has none"):
        run_generation(experiment="x", settings=[Setting("c", {"name": "cads"}, rounds=(2,))], model=gmm,
                       model_spec={"name": "gmm"}, sampler="ddim", steps=3, guidance=1.0, out=out, config={})
    assert not out.exists()


# --- neutral points on digits, and SPELL on top of a CFG weight ----------------------------------------------------


def test_every_method_at_its_neutral_point_is_the_plain_sampler_on_digits(digits):
    seeds = range(len(DIGITS_COND))
    plain = generate(digits, DIGITS_COND, seeds, steps=4)
    for m in ["cfg", "interval", "pg", {"name": "cads", "tau1": 1.0, "tau2": 1.0}]:
        assert same_outputs(generate(digits, DIGITS_COND, seeds, steps=4, method=resolve(m)), plain), m
    spell = generate(digits, DIGITS_COND, seeds, steps=4, method=resolve({"name": "spell", "intra_batch": True}))
    assert torch.equal(spell.x0, plain.x0) and not spell.records["correction_norm"].any()  # it measures distances


def test_spell_on_top_of_a_cfg_weight(gmm):
    spell = {"name": "spell", "radius": 1.5, "intra_batch": True}
    at_run_weight = generate(gmm, COND, range(4), steps=8, guidance=3.0, method=resolve(spell))
    assert same_outputs(generate(gmm, COND, range(4), steps=8, guidance=1.0, method=resolve({**spell, "weight": 3.0})),
                at_run_weight)
    assert at_run_weight.records["active_batch"].any()  # SPELL acted: the weight is not all that is compared
    radius_0 = resolve({**spell, "radius": 0.0, "weight": 3.0})
    assert torch.equal(generate(gmm, COND, range(4), steps=8, guidance=1.0, method=radius_0).x0,
                       generate(gmm, COND, range(4), steps=8, guidance=3.0).x0)  # r = 0: the CFG sweep's point
