"""The faiss shield index (spell_lab.protect.FaissProtected) against the exhaustive ExactProtected: exact search finds
every shield (same active counts, pushes, nearest distance below r), the paper's 1-probe IVF misses some, the
candidate cache stays exact, save/load round-trips, bad sets are refused, and a run through the spec equals one
with the exhaustive set."""

import math

import numpy as np
import pytest
import torch

from spell_lab.plan import Setting
from spell_lab.protect import INDEXES, FaissProtected, build_index, protected_spec
from spell_lab.repellency import ExactProtected, Spell, correction_reference

RADII = (2.0, 6.0, 12.0)


@pytest.fixture(scope="module")
def clustered():
    """4000 items in 12 clusters (D = 64), queries planted inside and near shields of several radii."""
    g = torch.Generator().manual_seed(3)
    centers = 20 * torch.randn(12, 64, generator=g)
    items = centers[torch.randint(12, (4000,), generator=g)] + 1.5 * torch.randn(4000, 64, generator=g)
    near = items[torch.randint(4000, (48,), generator=g)]
    scale = torch.tensor([0.3, 1.0, 3.0, 8.0, 11.0, 14.0]).repeat(8)[:, None]
    q = near + scale * torch.nn.functional.normalize(torch.randn(48, 64, generator=g), dim=1)
    return items, q


def same_correction(a, b, radius):
    """Same shields, same push (1e-5 relative), same nearest distance where it is below r."""
    assert torch.equal(a.active, b.active)
    scale = a.delta.norm(dim=1).clamp_min(1e-12)
    assert float(((a.delta - b.delta).norm(dim=1) / scale).max()) < 1e-5
    below = a.nearest < radius
    assert torch.equal(below, b.nearest < radius)
    assert torch.allclose(a.nearest[below].double(), b.nearest[below].double(), rtol=1e-5)


@pytest.fixture(scope="module")
def exact_index(clustered):
    return FaissProtected(clustered[0], exact=True)


def test_exact_search_finds_every_shield_and_ivf1_misses_some(clustered, exact_index):
    items, q = clustered
    cond = torch.zeros(len(q), dtype=torch.long)
    ivf1 = FaissProtected(items, nprobe=1)
    ref, missed = ExactProtected(items), 0
    for r in RADII:
        e = ref(q, r, 1.0, cond)
        assert e.active.sum() > 0
        same_correction(e, exact_index(q, r, 1.0, cond), r)
        a = ivf1(q, r, 1.0, cond)
        assert (a.active <= e.active).all()
        missed += int((e.active - a.active).sum())
    assert missed > 0  # the paper's search misses shields on the same data
    c = exact_index(q, RADII[-1], 1.0, cond)
    assert c.cells_probed.shape == (len(q),) and (c.cells_probed >= 1).all() and c.cells_probed.dtype == torch.int64
    assert exact_index.queries >= len(RADII) * len(q) and exact_index.search_seconds > 0


def test_float64_input_matches_the_float64_reference(clustered, exact_index):
    items, q = clustered
    r = RADII[1]
    c = exact_index(q.double(), r, 1.6, None)
    ref = correction_reference(q.double(), items.double(), r, 1.6)
    assert c.delta.dtype == torch.float64 and torch.equal(c.active, ref.active)
    assert torch.allclose(c.delta, ref.delta, rtol=1e-6, atol=1e-9)


def test_cache_stays_exact_over_moving_queries(clustered):
    items, q = clustered
    g = torch.Generator().manual_seed(5)
    cached = FaissProtected(items, exact=True, cache_margin=1.0)
    plain = cached.with_search(exact=True)
    ref, r = ExactProtected(items), RADII[1]
    x, hits = q.clone(), 0
    for step in range(8):  # small moves (served from the cache) and one jump (refreshed)
        x = x + (3.0 if step == 4 else 0.3) * torch.nn.functional.normalize(torch.randn(x.shape, generator=g), dim=1)
        c = cached(x, r, 1.0, None)
        same_correction(ref(x, r, 1.0, None), c, r)
        same_correction(ref(x, r, 1.0, None), plain(x, r, 1.0, None), r)
        hits += int((c.cells_probed == 0).sum())
    assert hits > 0  # some rows were served from the cache without probing a cell
    small = cached(x[:5], r, 1.0, None)  # another batch shape: the cache is rebuilt, still exact
    same_correction(ref(x[:5], r, 1.0, None), small, r)
    assert (small.cells_probed > 0).all()


def test_save_and_load_round_trip(tmp_path, clustered, exact_index):
    items, q = clustered
    exact_index.save(tmp_path / "ix")
    for mmap in (False, True):  # read whole, or the IVF lists mapped from the file
        loaded = FaissProtected.load(tmp_path / "ix", exact=True, mmap=mmap)
        assert torch.equal(loaded.bound.basis, exact_index.bound.basis) and loaded.bound.top == exact_index.bound.top
        for r in RADII:
            a, b = exact_index(q, r, 1.0, None), loaded(q, r, 1.0, None)
            assert torch.equal(a.delta, b.delta) and torch.equal(a.active, b.active)
            assert torch.equal(a.nearest, b.nearest)
        approx = loaded.with_search(nprobe=2)(q, RADII[1], 1.0, None)
        assert torch.equal(approx.active, exact_index.with_search(nprobe=2)(q, RADII[1], 1.0, None).active)
    with pytest.raises(ValueError, match="not a saved FaissProtected index"):
        FaissProtected.load(tmp_path)
    meta = (tmp_path / "ix" / "meta.json")
    meta.write_text(meta.read_text().replace('"format": 2', '"format": 1'))
    with pytest.raises(ValueError, match="rebuild it with FaissProtected"):
        FaissProtected.load(tmp_path / "ix")


def test_builds_from_a_memory_mapped_npy(tmp_path, clustered):
    items, q = clustered
    path = tmp_path / "set.npy"
    np.save(path, items.numpy())
    a = FaissProtected(path, exact=True)(q, RADII[1], 1.0, None)
    same_correction(ExactProtected(items)(q, RADII[1], 1.0, None), a, RADII[1])


def test_refusals_say_what_to_change(tmp_path):
    bad = torch.zeros(50, 8)
    bad[7, 3] = math.nan
    with pytest.raises(ValueError, match="contains NaN or inf: clean it"):
        FaissProtected(bad)
    with pytest.raises(ValueError, match="non-empty"):
        FaissProtected(torch.zeros(0, 8))
    with pytest.raises(ValueError, match="nprobe must be between 1 and nlist"):
        FaissProtected(torch.randn(50, 8), nprobe=100)
    index = FaissProtected(torch.randn(50, 1, 2, 4))
    with pytest.raises(ValueError, match="encode the references into the model's diffusion space"):
        Spell.build(1.0, protected=index).validate(torch.zeros(2, 1, 8))
    with pytest.raises(ValueError, match=r"has no parameter\(s\) \['nprob'\]"):
        protected_spec(tmp_path / "x.npy", "faiss", nprob=2)
    with pytest.raises(ValueError, match="cache_margin needs exact=True"):
        FaissProtected(torch.randn(50, 8), cache_margin=1.0)
    with pytest.raises(ValueError, match="bound_dims must be an integer >= 1"):
        FaissProtected(torch.randn(50, 8), bound_dims=0)


def test_near_duplicates_are_pushed_out():
    # items ~240 from the origin, queries 0.08 from an item: the expansion cancels there; differences do not
    g = torch.Generator().manual_seed(0)
    centers = 30 * torch.randn(20, 64, generator=g)
    items = centers[torch.randint(20, (10000,), generator=g)] + 0.5 * torch.randn(10000, 64, generator=g)
    q = items[:8] + 0.08 * torch.nn.functional.normalize(torch.randn(8, 64, generator=g), dim=1)
    c = FaissProtected(items, exact=True)(q, 1.0, 1.0, None)
    true = (q[:, None].double() - items[None].double()).norm(dim=-1)
    assert torch.allclose(c.nearest.double(), true.min(1).values, rtol=1e-5)
    moved = ((q + c.delta)[:, None].double() - items[None].double()).norm(dim=-1)
    assert float(moved.min()) >= 1.0 * (1 - 1e-5)


@pytest.mark.e2e
def test_spec_builds_through_the_registry_and_the_run_equals_the_exhaustive_one(tmp_path):
    """A gmm run with a faiss exact index from a spec equals the exhaustive one to float tolerance: the two sum the
    pushes in other orders (and ExactProtected takes far items from the expansion), so not bit for bit."""
    import xarray as xr

    from spell_lab import store
    from spell_lab.methods import spell_method
    from spell_lab.models.gmm import GaussianMixture
    from spell_lab.run.launch import run_generation

    assert set(INDEXES) == {"exact", "faiss"}
    model = GaussianMixture()
    g = torch.Generator().manual_seed(1)
    modes = model.modes()
    items = modes[torch.randint(len(modes), (2000,), generator=g)] + 0.6 * torch.randn(2000, *model.sample_shape, generator=g)
    path = tmp_path / "set.npy"
    np.save(path, items.numpy())
    spec = protected_spec(path, "faiss", exact=True, nprobe=2, cache_margin=1.0)
    assert isinstance(build_index(spec, items), FaissProtected)
    method = spell_method(1.5, 1.0)
    settings = [Setting("exhaustive", method, protected_spec(path), rounds=(4, 4), conditions=(0, 1)),
                Setting("faiss", method, spec, rounds=(4, 4), conditions=(0, 1))]
    result = run_generation(experiment="faiss", settings=settings, model=model, model_spec={"name": "gmm"},
                            sampler="ddim", steps=6, guidance=model.default_guidance, out=tmp_path / "run",
                            config={}, progress=False)
    runs = store.open_run(result.run_dir)
    a, b = runs["exhaustive"].load(), runs["faiss"].load()
    assert int(a["active_protected"].sum()) > 0
    assert np.array_equal(a["active_protected"].values, b["active_protected"].values)
    xr.testing.assert_allclose(a["x0"], b["x0"], rtol=1e-5, atol=1e-5)


def test_bound_never_exceeds_the_distance_and_is_tight_on_the_sets_span(clustered, exact_index):
    """Exact search keeps every item whose bound ||e(x) - e(y)|| is below r, so it is exact iff the bound never
    exceeds the true distance: checked on a full-rank set (the bound is loose there) with queries near and far, and on
    a set spanning 8 dims, where it equals the distance and the candidates are the shields and the nearest only."""
    items, q = clustered
    b = exact_index.bound
    assert torch.allclose(b.basis.T @ b.basis, torch.eye(b.basis.shape[1], dtype=torch.float64), atol=1e-12)
    loose = False
    for x in (q, 3 * q, q + 40 * torch.randn(q.shape, generator=torch.Generator().manual_seed(2))):
        lb = torch.cdist(b.embed(x.double()), b.embed(items.double()))
        d = torch.cdist(x.double(), items.double())
        assert (lb <= d * (1 + 1e-12) + 1e-9).all()
        loose |= bool((lb < 0.8 * d).any())
    assert loose  # full rank: the 32 directions do not hold all of it, and the search is still exact (tests above)
    g = torch.Generator().manual_seed(4)
    span = torch.linalg.qr(torch.randn(64, 8, generator=g, dtype=torch.float64))[0].float()
    low = (5 * torch.randn(3000, 8, generator=g)) @ span.T + 2.0
    x = low[:40] + 0.6 * torch.randn(40, 8, generator=g) @ span.T
    ix = FaissProtected(low, exact=True)
    e = ix.bound
    lb = torch.cdist(e.embed(x.double()), e.embed(low.double()))
    assert torch.allclose(lb, torch.cdist(x.double(), low.double()), atol=1e-3)
    c = ix(x, 6.0, 1.0, None)
    same_correction(ExactProtected(low)(x, 6.0, 1.0, None), c, 6.0)
    assert int(c.active.sum()) > 2 * len(x) and ix.candidates <= int(c.active.sum()) + len(x)


def test_cache_verifies_only_the_candidates_whose_bound_is_below_r():
    """The cache keeps the centers within r + m of its anchor, but verifies only those whose bound to the new x0_hat
    is below r (and each row's lowest): no more than a fresh exact search (plus one per row), and still exact."""
    g = torch.Generator().manual_seed(6)
    span = torch.linalg.qr(torch.randn(64, 8, generator=g, dtype=torch.float64))[0].float()
    low = (5 * torch.randn(3000, 8, generator=g)) @ span.T
    x = low[:40] + 0.6 * torch.randn(40, 8, generator=g) @ span.T
    cached = FaissProtected(low, exact=True, cache_margin=4.0)
    plain, ref, r = cached.with_search(exact=True), ExactProtected(low), 6.0
    for step in range(6):
        x = x + 0.3 * torch.nn.functional.normalize(torch.randn(40, 8, generator=g) @ span.T, dim=1)
        c = cached(x, r, 1.0, None)
        same_correction(ref(x, r, 1.0, None), c, r)
        plain(x, r, 1.0, None)
    within = int((torch.cdist(x.double(), low.double()) < r + 4.0).sum())  # what an unpruned cache would verify
    assert cached.candidates <= plain.candidates + 6 * len(x) < 6 * within // 2


def test_dense_shields_switch_to_a_scan_of_every_list_and_stay_exact(clustered, monkeypatch):
    """Where the bound leaves more candidates than a pass over the set costs (forced here), the exact search scans
    every inverted list with a float32 GEMM and verifies from differences: the same shields, pushes and float64
    result as the exhaustive references, and the nearest distance everywhere."""
    from spell_lab import protect

    items, q = clustered
    ix, scans = FaissProtected(items, exact=True), []
    real_scan = FaissProtected._scan
    monkeypatch.setattr(FaissProtected, "_scan", lambda self, *a: scans.append(1) or real_scan(self, *a))
    monkeypatch.setattr(protect, "SCAN_RATIO", 0)  # never: the bound's candidates are verified
    ix(q, RADII[1], 1.0, None)
    assert not scans
    monkeypatch.setattr(protect, "SCAN_RATIO", 10**9)  # always
    monkeypatch.setattr(protect, "SCAN_BLOCK", 300)  # several blocks of lists
    ref, cached = ExactProtected(items), ix.with_search(exact=True, cache_margin=1.0)
    for r in RADII:
        e, c = ref(q, r, 1.0, None), ix(q, r, 1.0, None)
        same_correction(e, c, r)
        assert torch.allclose(c.nearest, e.nearest, rtol=1e-5)  # the scan sees every item: nearest above r too
        assert (c.cells_probed == ix.index.nlist).all()
        same_correction(e, cached(q, r, 1.0, None), r)  # the cached search scans too, skipping its prune
    c = ix(q.double(), RADII[1], 1.6, None)
    f64 = correction_reference(q.double(), items.double(), RADII[1], 1.6)
    assert c.delta.dtype == torch.float64 and torch.equal(c.active, f64.active)
    assert torch.allclose(c.delta, f64.delta, rtol=1e-6, atol=1e-9)
    assert len(scans) == 2 * len(RADII) + 1 and ix.candidates >= int(f64.active.sum())
