"""The fast prdc engine (spell_lab/metrics/prdc_engine.py) against the definitions (`prdc_reference`), and its parts."""

import importlib

import numpy as np
import pytest
from test_metrics import KEYS, assert_same, gaussian_sets, reference_prdc

from spell_lab.metrics.prdc import prdc, prdc_reference

P = importlib.import_module("spell_lab.metrics.prdc_engine")


def sets(kind: str, rng):
    if kind == "gaussian":
        return rng.standard_normal((300, 16)), 1.1 * rng.standard_normal((250, 16)) + 0.1
    if kind == "clusters":  # uneven radii: tight and wide clusters
        centres = 6 * rng.standard_normal((5, 16))
        real = centres[rng.integers(0, 5, 300)] + rng.standard_normal((300, 16)) * rng.choice([0.1, 1, 3], (300, 1))
        return real, centres[rng.integers(0, 5, 250)] + rng.standard_normal((250, 16))
    if kind == "copies within sets":  # zero distances between copies, real-fake distances all distinct
        return rng.standard_normal((60, 8))[rng.integers(0, 60, 300)], rng.standard_normal((50, 8))[rng.integers(0, 50, 250)]
    # copies within and across sets, on a grid of quarters: every distance is exact in float64 whatever the formula,
    # so the ties at the radii (a fake copy of a real neighbour) are exact ties in both and the strict '<' decides
    grid = rng.integers(-8, 8, (60, 8)) / 4
    return grid[rng.integers(0, 60, 300)], np.r_[grid[rng.integers(0, 60, 100)], rng.integers(-8, 8, (150, 8)) / 4]


def assert_equal(ours, ref):
    assert set(ours) == set(KEYS)
    for key in ("precision", "recall", "coverage"):  # shares of counts: the same decisions give the same float
        assert ours[key] == ref[key], (key, ours[key], ref[key])
    assert ours["density"] == pytest.approx(ref["density"], rel=1e-12, abs=0)  # 1/k and the mean in another order


@pytest.mark.parametrize("kind", ["gaussian", "clusters", "copies within sets", "copies across sets"])
@pytest.mark.parametrize("k", [1, 3, 5])
def test_engine_matches_the_definitions(kind, k):
    real, fake = sets(kind, np.random.default_rng(k))
    ref = prdc_reference(real, fake, k)
    assert_equal(prdc(real, fake, k=k, block=64), ref)  # many blocks, merges and ragged edges
    assert_equal(prdc(real, fake, k=k), ref)  # one block


def test_engine_matches_the_definitions_on_float32_features():
    real, fake = (x.astype(np.float32) for x in sets("gaussian", np.random.default_rng(4)))
    assert_equal(prdc(real, fake, k=3, block=64), prdc_reference(real, fake, 3))


def test_engine_result_does_not_depend_on_the_worker_count(monkeypatch):
    real, fake = sets("clusters", np.random.default_rng(5))
    many = prdc(real, fake, k=3, block=32)
    monkeypatch.setattr(P, "_workers", lambda: 1)  # blocks in submission order, one at a time
    assert prdc(real, fake, k=3, block=32) == many


def test_reference_hand_computed():
    # 1-D: real 0..3 (radius 1 each, k=1), fake 0.5 and 4.0 (radius 3.5 each); 4.0 lies exactly on real 3's sphere
    real, fake = np.array([[0.0], [1.0], [2.0], [3.0]]), np.array([[0.5], [4.0]])
    assert prdc_reference(real, fake, k=1) == dict(precision=0.5, recall=1.0, density=1.0, coverage=0.5)


def test_reference_matches_package():
    real, fake = gaussian_sets(np.float64, n=300, m=250, d=32)
    assert_same(prdc_reference(real, fake, 5), reference_prdc(real, fake, 5))


# -------------------------------------------------------------------------------- the engine's parts, patched


def test_prdc_exact_whatever_the_screen_does_within_its_bound(monkeypatch):
    """Perturb every screened value by up to its error bound: the certified decisions must not change."""
    real, fake = gaussian_sets(np.float32, n=200, m=150, d=16)
    ref = reference_prdc(real, fake, 3)
    mu = real.mean(0, dtype=np.float64)
    R, F = P._Screened(real, mu), P._Screened(fake, mu)
    e = min(P.screen_error(R, R), P.screen_error(F, F), P.screen_error(R, F))  # no block's bound is smaller
    screen, rng = P.screen, np.random.default_rng(0)

    def noisy(A, I, cols, out):
        s = screen(A, I, cols, out)
        s += (rng.random(s.shape, dtype=np.float32) * 2 - 1) * np.float32(0.999 * e)
        return s

    monkeypatch.setattr(P, "screen", noisy)
    assert_same(prdc(real, fake, k=3, block=48), ref)
    # a huge bound leaves nothing certain: every row and pair goes through the exact float64 path
    monkeypatch.setattr(P, "screen_error", lambda A, B: 1e6)
    assert_same(prdc(real, fake, k=3, block=48), ref)


@pytest.mark.parametrize("block", [64, 300])  # many blocks with batched merges, and a single diagonal block
def test_nearest_lists_match_faiss(block, monkeypatch):
    faiss = pytest.importorskip("faiss")
    monkeypatch.setattr(P, "FLUSH", 500)  # merge often: each merge tightens the thresholds
    real, _ = gaussian_sets(np.float32, n=300, m=1, d=16)
    S = P._Screened(real, np.zeros(16))
    [(v, i)] = P.nearest_lists([S], [9], block=block)
    v_ref, i_ref = faiss.knn(real, real, 9)  # an independent exhaustive search, also float32
    assert np.abs(v - v_ref).max() <= 2 * P.screen_error(S, S) and (i == i_ref).mean() > 0.99
    assert (i[:, 0] == np.arange(300)).all() and (v[:, 1:] >= v[:, :-1]).all()  # self first, sorted


@pytest.mark.parametrize("spread", [0.01, 10.0])  # alike thresholds (one comparison) and uneven ones (the fallback)
def test_pairs_below_finds_exactly_the_pairs_under_either_threshold(spread):
    rng = np.random.default_rng(3)
    s = rng.random((300, 500), dtype=np.float32) * 100  # about 1% of entries under a threshold near 1
    row = (1 + spread * rng.random(300)).astype(np.float32)
    col = (1 + spread * rng.random(500)).astype(np.float32)
    if spread > 1:
        col[7] = np.inf  # a column with no bound yet (a narrow diagonal block)
    i, j, v = P.pairs_below(s, row, col, P._Workspace())
    want = (s <= row[:, None]) | (s <= col[None, :])
    assert sorted(zip(i.tolist(), j.tolist())) == sorted(zip(*np.nonzero(want)))
    assert (v == s[i, j]).all()


def test_prdc_leaves_the_blas_thread_setting_as_it_found_it():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    before = [(x["internal_api"], x["num_threads"]) for x in threadpoolctl.threadpool_info()]
    real, fake = gaussian_sets(np.float32, n=300, m=300, d=16)
    prdc(real, fake, k=3, block=64)  # workers run BLAS single-threaded while it lasts
    assert [(x["internal_api"], x["num_threads"]) for x in threadpoolctl.threadpool_info()] == before
