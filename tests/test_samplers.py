"""Samplers with SPELL on the Gaussian-mixture oracle: the guarantee, the identities and the recorded statistics."""

import math

import pytest
import torch

from spell_lab.methods import Hooks, cads_gamma, resolve
from spell_lab.models.base import PredictionDenoiser
from spell_lab.models.gmm import GaussianMixture
from spell_lab.parameterisation import from_x0
from spell_lab.repellency import Memory, Spell
from spell_lab.samplers import generate
from spell_lab.schedules import RectifiedFlow

from conftest import inside

FAMILIES = [  # (schedule, sampler, prediction the network outputs)
    ("vp", "ddim", "epsilon"),
    ("vp", "ddim", "v_prediction"),
    ("vp", "ddpm", "epsilon"),
    ("vp", "ddpm", "v_prediction"),
    ("edm", "euler", "sample"),
    ("edm", "heun", "sample"),
    ("flow", "flow_euler", "flow"),
]


def as_network(gmm, prediction):
    """The oracle behind a network that outputs eps, v, x0 or a flow velocity (converted back by the sampler)."""

    def net(x, t, cond):
        a, s = (float(v) for v in gmm.schedule.alpha_sigma(t))
        return from_x0(gmm(x, t, cond), x, a, s, prediction)

    return PredictionDenoiser(net, gmm.schedule, prediction, gmm.sample_shape, gmm.num_classes)


@pytest.mark.parametrize("schedule, sampler, prediction", FAMILIES)
def test_guarantee_no_output_inside_disjoint_shields(schedule, sampler, prediction):
    gmm = GaussianMixture(num_classes=2, components=3, shape=(4, 4), spread=3.0, std=0.15, schedule=schedule, seed=3)
    model = as_network(gmm, prediction)
    shields = gmm.modes(0)
    separation = torch.pdist(shields.flatten(1)).min()
    radius = 1.0
    assert separation > 2 * radius  # disjoint shields
    cond, seeds = torch.zeros(48, dtype=torch.long), range(48)
    base = generate(model, cond, seeds, sampler=sampler, steps=30)
    spelled = generate(model, cond, seeds, sampler=sampler, steps=30, spell=Spell.build(radius, protected=shields))
    assert inside(base.x0, shields, radius).float().mean() > 0.5  # the baseline lands a clear share inside
    assert not inside(spelled.x0, shields, radius).any()
    assert (spelled.records["active_protected"] > 0).any()


@pytest.mark.parametrize("schedule, sampler, prediction", FAMILIES)
def test_radius_zero_is_bit_identical_to_no_spell(schedule, sampler, prediction, gmm):
    gmm.schedule = GaussianMixture(schedule=schedule).schedule
    model = as_network(gmm, prediction)
    cond = torch.tensor([0, 0, 1, 2, 2, 2])
    memory = Memory(gmm.modes(0)[:2], torch.zeros(2, dtype=torch.long))
    spell = Spell.build(0.0, intra_batch=True, memory=memory, protected=gmm.modes(2))
    base = generate(model, cond, range(6), sampler=sampler, steps=12)
    zero = generate(model, cond, range(6), sampler=sampler, steps=12, spell=spell)
    assert torch.equal(base.x0, zero.x0)
    assert (zero.records["correction_norm"] == 0).all() and (zero.records["active_shields"] == 0).all()
    assert torch.isfinite(zero.records["nearest_distance"]).all()  # distances are still measured at radius 0


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_output_does_not_depend_on_the_batch(sampler, gmm):
    seeds = [11, 12, 13, 14, 15]
    cond = torch.tensor([0, 1, 2, 0, 1])
    full = generate(gmm, cond, seeds, sampler=sampler, steps=10, guidance=2.0)
    alone = generate(gmm, cond[3:4], seeds[3:4], sampler=sampler, steps=10, guidance=2.0)
    other = generate(gmm, torch.tensor([2, 0]), [99, 14], sampler=sampler, steps=10, guidance=2.0)
    assert torch.equal(full.x0[3], alone.x0[0]) and torch.equal(full.x0[3], other.x0[1])


@pytest.mark.parametrize("schedule, sampler", [("vp", "ddim"), ("edm", "heun"), ("flow", "flow_euler")])
def test_recorded_statistics(schedule, sampler, gmm):
    gmm.schedule = GaussianMixture(schedule=schedule).schedule
    cond = torch.tensor([0, 0, 0, 1, 1])
    memory = Memory(gmm.modes(0), torch.zeros(3, dtype=torch.long))
    spell = Spell.build(3.0, 1.6, intra_batch=True, memory=memory)
    r = generate(gmm, cond, range(5), sampler=sampler, steps=10, guidance=1.5, spell=spell).records
    n = 19 if sampler == "heun" else 10
    assert r["correction_norm"].shape == (5, n) and r["t"].shape == (n,)
    alpha, sigma = r["alpha"].float(), r["sigma"].float()
    expected = alpha / sigma**2 * r["correction_norm"] / r["score_norm"]
    assert torch.allclose(r["relative_magnitude"], expected, rtol=1e-4, atol=1e-7)
    total = r["active_batch"] + r["active_memory"] + r["active_protected"]
    assert torch.equal(r["active_shields"], total)
    assert (r["active_memory"][3:] == 0).all()  # memory of condition 0 never shields condition 1
    assert ((r["correction_norm"] > 0) == (r["active_shields"] > 0)).all()
    assert (r["t"][:-1] >= r["t"][1:]).all() and r["t"][0] == 1.0


def test_guidance_is_exact_on_the_oracle(gmm):
    x = torch.randn(4, *gmm.sample_shape)
    t = torch.tensor(0.5)
    cond = torch.tensor([0, 1, 2, 0])
    from spell_lab.models.base import guided_x0

    x0_c, x0_u = gmm(x, t, cond), gmm(x, t, torch.full_like(cond, -1))
    assert torch.allclose(guided_x0(gmm, x, t, cond, 3.0), x0_u + 3.0 * (x0_c - x0_u), atol=1e-6)
    assert torch.equal(guided_x0(gmm, x, t, cond, 1.0), x0_c)
    # at t -> 0 the conditional posterior mean is the input itself
    assert torch.allclose(gmm(x, torch.tensor(0.0), cond), x, atol=1e-6)


def test_bad_sampler_names_say_what_to_use(gmm):
    with pytest.raises(ValueError, match="unknown sampler 'dpm'"):
        generate(gmm, torch.zeros(1, dtype=torch.long), [0], sampler="dpm")
    with pytest.raises(ValueError, match="needs a model with a edm schedule"):
        generate(gmm, torch.zeros(1, dtype=torch.long), [0], sampler="heun")
    with pytest.raises(ValueError, match="one seed per sample"):
        generate(gmm, torch.zeros(2, dtype=torch.long), [0])
    with pytest.raises(ValueError, match="does not match the sample shape"):
        generate(gmm, torch.zeros(1, dtype=torch.long), [0], spell=Spell.build(1.0, protected=torch.ones(2, 5)))


# --- the EDM family on Karras et al.'s grid, per-step method decisions (issue #22) ---------------------------------
# Each rule is re-derived here in a few lines of float64 (k-diffusion's get_sigmas_karras / sample_euler / sample_heun,
# kynkaat/guidance-interval's per-step choice, v0xie/sd-webui-cads's t = 1 - step / steps), not through the code
# under test: the oracle is queried at sigma directly through a schedule whose t is sigma.


class SigmaIsT:
    """alpha = 1, sigma = t: the oracle evaluated at a noise level, with no project schedule in between."""

    kind = "edm"

    def alpha_sigma(self, t):
        t = torch.as_tensor(t, dtype=torch.float64)
        return torch.ones_like(t), t


def karras_sigmas(n, smin=0.002, smax=80.0, rho=7.0):
    """Karras et al. (2022), Eq. 5: n levels smax ... smin, then 0."""
    i = torch.arange(n, dtype=torch.float64)
    levels = (smax ** (1 / rho) + i / max(n - 1, 1) * (smin ** (1 / rho) - smax ** (1 / rho))) ** rho
    return levels.tolist() + [0.0]


def reference_ode(denoise, x, sigmas, heun):
    """sample_euler / sample_heun without churn; denoise(x, sigma, i) with i the step (Heun's corrector: still i)."""
    for i in range(len(sigmas) - 1):
        s, s_next = sigmas[i], sigmas[i + 1]
        d = (x - denoise(x, s, i)) / s
        x_next = x + (s_next - s) * d
        if heun and s_next > 0:
            x_next = x + (s_next - s) * 0.5 * (d + (x_next - denoise(x_next, s_next, i)) / s_next)
        x = x_next
    return x


def edm_case(seeds=range(6)):
    gmm = GaussianMixture(num_classes=3, components=3, shape=(2, 4, 2), spread=4.0, std=0.2, seed=1, schedule="edm")
    oracle = GaussianMixture(num_classes=3, components=3, means=gmm.means.clone(), shape=(2, 4, 2), std=0.2,
                             schedule=SigmaIsT())
    cond = torch.tensor([0, 0, 1, 2, 2, 1])[: len(seeds)]
    noise = torch.stack([torch.randn(gmm.sample_shape, generator=torch.Generator().manual_seed(s), dtype=torch.float64)
                         for s in seeds])
    return gmm, oracle, cond, list(seeds), noise


def guided(oracle, cond, w):
    """x0_u + w (x0_c - x0_u) at a noise level; w(sigma, i) may depend on the step."""
    def denoise(x, s, i):
        t = torch.tensor(s, dtype=torch.float64)
        x0_c, x0_u = oracle(x, t, cond), oracle(x, t, torch.full_like(cond, -1))
        return x0_u + w(s, i) * (x0_c - x0_u)
    return denoise


def test_edm_grid_is_karras():
    from spell_lab.schedules import EDM

    for n in (1, 2, 18, 32):
        sigmas = EDM().alpha_sigma(EDM().grid(n))[1]
        torch.testing.assert_close(sigmas, torch.tensor(karras_sigmas(n), dtype=torch.float64), rtol=1e-14, atol=0)
    sigmas = EDM().alpha_sigma(EDM().grid(32))[1]
    assert len(sigmas) == 33 and sigmas[0] == 80.0 and float(sigmas[-2]) == pytest.approx(0.002, rel=1e-12)


@pytest.mark.parametrize("sampler", ["euler", "heun"])
def test_euler_and_heun_equal_an_independent_loop_over_karras_grid(sampler):
    gmm, oracle, cond, seeds, noise = edm_case()
    steps = 18
    ours = generate(gmm, cond, seeds, sampler=sampler, steps=steps, guidance=2.0, dtype=torch.float64)
    ref = reference_ode(guided(oracle, cond, lambda s, i: 2.0), 80.0 * noise, karras_sigmas(steps), sampler == "heun")
    assert (ours.x0 - ref).abs().max() < 1e-5
    assert ours.records["sigma"].shape == (2 * steps - 1 if sampler == "heun" else steps,)


def test_interval_guidance_is_decided_once_per_heun_step():
    """Kynkaanniemi et al.'s EDM sampler chooses the guided or the conditional denoiser once per step i, from sigma_i;
    the corrector at sigma_{i+1} keeps it. A per-evaluation choice differs where an interval edge falls in a step."""
    gmm, oracle, cond, seeds, noise = edm_case()
    steps, lo, hi, w = 12, 0.3, 5.0, 3.0
    sigmas = karras_sigmas(steps)
    assert not any(math.isclose(s, e) for s in sigmas for e in (lo, hi))
    method = resolve({"name": "interval", "sigma_lo": lo, "sigma_hi": hi})
    ours = generate(gmm, cond, seeds, sampler="heun", steps=steps, guidance=w, method=method, dtype=torch.float64)
    inside = lambda s: lo < s <= hi  # noqa: E731
    per_step = reference_ode(guided(oracle, cond, lambda s, i: w if inside(sigmas[i]) else 1.0), 80.0 * noise,
                             sigmas, heun=True)
    per_evaluation = reference_ode(guided(oracle, cond, lambda s, i: w if inside(s) else 1.0), 80.0 * noise,
                                   sigmas, heun=True)
    assert (ours.x0 - per_step).abs().max() < 1e-5
    assert (per_step - per_evaluation).abs().max() > 1e-3  # the rule matters on this grid: the test can fail


@pytest.mark.parametrize("sampler", ["euler", "heun"])
def test_neutral_points_on_the_edm_samplers_are_the_plain_sampler(sampler):
    gmm, _, cond, seeds, _ = edm_case()
    plain = generate(gmm, cond, seeds, sampler=sampler, steps=8, guidance=2.0)
    for m in ("cfg", "interval", "pg", {"name": "spell", "radius": 0.0, "intra_batch": True}):
        out = generate(gmm, cond, seeds, sampler=sampler, steps=8, guidance=2.0, method=resolve(m))
        assert torch.equal(out.x0, plain.x0), m


class Embedded(GaussianMixture):
    """The oracle with a condition embedding (the label as a float), so condition transforms can run on it."""

    def embed_condition(self, cond):
        return cond.to(torch.float64)[:, None]

    def forward(self, x, t, cond):
        return super().forward(x, t, cond[:, 0].round().long() if cond.is_floating_point() else cond)


@pytest.mark.parametrize("schedule, sampler", [(RectifiedFlow(shift=3.0), "flow_euler"), ("edm", "heun")])
def test_condition_transforms_see_the_sampling_progress_once_per_step(schedule, sampler):
    """CADS's reference reads t = 1 - step / steps; a shifted flow grid's t is another number at most steps."""
    model = Embedded(num_classes=3, components=3, shape=(2, 4, 2), spread=4.0, std=0.2, seed=1, schedule=schedule)
    seen = []

    def spy(y, progress, noise):
        seen.append(progress)
        return y  # unchanged: the plain sampler, bit for bit

    steps, cond = 8, torch.tensor([0, 1, 2])
    out = generate(model, cond, [0, 1, 2], sampler=sampler, steps=steps, guidance=2.0, method=Hooks(condition=spy))
    assert seen == pytest.approx([1 - i / steps for i in range(steps)], abs=1e-15)
    assert torch.equal(out.x0, generate(model, cond, [0, 1, 2], sampler=sampler, steps=steps, guidance=2.0).x0)
    cads = resolve({"name": "cads", "psi": 0.0})  # tau1 = 0.6, tau2 = 0.9; no rescaling of a 1-d embedding
    gammas = [cads_gamma(p, 0.6, 0.9) for p in seen]
    assert gammas == pytest.approx([min(1.0, max(0.0, (0.9 - (1 - i / steps)) / 0.3)) for i in range(steps)])
    grid_t = [float(t) for t in model.schedule.grid(steps)[:-1]]
    if sampler == "flow_euler":
        assert sum(abs(cads_gamma(t, 0.6, 0.9) - g) > 0.1 for t, g in zip(grid_t, gammas)) >= 2  # the grid's t differs
    assert not torch.equal(generate(model, cond, [0, 1, 2], sampler=sampler, steps=steps, guidance=2.0,
                                    method=cads).x0, out.x0)
