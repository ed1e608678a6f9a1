"""Overlap-aware correction (docs/design.md section 2): with shields that overlap, the paper's single correction can land
x0_hat' inside a neighbouring shield; overlap="iterate" corrects again until no shield is within r."""

import pytest
import torch

from spell_lab import methods
from spell_lab.repellency import ExactProtected, Spell, correction_reference

R = 1.0


@pytest.fixture(scope="module")
def overlapping():
    """3 centres in a row 0.9 r apart (closer than r: the balls overlap) in D = 16, queries scattered around them."""
    g = torch.Generator().manual_seed(0)
    centres = torch.zeros(3, 16, dtype=torch.float64)
    centres[:, 0] = torch.tensor([0.0, 0.9, 1.8])
    q = centres[torch.randint(3, (1024,), generator=g)] + 0.12 * torch.randn(1024, 16, generator=g, dtype=torch.float64)
    return centres, q


def inside(x, centres):
    return (x[:, None] - centres[None]).norm(dim=-1).min(1).values < R * (1 - 1e-9)


def test_single_correction_leaves_some_inside_iterate_none(overlapping):
    centres, q = overlapping
    cond = torch.zeros(len(q), dtype=torch.long)
    assert inside(q, centres).sum() > 500
    single = Spell(R, 1.0, [ExactProtected(centres)])(q, cond)
    assert inside(single.x0, centres).sum() > 0  # the paper's correction: no guarantee once shields overlap
    it = Spell(R, 1.0, [ExactProtected(centres)], overlap="iterate", max_iter=50)(q, cond)
    assert inside(it.x0, centres).sum() == 0
    # statistics: the total change, the first pass's counts and nearest distance (those of x0_hat itself)
    first = correction_reference(q, centres, R)
    assert torch.allclose(it.delta, it.x0 - q) and torch.equal(it.active["protected"], first.active)
    assert torch.allclose(it.nearest, first.nearest)


def test_iterate_stops_at_max_iter_and_single_is_the_default(overlapping):
    centres, q = overlapping
    cond = torch.zeros(len(q), dtype=torch.long)
    src = ExactProtected(centres)
    once = Spell(R, 1.0, [src], overlap="iterate", max_iter=1)(q, cond)
    default = Spell(R, 1.0, [src])(q, cond)
    assert torch.equal(once.x0, default.x0) and src.queries == 2 * len(q)
    Spell(R, 1.0, [src], overlap="iterate", max_iter=3)(q, cond)
    assert 4 * len(q) <= src.queries <= 5 * len(q)  # a second pass (some were inside after one), at most three


def test_registry_carries_overlap_and_refuses_bad_values():
    assert methods.method_params("spell")["overlap"] == "single"
    hooks = methods.resolve({"name": "spell", "radius": 2.0, "overlap": "iterate", "max_iter": 4})
    assert hooks.shields.overlap == "iterate" and hooks.shields.max_iter == 4
    with pytest.raises(ValueError, match="overlap must be one of"):
        methods.resolve({"name": "spell", "radius": 2.0, "overlap": "loop"})
    with pytest.raises(ValueError, match="max_iter must be an integer >= 1"):
        Spell(1.0, max_iter=0)
