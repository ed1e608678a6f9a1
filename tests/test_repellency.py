"""The SPELL correction against hand-computed cases and an independent float64 computation."""

import math

import pytest
import torch

from spell_lab.repellency import EXACT_WORK, ExactProtected, IntraBatch, Memory, Spell, correction, correction_reference


def reference(x0, centers, radius, overcomp=1.0, skip_self=False, xg=None, cg=None):
    """The package's literal Eq. 5/8 (float64, whole difference tensor) as (delta, active, nearest)."""
    c = correction_reference(x0, centers, radius, overcomp, skip_self=skip_self, x_groups=xg, center_groups=cg)
    return c.delta, c.active, c.nearest


def test_reference_is_the_equation_on_a_hand_case():
    # x at the origin; z1 at distance 1 (weight 2/1 - 1 = 1), z2 at 0.5 (weight 3), z3 outside, z4 = x itself (skipped)
    x = torch.zeros(1, 2, dtype=torch.float64)
    z = torch.tensor([[0.0, 1.0], [0.0, -0.5], [3.0, 0.0], [0.0, 0.0]], dtype=torch.float64)
    c = correction_reference(x, z, 2.0, 1.5)
    assert torch.allclose(c.delta, 1.5 * torch.tensor([[0.0, -1.0 + 1.5]], dtype=torch.float64))
    assert c.active.tolist() == [2] and c.nearest.tolist() == [0.0]


def test_hand_computed_single_shield():
    x = torch.tensor([[0.0, 0.0]])
    z = torch.tensor([[1.0, 0.0]])
    c = correction(x, z, 2.0)
    # d = 1, weight r/d - 1 = 1, delta = 1 * (x - z) = (-1, 0): x' lands on the sphere, at distance 2 from z
    assert torch.equal(c.delta, torch.tensor([[-1.0, 0.0]]))
    assert c.active.tolist() == [1] and c.nearest.tolist() == [1.0]
    c = correction(x, z, 2.0, overcomp=1.6)
    assert torch.allclose(c.delta, torch.tensor([[-1.6, 0.0]]))


def test_hand_computed_two_shields_and_far_one():
    x = torch.tensor([[0.0, 0.0]])
    z = torch.tensor([[0.0, 1.0], [0.0, -0.5], [3.0, 0.0]])
    c = correction(x, z, 2.0)
    # weights: 2/1 - 1 = 1 and 2/0.5 - 1 = 3; the third is outside the radius: exactly zero (the sparsity)
    expected = 1 * torch.tensor([0.0, -1.0]) + 3 * torch.tensor([0.0, 0.5])
    assert torch.allclose(c.delta[0], expected)
    assert c.active.tolist() == [2] and c.nearest.tolist() == [0.5]


@pytest.mark.parametrize("shape", [(5,), (3, 4, 4), (2, 3, 5)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("overcomp", [1.0, 1.6])
def test_against_float64_reference(shape, dtype, overcomp):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, *shape, generator=g)
    z = x[torch.tensor([0, 0, 2, 3])] + 0.4 * torch.randn(4, *shape, generator=g)  # some near, some far
    radius = float(torch.cdist(x.flatten(1), z.flatten(1)).median()) + 1e-2  # away from any distance: no tie
    x, z = x.to(dtype), z.to(dtype)
    c = correction(x, z, radius, overcomp=overcomp)
    delta, active, nearest = reference(x, z, radius, overcomp)
    tol = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 2e-2, torch.bfloat16: 5e-2}[dtype]
    assert c.delta.dtype == dtype and c.delta.shape == x.shape
    assert torch.allclose(c.delta.double(), delta, atol=tol, rtol=tol)
    assert torch.equal(c.active, active)
    assert torch.allclose(c.nearest.double(), nearest, rtol=1e-3 if dtype in (torch.float16, torch.bfloat16) else 1e-6)
    assert (active > 0).any() and (active < z.shape[0]).any()  # the case exercises both sides of the ReLU


def test_intra_batch_never_repels_itself_and_matches_reference():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(7, 3, 4, generator=g)
    c = correction(x, x, 4.0, skip_self=True, overcomp=1.3)
    delta, active, nearest = reference(x, x, 4.0, 1.3, skip_self=True)
    assert torch.allclose(c.delta.double(), delta, atol=1e-5)
    assert torch.equal(c.active, active) and torch.allclose(c.nearest.double(), nearest)
    lonely = correction(x[:1], x[:1], 4.0, skip_self=True)  # one member alone: nothing to repel from
    assert torch.equal(lonely.delta, torch.zeros_like(x[:1])) and lonely.active.item() == 0
    assert lonely.nearest.item() == math.inf


def test_memory_groups_only_same_condition():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(4, 6, generator=g)
    mem = torch.randn(5, 6, generator=g)
    xg, mg = torch.tensor([0, 1, 0, 1]), torch.tensor([0, 0, 1, 1, 1])
    c = Memory(mem, mg)(x, 10.0, 1.0, xg)
    delta, active, nearest = reference(x, mem, 10.0, xg=xg, cg=mg)
    assert torch.allclose(c.delta.double(), delta, atol=1e-5) and torch.equal(c.active, active)
    assert active.tolist() == [2, 3, 2, 3]  # every item is within 10, but only the same condition's count


def test_sources_sum_to_the_union():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(5, 8, generator=g)
    mem, prot = torch.randn(4, 8, generator=g), torch.randn(6, 8, generator=g)
    cond = torch.zeros(5, dtype=torch.long)
    spell = Spell(3.5, 1.6, [IntraBatch(), Memory(mem), ExactProtected(prot)])
    step = spell(x, cond)
    d_b, a_b, n_b = reference(x, x, 3.5, 1.6, skip_self=True)
    d_m, a_m, n_m = reference(x, mem, 3.5, 1.6)
    d_p, a_p, n_p = reference(x, prot, 3.5, 1.6)
    assert torch.allclose(step.delta.double(), d_b + d_m + d_p, atol=1e-5)
    assert torch.allclose(step.x0.double(), x.double() + d_b + d_m + d_p, atol=1e-5)
    assert torch.equal(step.active["batch"], a_b) and torch.equal(step.active["memory"], a_m)
    assert torch.equal(step.active["protected"], a_p)
    assert torch.allclose(step.nearest.double(), torch.minimum(torch.minimum(n_b, n_m), n_p))


def test_chunked_and_expansion_paths_agree_with_reference():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(8, 512, generator=g)
    z = torch.cat([x + 0.9 * torch.randn(8, 512, generator=g), torch.randn(9000, 512, generator=g)])
    d = torch.cdist(x.double(), z.double()).flatten().sort().values
    d = d[(d > 29.5) & (d < 30.5)]
    gap = int((d[1:] - d[:-1]).argmax())
    radius = float((d[gap] + d[gap + 1]) / 2)  # about 30, in the widest gap: float32 rounding cannot flip a pair
    assert 8 * z.shape[0] * 512 > EXACT_WORK  # large enough for the matmul expansion
    c_big = correction(x, z, radius, chunk=1000)
    c_one = correction(x, z, radius, chunk=z.shape[0])
    delta, active, nearest = reference(x, z, radius)
    for c in (c_big, c_one):
        assert torch.equal(c.active, active)
        assert torch.allclose(c.delta.double(), delta, rtol=1e-4, atol=1e-3)
        assert torch.allclose(c.nearest.double(), nearest, rtol=1e-5)


def test_empty_references():
    x = torch.randn(3, 4)
    c = correction(x, torch.empty(0, 4), 5.0)
    assert torch.equal(c.delta, torch.zeros_like(x)) and c.active.tolist() == [0, 0, 0]
    assert torch.isinf(c.nearest).all()


def test_lands_on_the_sphere():
    g = torch.Generator().manual_seed(5)
    z = 3 * torch.randn(1, 4096, generator=g)
    x = z + 0.2 * torch.randn(3, 4096, generator=g)
    c = correction(x, z, 20.0)
    assert torch.allclose((x + c.delta - z).norm(dim=1), torch.full((3,), 20.0), rtol=1e-6)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(radius=-1.0), "radius must be"),
        (dict(radius=math.inf), "radius must be"),
        (dict(radius=math.nan), "radius must be"),
        (dict(radius=1.0, overcomp=0.0), "overcomp must be"),
        (dict(radius=1.0, overcomp=-2.0), "overcomp must be"),
    ],
)
def test_bad_radius_and_overcomp(kwargs, match):
    with pytest.raises(ValueError, match=match):
        correction(torch.zeros(2, 3), torch.ones(1, 3), **kwargs)
    with pytest.raises(ValueError, match=match):
        Spell(kwargs["radius"], kwargs.get("overcomp", 1.0))


def test_bad_tensors():
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="x0 contains NaN"):
        correction(torch.tensor([[math.nan, 0.0, 0.0]]), torch.ones(1, 3), 1.0)
    with pytest.raises(ValueError, match="reference points contain NaN"):
        correction(x, torch.tensor([[0.0, math.nan, 0.0]]), 1.0)
    with pytest.raises(ValueError, match="does not match the sample shape"):
        correction(x, torch.ones(4, 5), 1.0)
    with pytest.raises(ValueError, match="protected set contains NaN"):
        ExactProtected(torch.full((2, 3), math.nan))
    with pytest.raises(ValueError, match="does not match the sample shape"):
        Spell.build(1.0, memory=torch.ones(3, 7)).validate(x)


def test_protected_near_duplicates_get_exact_distances_and_pushes():
    # 10,000 clustered items far from the origin, queries planted 0.08 from an item: the matmul expansion alone
    # read those distances as 0 in float32 and did not push at all; the refined nearest items are exact
    g = torch.Generator().manual_seed(0)
    centers = 30 * torch.randn(20, 64, generator=g)
    items = centers[torch.randint(20, (10000,), generator=g)] + 0.5 * torch.randn(10000, 64, generator=g)
    q = items[:8] + 0.08 * torch.nn.functional.normalize(torch.randn(8, 64, generator=g), dim=1)
    true = (q[:, None].double() - items[None].double()).norm(dim=-1)
    plain = correction(q, items, 1.0, check=False)
    assert (plain.nearest < 0.5 * true.min(1).values).any()  # the expansion alone fails here (the test can fail)
    c = ExactProtected(items)(q, 1.0, 1.0, torch.zeros(8, dtype=torch.long))
    assert torch.allclose(c.nearest.double(), true.min(1).values, rtol=1e-5)
    ref = correction_reference(q.double(), items.double(), 1.0)
    assert torch.equal(c.active, ref.active) and torch.allclose(c.delta.double(), ref.delta, atol=1e-4)
    moved = (q + c.delta)[:, None].double() - items[None].double()
    assert float(moved.norm(dim=-1).min()) >= 1.0 * (1 - 1e-5)  # every output leaves its shield


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_predictions_equal_up_to_rounding_are_one_point_in_every_path(dtype):
    """Identical predictions (distance 0) and predictions a few ulps apart (a scheduler's round trip through v at
    sigma = 1) give no direction: neither is pushed, in the chunked, expanded and reference paths and the faiss-free
    protected source alike. Pairs a little farther apart than rounding are pushed to the sphere."""
    g = torch.Generator().manual_seed(3)
    base = (3 * torch.randn(1, 16, generator=g, dtype=torch.float64)).to(dtype)
    eps = torch.finfo(dtype).eps
    ulps = torch.zeros(4, 16, dtype=dtype)
    ulps[1, 0], ulps[2, 5], ulps[3, :] = 2 * eps, -3 * eps, eps  # relative perturbations of a few ulps
    x = base * (1 + ulps)
    assert 0 < torch.pdist(x.double()).max() < 64 * eps * float(base.norm())  # equal up to rounding, not all equal
    far = 100 + torch.randn(5000, 16, generator=g).to(dtype)  # a large set: the expansion path, refined
    assert x.shape[0] * (far.shape[0] + 4) * 16 > EXACT_WORK
    for c in (correction(x, x, 2.5, skip_self=True), correction_reference(x, x, 2.5, skip_self=True),
              ExactProtected(x)(x, 2.5, 1.0, None), ExactProtected(torch.cat([far, x]))(x, 2.5, 1.0, None)):
        assert not c.delta.any() and not c.active.any()
    apart = base + torch.tensor([[1e-3], [-1e-3]], dtype=dtype)  # 8e-3 apart: far above rounding
    c = correction(apart, apart, 2.5, skip_self=True)
    assert c.active.tolist() == [1, 1]  # each pushed r - d along their difference: 2r - d apart
    d = float(torch.pdist(apart.double()))
    assert float(torch.pdist((apart + c.delta).double())) == pytest.approx(2 * 2.5 - d, rel=1e-5)
