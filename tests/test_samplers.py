"""Samplers with SPELL on the Gaussian-mixture oracle: the guarantee, the identities and the recorded statistics."""

import pytest
import torch

from spell_lab.models.base import PredictionDenoiser
from spell_lab.models.gmm import GaussianMixture
from spell_lab.parameterisation import from_x0
from spell_lab.repellency import Memory, Spell
from spell_lab.samplers import generate

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


def inside(x, centers, radius, rtol=1e-5):
    """Closer than r by more than float rounding (a lambda = 1 correction lands exactly on the sphere)."""
    d = torch.cdist(x.flatten(1).double(), centers.flatten(1).double())
    return (d < radius * (1 - rtol)).any(dim=1)


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
