"""The training-free baselines in the registry: each at its neutral point equals the plain sampler bit for bit."""

import math

import pytest
import torch

from spell_lab.methods import method_params, resolve
from spell_lab.samplers import generate

COND = torch.tensor([0, 0, 1, 2])


def same(a, b):
    return torch.equal(a.x0, b.x0) and all(torch.equal(a.records[k], b.records[k]) for k in a.records)


def test_cfg_at_the_run_weight_is_the_plain_sampler(gmm):
    plain = generate(gmm, COND, range(4), steps=10, guidance=2.5)
    assert same(generate(gmm, COND, range(4), steps=10, guidance=2.5, method=resolve("cfg")), plain)
    fixed = generate(gmm, COND, range(4), steps=10, guidance=1.0, method=resolve({"name": "cfg", "weight": 2.5}))
    assert same(fixed, plain)  # the method's weight overrides the run's


def test_interval_covering_every_step_is_the_plain_sampler_and_an_empty_one_is_w_1(gmm):
    plain = generate(gmm, COND, range(4), steps=10, guidance=3.0)
    assert same(generate(gmm, COND, range(4), steps=10, guidance=3.0, method=resolve("interval")), plain)
    empty = resolve({"name": "interval", "sigma_lo": 0.0, "sigma_hi": 0.0})
    assert same(generate(gmm, COND, range(4), steps=10, guidance=3.0, method=empty),
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
