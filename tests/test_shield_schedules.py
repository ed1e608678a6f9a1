"""Radius and overcompensation schedules (docs/design.md section 2, "Schedules"): constant is today's SPELL bit for
bit and records nothing more; other schedules give r(t), lambda(t) by their formula and record them per step."""

import math

import pytest
import torch

from conftest import same_outputs

from spell_lab.methods import Hooks, recorded_fields, resolve
from spell_lab.repellency import Spell
from spell_lab.samplers import generate
from spell_lab.shield_schedules import multiplier, schedule_params

COND = torch.tensor([0, 0, 0, 1, 1, 1])
SPELL = {"name": "spell", "radius": 1.5, "overcomp": 1.3, "intra_batch": True, "memory": True}


def test_constant_schedule_and_diffusion_space_are_todays_spell_bit_for_bit(gmm):
    today = generate(gmm, COND, range(6), steps=8, method=Hooks.of_spell(Spell.build(1.5, 1.3, intra_batch=True)))
    explicit = {**SPELL, "memory": False, "space": "diffusion", "radius_schedule": "constant",
                "overcomp_schedule": "constant"}
    run = generate(gmm, COND, range(6), steps=8, method=resolve(explicit))
    assert today.records["active_batch"].any()  # SPELL acted
    assert same_outputs(run, today) and set(run.records) == set(today.records)  # no r(t) / lambda(t) fields
    flat = {**explicit, "radius_schedule": {"kind": "linear", "at_noise": 1.0, "at_data": 1.0},
            "overcomp_schedule": {"kind": "sigma", "at_noise": 1.0, "at_data": 1.0}}  # m = 1 everywhere
    assert torch.equal(generate(gmm, COND, range(6), steps=8, method=resolve(flat)).x0, today.x0)
    assert recorded_fields(explicit) == () and recorded_fields(flat) == ("radius_t", "overcomp_t")


def test_schedules_follow_their_formula_and_are_recorded_per_step(gmm):
    method = {**SPELL, "radius_schedule": "linear", "overcomp_schedule": {"kind": "sigma", "at_noise": 3.0,
                                                                          "at_data": 1.0}}
    rec = generate(gmm, COND, range(6), steps=8, method=resolve(method)).records
    t, alpha, sigma = (rec[k].double() for k in ("t", "alpha", "sigma"))
    assert torch.allclose(rec["radius_t"][0].double(), 1.5 * (0.5 + 1.5 * t), rtol=1e-6)  # defaults: 2x noise, 0.5x data
    assert torch.allclose(rec["overcomp_t"][0].double(), 1.3 * (1 + 2 * sigma / torch.hypot(alpha, sigma)), rtol=1e-6)
    assert (rec["radius_t"] == rec["radius_t"][:1]).all()  # one value per step, every sample
    assert resolve(method).radius == pytest.approx(0.75)  # inside_shield is judged at r(0)


@pytest.mark.parametrize("spec", ["quadratic", {"kind": "linear", "at_noise": -1}, {"kind": "constant", "at_data": 2},
                                  {"kind": "sigma", "slope": 1}, {"kind": "linear", "at_data": math.inf}])
def test_bad_schedules_are_refused_in_one_line(spec):
    with pytest.raises(ValueError, match="schedule"):
        resolve({**SPELL, "radius_schedule": spec})


def test_multiplier_ends():
    p = schedule_params("sigma")
    assert multiplier(p, 1.0, 0.0, 1.0) == 2.0 and multiplier(p, 0.0, 1.0, 0.0) == 0.5
    assert multiplier(schedule_params("linear"), 0.5, 0.3, 0.9) == pytest.approx(1.25)


def test_the_sparsity_overcomp_schedule_setup_runs_lambda_from_two_to_one():
    """The opt-in `overcomp_schedule` setup of the sparsity command: lambda 1.6 scheduled from 2.0 in pure noise to 1.0
    at the data; the default setups (the main command) stay the paper's seven, without it."""
    from spell_lab.experiments.sparsity import DEFAULT_SETUPS, SETUPS, build_settings
    from spell_lab.shield_schedules import schedule_params, scheduled

    made = {s.name: s for s in build_settings(["overcomp", "overcomp_schedule"], 25.0, 1.6, "default", [0], [0], 0)}
    params = schedule_params(made["overcomp_schedule"].method["overcomp_schedule"])
    assert scheduled(1.6, params, 1.0, 0.0, 1.0) == pytest.approx(2.0)  # alpha 0, sigma 1: pure noise
    assert scheduled(1.6, params, 0.0, 1.0, 0.0) == pytest.approx(1.0)  # the data
    assert "overcomp_schedule" not in made["overcomp"].method
    assert "overcomp_schedule" not in DEFAULT_SETUPS and set(DEFAULT_SETUPS) < set(SETUPS)
