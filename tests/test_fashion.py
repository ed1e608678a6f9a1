"""The built-in `fashion` model: its data reader, its schedule against diffusers' DDIM, its shipped weights, and the
two paths (built-in sampler, diffusers DiTPipeline over the shipped directory) giving the same outputs."""

from __future__ import annotations

import gzip
import subprocess
import sys

import numpy as np
import pytest
import torch

from spell_lab.models import fashion as fm
from spell_lab.models import fashion_data as fd


def _write_idx(path, array: np.ndarray, gz: bool) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    (gzip.open if gz else open)(path, "wb").write(header + array.astype(np.uint8).tobytes())


@pytest.fixture()
def tiny_dataset(tmp_path):
    rng = np.random.default_rng(0)
    for split, n, gz in (("train", 40, True), ("test", 30, False)):
        images, labels = rng.integers(0, 256, (n, 28, 28)), np.arange(n) % 10
        stem_i, stem_l = fd.FILES[split]
        _write_idx(tmp_path / (stem_i + (".gz" if gz else "")), images, gz)
        _write_idx(tmp_path / (stem_l + (".gz" if gz else "")), labels, gz)
    return tmp_path


def test_idx_round_trip_gz_and_plain(tiny_dataset):
    rng = np.random.default_rng(0)
    train_images = rng.integers(0, 256, (40, 28, 28)).astype(np.uint8)
    images, labels = fd.load_split("train", tiny_dataset)
    assert images.dtype == np.uint8 and np.array_equal(images, train_images)
    assert np.array_equal(labels, np.arange(40) % 10)
    test_images, test_labels = fd.load_split("test", tiny_dataset)
    assert test_images.shape == (30, 28, 28) and np.array_equal(test_labels, np.arange(30) % 10)


def test_truncated_idx_is_refused(tiny_dataset):
    f = tiny_dataset / (fd.FILES["test"][0])
    f.write_bytes(f.read_bytes()[:-5])
    with pytest.raises(ValueError, match="truncated"):
        fd.load_split("test", tiny_dataset)


def test_missing_dataset_names_both_ways(tmp_path):
    with pytest.raises(fd.DatasetMissing) as err:
        fd.load_split("train", tmp_path)
    assert "apt-get install dataset-fashion-mnist" in str(err.value) and "--data DIR" in str(err.value)


def test_stratified_part_is_balanced_and_seeded():
    labels = np.repeat(np.arange(10), 50)
    idx = fd.stratified_part(labels, 7, seed=3)
    assert np.bincount(labels[idx]).tolist() == [7] * 10
    assert np.array_equal(idx, fd.stratified_part(labels, 7, seed=3))
    assert not np.array_equal(idx, fd.stratified_part(labels, 7, seed=4))


def test_train_command_without_dataset_is_one_line_and_creates_nothing(tmp_path):
    work = tmp_path / "work"
    r = subprocess.run([sys.executable, "-m", "spell_lab.models.fashion_train", "--data", str(tmp_path / "none"),
                        "--work", str(work)], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "apt-get install dataset-fashion-mnist" in r.stderr
    assert not work.exists()


# ----------------------------------------------------------------------------------------------- the schedule


def test_schedule_equals_diffusers_ddim():
    """abar at every grid point and the grid itself are those of diffusers' DDIM with the shipped config."""
    from diffusers import DDIMScheduler

    sched = DDIMScheduler(**fm.scheduler_config())
    ours = fm.LatentDiffusionSchedule()
    for steps in (50, 10, 7):
        sched.set_timesteps(steps)
        grid = ours.grid(steps)
        assert torch.equal(grid[:-1] * 1000, sched.timesteps.double()) and grid[-1] == 0
        alpha, sigma = ours.alpha_sigma(grid[:-1])
        abar = sched.alphas_cumprod[sched.timesteps].double()
        # diffusers takes the cumulative product in float32 (3.6e-7 off float64 after 1,000 factors)
        assert torch.allclose(alpha**2, abar, rtol=0, atol=1e-6) and torch.allclose(sigma**2, 1 - abar, rtol=0, atol=1e-6)
    a0, s0 = ours.alpha_sigma(torch.tensor(0.0))
    assert a0 == 1 and s0 == 0  # the last step returns x0_hat (set_alpha_to_one)


def test_schedule_paper_noise_levels():
    """LD's t = 0.8 and 0.6 are sigma/alpha = 5.11 and 2.28 (design document, 'Time and noise level')."""
    a, s = fm.LatentDiffusionSchedule().alpha_sigma(torch.tensor([0.8, 0.6]))
    assert torch.allclose(s / a, torch.tensor([5.11, 2.28], dtype=torch.float64), atol=0.01)


# ------------------------------------------------------------------------------------------- the shipped model


@pytest.fixture(scope="module")
def model():
    return fm.load_fashion()


def test_shipped_weights_fit_the_budget():
    total = sum(f.stat().st_size for f in fm.WEIGHTS_DIR.rglob("*") if f.is_file())
    assert total <= 20 * 2**20, f"fashion weights take {total / 2**20:.1f} MiB (budget 20)"
    assert (fm.WEIGHTS_DIR / "heldout.npz").stat().st_size <= 2 * 2**20


def test_shipped_heldout_part(tmp_path):
    images, labels, which = fd.heldout(prefer_full=False)
    assert images.dtype == np.uint8 and images.shape[1:] == (28, 28)
    assert np.bincount(labels).tolist() == [len(labels) // 10] * 10 and "shipped" in which


def test_encode_decode_round_trip(model):
    images, labels, _ = fd.heldout(prefer_full=False)
    x = fm.pad_images(images[:64])
    z = model.encode(x)
    assert z.shape == (64, *model.sample_shape)
    assert (model.decode(z).clamp(-1, 1) - x).pow(2).mean() < 0.05  # a VAE, not an identity; measured ~0.01


def test_classifier_reads_real_and_decoded_images(model):
    images, labels, _ = fd.heldout(prefer_full=False)
    clf = fm.load_classifier()
    x = fm.pad_images(images)
    with torch.no_grad():
        acc = (clf(x).argmax(1) == torch.from_numpy(labels)).float().mean()
    assert acc > 0.85


@pytest.mark.parametrize("guidance,radius", [(1.0, 0.0), (2.0, 30.0)])
def test_builtin_and_diffusers_paths_agree(model, guidance, radius):
    """The shipped directory through diffusers' DiTPipeline + SpellScheduler gives the built-in sampler's outputs
    on the same seeds, SPELL on (intra-batch, active at this radius), to float32 tolerance."""
    from spell_lab.diffusers.pipelines import generate_pipeline, load_pipeline
    from spell_lab.repellency import Spell
    from spell_lab.samplers import generate

    cond, seeds = [3, 3, 3, 3, 7, 7], [0, 1, 2, 3, 4, 5]
    ours = generate(model, torch.tensor(cond), seeds, sampler="ddim", steps=10, guidance=guidance,
                    spell=Spell.build(radius, 1.0, intra_batch=True))
    pipe = load_pipeline(str(fm.WEIGHTS_DIR), device="cpu")
    theirs = generate_pipeline(pipe, cond, seeds, steps=10, guidance=guidance,
                               spell_kwargs=dict(radius=radius, intra_batch=True), decode=False)
    assert (ours.x0 - theirs.x0).abs().max() <= 1e-4 * ours.x0.abs().max()
    active = ours.records["active_shields"].sum()
    assert active == theirs.records["active_shields"].sum()
    assert (active > 0) == (radius > 0)


# ------------------------------------------------------------------------- the latent origin and the condition


def test_centring_the_latent_space_is_exact():
    """Folding a per-channel offset into the VAE's 1x1 convolutions moves the latents and leaves decoding unchanged."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(**fm.vae_config()).eval()
    x = torch.rand(3, 1, 32, 32) * 2 - 1
    offset = torch.tensor([0.5, -1.0, 2.0, 0.3])
    with torch.no_grad():
        before = vae.encode(x).latent_dist
        decoded = vae.decode(before.mean).sample
        fm.centre_latent_space(vae, offset)
        after = vae.encode(x).latent_dist
        torch.testing.assert_close(after.mean, before.mean - offset.view(1, 4, 1, 1), rtol=0, atol=1e-6)
        torch.testing.assert_close(after.std, before.std, rtol=0, atol=0)
        torch.testing.assert_close(vae.decode(after.mean).sample, decoded, rtol=0, atol=1e-4)


def test_class_embeddings_stand_in_for_labels_in_every_block(model):
    x = torch.randn(4, *model.sample_shape, generator=torch.Generator().manual_seed(3))
    t, labels = torch.tensor(0.6), torch.tensor([0, 3, -1, 9])
    emb = model.embed_condition(labels)
    assert emb.shape == (4, len(model._label_tables) * model.transformer.inner_dim)
    assert torch.equal(model(x, t, emb), model(x, t, labels))
    moved = emb.clone()
    moved[:, -model.transformer.inner_dim:] += 1.0  # the last block's slice alone changes the output
    assert not torch.equal(model(x, t, moved), model(x, t, labels))
    assert torch.equal(model(x, t, labels), model(x, t, labels))  # no embedding is left behind by the hooks


def test_cads_runs_on_fashion_and_its_neutral_point_is_plain(model):
    from spell_lab.methods import resolve
    from spell_lab.samplers import generate

    cond, seeds = torch.tensor([0, 4, 8]), range(3)
    plain = generate(model, cond, seeds, steps=4, guidance=3.0)
    neutral = generate(model, cond, seeds, steps=4, guidance=3.0,
                       method=resolve({"name": "cads", "tau1": 1.0, "tau2": 1.0}))
    assert torch.equal(neutral.x0, plain.x0)
    cads = generate(model, cond, seeds, steps=4, guidance=3.0,
                    method=resolve({"name": "cads", "tau1": 0.2, "tau2": 0.7, "noise_scale": 1.0}))
    assert (cads.x0 - plain.x0).flatten(1).norm(dim=1).min() > 0  # every sample moved


def test_held_out_part_matches_a_requested_size():
    from spell_lab.models import reference_data

    x, cond, _, desc = reference_data("fashion", [0, 4], per_condition=16, seed=1)
    assert x.shape == (32, 4, 8, 8) and np.bincount(cond).tolist()[0] == 16 and set(cond) == {0, 4}
    again, _, _, _ = reference_data("fashion", [0, 4], per_condition=16, seed=1)
    assert torch.equal(x, again) and "16 per class (seed 1)" in desc
    _, every, _, _ = reference_data("fashion", [0])
    assert len(every) > 16  # unasked: every held-out image of the class


def test_analyses_measure_against_as_many_real_images_as_generated():
    """Coverage compares like with like: a group of 3 + 5 samples over classes 2 and 7 is scored against 5 real images
    of each class (the most of any condition), the same 5 as `reference_data` picks; digits keeps its fixed split."""
    from spell_lab.models import matched_reference, reference_data

    x, cond, _, desc = matched_reference("fashion", np.array([7, 2, 7, 7, 2, 7, 2, 7]))
    assert np.bincount(cond, minlength=8)[[2, 7]].tolist() == [5, 5] and "5 per class" in desc
    assert torch.equal(x, reference_data("fashion", [2, 7], per_condition=5)[0])
    _, digits_cond, _, _ = matched_reference("digits", np.array([3, 3]))
    assert len(digits_cond) == len(reference_data("digits", [3])[1]) > 2
