"""fashion's training set as the protected set, without the real dataset: a fake Fashion-MNIST directory (the four IDX
files in the real format, a few hundred random images) read through --data; the cache under XDG_CACHE_HOME."""

import time

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import command

from spell_lab.experiments import protection
from spell_lab.experiments.common import run_cli
from spell_lab.models import fashion_training_set as fts
from spell_lab.models.fashion import load_fashion, pad_images
from spell_lab.models.fashion_data import FILES, load_split
from spell_lab.models.registry import training_set

N_TRAIN, N_TEST = 240, 60


def write_idx(path, array: np.ndarray) -> None:
    """IDX: magic (0, 0, 0x08 = uint8, ndim), big-endian uint32 dims, the bytes."""
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    path.write_bytes(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


@pytest.fixture(scope="module")
def fake_data(tmp_path_factory):
    d = tmp_path_factory.mktemp("fake_fashion")
    rng = np.random.default_rng(0)
    for split, n in (("train", N_TRAIN), ("test", N_TEST)):
        images = np.zeros((n, 28, 28), np.uint8)
        images[:, 6:22, 8:20] = rng.integers(60, 256, (n, 16, 12))  # a bright block on black, as the garments
        write_idx(d / FILES[split][0], images)
        write_idx(d / FILES[split][1], (np.arange(n) % 10).astype(np.uint8))
    return d


@pytest.fixture(scope="module")
def model():
    return load_fashion()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    return tmp_path / "xdg" / "spell_lab" / "fashion_training_set"


def test_the_training_set_is_the_models_own_latents_and_the_second_call_reads_the_cache(fake_data, model, cache):
    images, _ = load_split("train", fake_data)
    first = training_set("fashion", model, None, 0, fake_data)
    assert first.shape == (N_TRAIN, 4, 8, 8) and first.dtype == np.float32
    assert torch.equal(torch.from_numpy(first), model.encode(pad_images(images)))  # as the model encodes, bit for bit
    assert len(list(cache.glob("*/seed0-n240.npy"))) == 1
    t = time.perf_counter()
    again = training_set("fashion", model, None, 0, fake_data)
    assert time.perf_counter() - t < 1.0 and np.array_equal(again, first)


def test_the_cache_holds_unscaled_latents_so_another_scaling_factor_reuses_it(fake_data, model, cache, monkeypatch):
    first = training_set("fashion", model, None, 0, fake_data)
    files = sorted(cache.rglob("*.npy"))
    monkeypatch.setattr(model, "scaling_factor", 2.5)
    other = training_set("fashion", model, None, 0, fake_data)
    assert sorted(cache.rglob("*.npy")) == files  # nothing encoded again
    unscaled = np.load(files[0])
    np.testing.assert_array_equal(other, (torch.from_numpy(unscaled) * 2.5).numpy())
    np.testing.assert_allclose(first / model.vae.config.scaling_factor, unscaled, rtol=1e-6)


def test_the_grown_set_is_seeded_warps_of_the_images_and_a_smaller_set_is_its_prefix(fake_data, model, cache):
    images, _ = load_split("train", fake_data)
    grown = training_set("fashion", model, 3 * N_TRAIN, 7, fake_data)
    assert grown.shape == (3 * N_TRAIN, 4, 8, 8)
    originals = training_set("fashion", model, None, 7, fake_data)
    assert np.array_equal(grown[:N_TRAIN], originals)  # the training images first
    warped = fts.images_in_space(images, N_TRAIN, 3 * N_TRAIN, 7)
    assert not torch.equal(warped[:N_TRAIN], pad_images(images))  # warped, not copied
    assert torch.equal(warped, fts.images_in_space(images, N_TRAIN, 3 * N_TRAIN, 7))  # the same seed: bit for bit
    assert not torch.equal(warped, fts.images_in_space(images, N_TRAIN, 3 * N_TRAIN, 8))  # another seed: other warps
    assert float((warped[:N_TRAIN] - pad_images(images)).abs().mean()) < 0.5  # small warps of image i mod N
    for f in cache.rglob("*.npy"):
        f.unlink()
    smaller = training_set("fashion", model, 2 * N_TRAIN, 7, fake_data)  # encoded afresh
    assert np.array_equal(smaller, grown[: 2 * N_TRAIN])


def test_an_interrupted_encoding_resumes_from_its_last_flushed_block_and_equals_an_uninterrupted_one(
        fake_data, model, cache, monkeypatch, tmp_path):
    monkeypatch.setattr(fts, "CHUNK", N_TRAIN)  # 4 blocks of 240 in a set of 960
    monkeypatch.setattr(fts, "BATCH", 120)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "whole"))
    whole = np.array(fts.unscaled_set(model.vae, 4 * N_TRAIN, 0, fake_data))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cut"))

    def stop_after_two_blocks(done, n):
        if done == 2 * N_TRAIN:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fts.unscaled_set(model.vae, 4 * N_TRAIN, 0, fake_data, progress=stop_after_two_blocks)
    (done,) = (tmp_path / "cut").rglob("*.partial.npy.done")
    assert done.read_text() == str(2 * N_TRAIN)
    encoded, encode = [], fts.encode_unscaled
    monkeypatch.setattr(fts, "encode_unscaled", lambda vae, x: encoded.append(len(x)) or encode(vae, x))
    resumed = np.array(fts.unscaled_set(model.vae, 4 * N_TRAIN, 0, fake_data))
    assert sum(encoded) == 2 * N_TRAIN  # only the two blocks left
    assert np.array_equal(resumed, whole)
    assert not [*(tmp_path / "cut").rglob("*.partial.npy"), *(tmp_path / "cut").rglob("*.done")]


def test_without_the_dataset_one_line_exit_2_and_nothing_created(tmp_path, cache, capsys):
    out = tmp_path / "run"
    args = ["--model", "fashion", "--quick", "--data", str(tmp_path / "none"), "--out", str(out), "--wandb", "disabled"]
    assert run_cli(protection.main, args) == 2
    err = capsys.readouterr().err.strip()
    assert "apt-get install dataset-fashion-mnist" in err and len(err.splitlines()) == 1
    assert not out.exists() and not cache.parent.parent.exists()


def test_a_model_without_a_training_set_is_refused_naming_those_with_one(tmp_path, capsys):
    out = tmp_path / "run"
    assert run_cli(protection.main, ["--model", "gmm", "--quick", "--out", str(out), "--wandb", "disabled"]) == 2
    err = capsys.readouterr().err.strip()
    assert "digits" in err and "fashion" in err and len(err.splitlines()) == 1 and not out.exists()


@pytest.mark.e2e
def test_quick_protection_on_fashion_leaves_no_output_in_a_shield_and_decodes_its_gallery(fake_data, tmp_path):
    out = tmp_path / "run"
    res = command("spell_lab.experiments.protection", "--model", "fashion", "--quick", "--data", str(fake_data),
                  "--searches", "exact,ivf_exact,ivf1", "--steps", "2", "--classes", "0", "--out", str(out), "--wandb",
                  "disabled",
                  "--no_progress", env={"XDG_CACHE_HOME": str(tmp_path / "xdg")})
    assert res.returncode == 0, res.stderr[-3000:]
    assert np.load(out / "protected.npy").shape == (N_TRAIN, 4, 8, 8)
    table = pd.read_csv(out / "figures" / "table2.csv", index_col="search")
    assert list(table.index) == ["baseline", "exact", "ivf_exact", "ivf1"]
    for name in ("exact", "ivf_exact"):
        assert table.loc[name, "n_too_close"] == 0 and table.loc[name, "min_nearest_over_r"] >= 1.0, name
    import zarr
    from matplotlib.image import imread

    stored = zarr.open_group(str(out / "store.zarr"), mode="r")["exact"]["image"]
    assert stored.shape[1:3] not in ((8, 8), (4, 8))  # decoded pictures, not latents: the gallery decodes x0 too
    gallery = imread(out / "figures" / "moved_gallery.png")
    assert gallery.shape[0] > 300 and gallery[..., :3].std() > 0.05  # drawn, not blank (its bytes vary by renderer)


@pytest.mark.parametrize("model_name, dims", [("fashion", 256), ("digits", 2304)])
def test_the_memory_check_uses_the_models_sample_shape(tmp_path, capsys, model_name, dims):
    out = tmp_path / "run"
    args = ["--model", model_name, "--quick", "--set_size", "100000000", "--out", str(out), "--wandb", "disabled"]
    assert run_cli(protection.main, args) == 2
    err = capsys.readouterr().err.strip()
    assert f"100000000 items x {dims} dimensions" in err and len(err.splitlines()) == 1 and not out.exists()


@pytest.mark.e2e  # two training commands in fresh processes
def test_the_training_command_is_deterministic(fake_data, tmp_path):
    """Two runs of the documented training command with the same seed, each in a fresh process (whose torch start seed
    differs), write bit-identical weights: every stage's initial weights are drawn after seeding."""
    import subprocess
    import sys

    from safetensors.torch import load_file

    tiny = ["--vae-steps", "3", "--vae-batch", "8", "--dit-steps", "2", "--dit-batch", "8", "--clf-steps", "2",
            "--clf-batch", "8", "--no-progress"]
    for k in ("a", "b"):
        r = subprocess.run([sys.executable, "-m", "spell_lab.models.fashion_train", "--data", str(fake_data),
                            "--work", str(tmp_path / k), *tiny], capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
    files = sorted((tmp_path / "a" / "weights").rglob("*.safetensors"))
    assert len(files) == 3  # the VAE, the DiT and the classifier
    for f in files:
        a, b = load_file(f), load_file(tmp_path / "b" / f.relative_to(tmp_path / "a"))
        assert a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a), f.name
