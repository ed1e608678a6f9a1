"""spell_lab.metrics against the reference packages (prdc 0.2, vendi-score 0.0.3), hand-computed cases and closed forms."""

import math
import sys
import types

import numpy as np
import pytest
import scipy.linalg
import torch

from spell_lab.metrics import (
    DigitsFeatures,
    DINOv2Features,
    InceptionFeatures,
    RawFeatures,
    frechet_distance,
    per_condition,
    prdc,
    prdc_reference,
    vendi,
)
from spell_lab.metrics.prdc_engine import BLOCK

KEYS = ("precision", "recall", "density", "coverage")


def reference_prdc(real, fake, k):
    compute_prdc = pytest.importorskip("prdc").compute_prdc
    return {key: float(v) for key, v in compute_prdc(real, fake, k).items()}


def assert_same(ours, ref, tol=1e-6):
    assert set(ours) == set(KEYS)
    for key in KEYS:
        assert abs(ours[key] - ref[key]) <= tol, (key, ours[key], ref[key])


def gaussian_sets(dtype, n=500, m=400, d=64, seed=0):
    rng = np.random.default_rng(seed)
    real = rng.standard_normal((n, d)).astype(dtype)
    fake = (1.1 * rng.standard_normal((m, d)) + 0.1).astype(dtype)
    return real, fake


# --------------------------------------------------------------------------------------------------- prdc


# one block, and many (symmetric blocks, merges, ragged edges)
@pytest.mark.parametrize("dtype, block", [(np.float32, BLOCK), (np.float64, BLOCK), (np.float32, 64)])
def test_prdc_matches_package(dtype, block):
    real, fake = gaussian_sets(dtype)
    assert_same(prdc(real, fake, k=5, block=block), reference_prdc(real, fake, 5))


@pytest.mark.parametrize(
    "kind", ["integers", "offset", "duplicates", "clusters"]
)  # exact ties at the radii, cancellation, zero distances, uneven radii
@pytest.mark.parametrize("k", [1, 3])
def test_prdc_matches_package_on_hard_data(kind, k):
    rng = np.random.default_rng(1)
    if kind == "integers":  # distances take few values: ties decide through the strict '<'
        real, fake = rng.integers(0, 3, (300, 8)), rng.integers(0, 3, (250, 8))
    elif kind == "offset":  # a large common offset: the screen's bound stays tight because of centring
        real, fake = 1000 + rng.standard_normal((300, 32)), 1000.2 + rng.standard_normal((250, 32))
    elif kind == "duplicates":  # 64 distinct points, exact arithmetic: zero radii and real-fake copies, no noise
        real, fake = rng.integers(0, 2, (300, 6)), rng.integers(0, 2, (250, 6))
    else:
        centres = 6 * rng.standard_normal((5, 16))
        real = centres[rng.integers(0, 5, 300)] + rng.standard_normal((300, 16)) * rng.choice([0.1, 1, 3], (300, 1))
        fake = centres[rng.integers(0, 5, 250)] + rng.standard_normal((250, 16))
    real, fake = real.astype(np.float32), fake.astype(np.float32)
    assert_same(prdc(real, fake, k=k, block=128), reference_prdc(real, fake, k))


def test_prdc_hand_computed():
    # 1-D: real 0..3 (radius 1 each, k=1), fake 0.5 and 4.0 (radius 3.5 each). 4.0 lies exactly on real 3's
    # sphere: outside, as balls are open.
    real, fake = np.array([[0.0], [1.0], [2.0], [3.0]]), np.array([[0.5], [4.0]])
    out = prdc(real, fake, k=1)
    assert out == dict(precision=0.5, recall=1.0, density=1.0, coverage=0.5)
    # density counts the balls: fake 0.5 lies in the balls of real 0 and 1 -> 2 / (k M) = 2 / 2.
    # The package needs k + 2 samples per set; the same configuration twice, 10 apart, has the same metrics.
    twice = reference_prdc(np.r_[real, real + 10], np.r_[fake, fake + 10], 1)
    assert_same(out, twice)


def test_prdc_float_duplicates_are_at_distance_zero():
    # every point has k exact copies, so all radii are 0, and no point is inside an open ball of radius 0;
    # the package decides these by rounding noise between copies (see the module docstring)
    x = np.repeat(np.random.default_rng(9).standard_normal((40, 16)).astype(np.float32), 4, axis=0)
    assert prdc(x, x.copy(), k=3) == dict(precision=0.0, recall=0.0, density=0.0, coverage=0.0)
    assert prdc(x, x + 1e-3, k=3)["precision"] == 0.0


def test_prdc_identical_sets_and_torch_input():
    real, fake = gaussian_sets(np.float32, n=200, m=200, d=8)
    same = prdc(real, real, k=4)
    assert same["precision"] == same["recall"] == same["coverage"] == 1.0 and same["density"] == 1.0
    assert prdc(torch.from_numpy(real), torch.from_numpy(fake), k=4) == prdc(real, fake, k=4)


def test_prdc_needs_k_plus_one_samples_not_k_plus_two():
    real, fake = gaussian_sets(np.float32, n=6, m=6, d=4)
    out = prdc(real, fake, k=5)  # each point's 5th neighbour is the last other point
    assert all(0 <= out[key] <= 1 for key in ("precision", "recall", "coverage"))


@pytest.mark.parametrize(
    "real, fake, k, match",
    [
        (np.full((10, 3), np.nan), np.zeros((10, 3)), 2, "NaN or inf in 10 of 10 rows"),
        (np.zeros((10, 3)), np.r_[np.zeros((9, 3)), [[0, np.inf, 0]]], 2, "fake features contain NaN or inf.*row 9"),
        (np.zeros((5, 3)), np.zeros((10, 3)), 5, "real has 5 samples but k=5 needs at least k \\+ 1 = 6"),
        (np.zeros((10, 3)), np.zeros((10, 4)), 2, "different widths \\(3 vs 4\\)"),
        (np.zeros(10), np.zeros(10), 2, "must be 2-D"),
        (np.zeros((10, 3)), np.zeros((10, 3)), 0, "k must be a positive integer"),
    ],
)
@pytest.mark.parametrize("fn", [prdc, prdc_reference])
def test_prdc_bad_input(real, fake, k, match, fn):
    with pytest.raises(ValueError, match=match):
        fn(real, fake, k=k)


# -------------------------------------------------------------------------------------------------- vendi


@pytest.mark.parametrize("n, d", [(300, 16), (20, 64)])  # N > D (dual, D x D) and N < D (N x N kernel)
@pytest.mark.parametrize("q", [1, 2, 0.5, "inf"])
def test_vendi_matches_package(n, d, q):
    vs = pytest.importorskip("vendi_score.vendi")
    x = np.random.default_rng(2).standard_normal((n, d)) + 0.5
    ours = vendi(x, q=q)
    assert ours == pytest.approx(vs.score_dual(x, q=q), abs=1e-4)
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    assert ours == pytest.approx(vs.score_K(xn @ xn.T, q=q), abs=1e-4)
    if q == 1:  # score_X ignores its q (it passes q=1 on), so it is a reference for q = 1 only
        assert ours == pytest.approx(vs.score_X(x), abs=1e-4)


def test_vendi_hand_computed():
    assert vendi(np.ones((50, 8))) == pytest.approx(1.0)  # one sample, repeated
    assert vendi(3 * np.eye(6)) == pytest.approx(6.0)  # orthogonal: every sample distinct, whatever q
    assert vendi(np.eye(6), q=math.inf) == pytest.approx(6.0)
    assert vendi(np.eye(6), q=2) == pytest.approx(6.0)
    two = np.r_[np.tile([1.0, 0.0], (30, 1)), np.tile([0.0, 2.0], (10, 1))]  # eigenvalues 3/4 and 1/4
    assert vendi(two) == pytest.approx(math.exp(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25))))
    assert vendi(two, q=0) == pytest.approx(2.0)  # the rank: rounding noise does not count


def test_vendi_bad_input():
    with pytest.raises(ValueError, match="NaN"):
        vendi(np.array([[1.0, np.nan], [1.0, 2.0]]))
    with pytest.raises(ValueError, match="row 1 is all zeros"):
        vendi(np.array([[1.0, 0.0], [0.0, 0.0]]))
    with pytest.raises(ValueError, match="q must be >= 0"):
        vendi(np.eye(3), q=-1)


# ------------------------------------------------------------------------------------------------ frechet


def exact_moments(n, mean, sqrt_cov, seed):
    """n samples whose sample mean and (N - 1) covariance are exactly `mean` and sqrt_cov @ sqrt_cov.T."""
    z = np.random.default_rng(seed).standard_normal((n, len(mean)))
    z -= z.mean(0)
    z = z @ np.linalg.inv(np.linalg.cholesky(np.cov(z, rowvar=False))).T  # whitened: sample covariance I
    return mean + z @ sqrt_cov.T


def test_frechet_closed_form_for_commuting_gaussians():
    rng = np.random.default_rng(3)
    d = 6
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))  # shared eigenvectors: the covariances commute
    a, b = rng.uniform(0.1, 4, d), rng.uniform(0.1, 4, d)
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    x = exact_moments(400, mu1, q @ np.diag(np.sqrt(a)), 4)
    y = exact_moments(300, mu2, q @ np.diag(np.sqrt(b)), 5)
    closed = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(x, y) == pytest.approx(closed, rel=1e-10)


def test_frechet_of_a_set_with_itself_is_zero_and_matches_pytorch_fid_formula():
    rng = np.random.default_rng(6)
    x, y = rng.standard_normal((500, 32)) @ rng.standard_normal((32, 32)), rng.standard_normal((400, 32)) + 0.3
    assert abs(frechet_distance(x, x)) < 1e-9 * np.trace(np.cov(x, rowvar=False))
    # pytorch-fid: scipy's sqrtm of S1 S2
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    ref = np.sum((x.mean(0) - y.mean(0)) ** 2) + np.trace(s1 + s2 - 2 * scipy.linalg.sqrtm(s1 @ s2).real)
    assert frechet_distance(x.astype(np.float32), y.astype(np.float32)) == pytest.approx(ref, rel=1e-5)
    assert frechet_distance(torch.from_numpy(x), torch.from_numpy(y)) == pytest.approx(ref, rel=1e-10)


def test_frechet_singular_covariances_are_fine():
    x = np.random.default_rng(7).standard_normal((10, 50))  # rank 9 covariance in 50 dimensions
    assert abs(frechet_distance(x, x)) < 1e-9 and frechet_distance(x, x + 1) == pytest.approx(50.0)


def test_frechet_bad_input():
    with pytest.raises(ValueError, match="different widths"):
        frechet_distance(np.zeros((5, 3)), np.zeros((5, 2)))
    with pytest.raises(ValueError, match="at least 2"):
        frechet_distance(np.zeros((1, 3)), np.zeros((5, 3)))
    with pytest.raises(ValueError, match="NaN"):
        frechet_distance(np.zeros((5, 3)), np.full((5, 3), np.nan))


# ------------------------------------------------------------------------------------------ per condition


def test_per_condition_averages_within_condition_values():
    rng = np.random.default_rng(8)
    real, fake = rng.standard_normal((90, 6)), rng.standard_normal((60, 6)) + 0.2
    rc, fc = np.repeat([0, 1, 2], 30), np.repeat([0, 1, 2], 20)
    mean, values = per_condition(prdc, real, fake, rc, fc, k=3)
    for c in (0, 1, 2):
        assert values[c] == prdc(real[rc == c], fake[fc == c], k=3)
    assert mean["recall"] == pytest.approx(np.mean([values[c]["recall"] for c in (0, 1, 2)]))
    assert mean != prdc(real, fake, k=3)  # not the pooled metric
    mean_fd, _ = per_condition(frechet_distance, torch.from_numpy(real), torch.from_numpy(fake), torch.from_numpy(rc), fc)
    assert mean_fd == pytest.approx(np.mean([frechet_distance(real[rc == c], fake[fc == c]) for c in (0, 1, 2)]))
    mean_v, values_v = per_condition(vendi, None, fake, None, fc)  # one-set metric
    assert set(values_v) == {0, 1, 2} and mean_v == pytest.approx(np.mean(list(values_v.values())))


def test_per_condition_needs_real_samples_of_every_generated_condition():
    with pytest.raises(ValueError, match="condition 2 has 5 fake samples but no real ones"):
        per_condition(prdc, np.zeros((10, 2)), np.zeros((10, 2)), [0] * 5 + [1] * 5, [0] * 5 + [2] * 5)
    with pytest.raises(ValueError, match="one condition per sample"):
        per_condition(prdc, np.zeros((10, 2)), np.zeros((10, 2)), [0] * 10, [0] * 9)


# --------------------------------------------------------------------------------------------- extractors


def test_raw_features_flatten_in_batches():
    x = torch.randn(10, 2, 3, 3)
    assert torch.equal(RawFeatures(batch_size=3)(x), x.reshape(10, -1))


class _StubClassifier(torch.nn.Module):
    def features(self, x):
        return x.flatten(1)[:, :5] * 2


def test_digits_features_load_the_classifier_lazily(monkeypatch):
    calls = []
    stub = types.ModuleType("spell_lab.models.digits")
    stub.load_classifier = lambda device="cpu": calls.append(device) or _StubClassifier()
    monkeypatch.setitem(sys.modules, "spell_lab.models.digits", stub)
    x = torch.randn(7, 1, 4, 4)
    out = DigitsFeatures(batch_size=2)(x)
    assert calls == ["cpu"] and torch.equal(out, x.flatten(1)[:, :5] * 2)


def test_digits_features_with_the_shipped_classifier():
    digits = pytest.importorskip("spell_lab.models.digits")
    try:
        clf = digits.load_classifier()
    except (FileNotFoundError, ValueError) as err:
        pytest.skip(f"digits classifier weights not available yet: {err}")
    x = torch.randn(5, *clf.space.sample_shape)
    assert DigitsFeatures()(x).shape == (5, clf.feature_dim)


class _TinyDetector(torch.nn.Module):  # the calling convention of StyleGAN3/EDM's FID detector
    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        assert x.dtype == torch.uint8
        f = x.float().mean(dim=(2, 3))
        return f if return_features else f.sum(1, keepdim=True)


def test_inception_features_from_a_torchscript_file(tmp_path):
    path = tmp_path / "detector.pt"
    torch.jit.script(_TinyDetector()).save(str(path))
    images = torch.rand(5, 1, 8, 8) * 2 - 1  # float, [-1, 1], grayscale
    out = InceptionFeatures(path, batch_size=2)(images)
    expected = ((images + 1) / 2 * 255).round().mean(dim=(2, 3)).expand(5, 3)
    assert out.shape == (5, 3) and torch.allclose(out, expected)
    nhwc_u8 = torch.randint(0, 256, (4, 8, 8, 3), dtype=torch.uint8)  # the project's to_images layout
    assert torch.allclose(InceptionFeatures(path)(nhwc_u8), nhwc_u8.float().mean(dim=(1, 2)))
    assert InceptionFeatures(path, call_kwargs={})(nhwc_u8).shape == (4, 1)


def test_inception_and_dinov2_missing_or_wrong_files_say_what_to_pass(tmp_path):
    with pytest.raises(FileNotFoundError, match="Inception weights not found.*inception-2015-12-05.pt"):
        InceptionFeatures(tmp_path / "missing.pt")
    with pytest.raises(FileNotFoundError, match="DINOv2 weights not found.*checkpoint folder"):
        DINOv2Features(tmp_path / "missing")
    (tmp_path / "junk.pt").write_bytes(b"not torchscript")
    with pytest.raises(ValueError, match="not a TorchScript module"):
        InceptionFeatures(tmp_path / "junk.pt")


def test_dinov2_features_from_a_local_checkpoint(tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.Dinov2Config(
        hidden_size=16, num_hidden_layers=1, num_attention_heads=2, mlp_ratio=2, image_size=28, patch_size=14
    )
    transformers.Dinov2Model(config).save_pretrained(tmp_path)
    images = torch.randint(0, 256, (3, 8, 8, 3), dtype=torch.uint8)
    out = DINOv2Features(tmp_path, image_size=28, batch_size=2)(images)
    assert out.shape == (3, 16) and torch.isfinite(out).all()
