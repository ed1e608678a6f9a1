"""The built-in digits model: shipped weights, its diffusion space, recognisable samples, training, clear errors."""

from __future__ import annotations

import shutil

import pytest
import torch

from spell_lab.calibration import median_within
from spell_lab.models import digits, digits_train
from spell_lab.models.digits import (
    CLASSIFIER_FILE, MODEL_FILE, TRAIN_COMMAND, DigitsConfig, WeightsError, load_classifier, load_data, load_digits,
)


@pytest.fixture
def one_thread():
    """Tiny models gain nothing from threads, and on a shared CPU two threads per process run several times slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def model():
    return load_digits()


@pytest.fixture(scope="module")
def classifier():
    return load_classifier()


def test_shipped_weights_are_small_and_load(model, classifier):
    assert MODEL_FILE.stat().st_size + CLASSIFIER_FILE.stat().st_size < 20e6
    assert model.sample_shape == (1, 48, 48) and model.num_classes == 10 and model.name == "digits"
    assert model.default_sampler == "ddim" and model.default_guidance > 1
    x = torch.randn(4, *model.sample_shape)
    cond = torch.tensor([0, 3, -1, 9])  # -1: the null class that CFG uses
    x0 = model(x, torch.tensor(0.5), cond)
    assert x0.shape == x.shape and x0.dtype == torch.float32 and torch.isfinite(x0).all()
    assert classifier(x).shape == (4, 10) and classifier.features(x).shape == (4, classifier.feature_dim)


def test_space_is_the_scaled_standardised_data_and_isometric(model):
    v, _ = load_data()
    x = model.space.encode(v)
    assert model.cfg.scale == model.space.scale and model.cfg.scale > 1  # read from the weights' metadata
    # variance per dimension (average) = scale^2: unit variance before the global scale
    assert abs(float(x.mean())) < 1e-3 and abs(float(x.var()) / model.cfg.scale**2 - 1) < 1e-3
    w = model.space.to_w(x)
    assert torch.allclose(torch.cdist(x[:50].flatten(1), x[50:100].flatten(1)),
                          torch.cdist(w[:50].flatten(1), w[50:100].flatten(1)), atol=1e-3)
    # the image the classifier sees is the standardised 8x8 digit, whatever the scale
    u = (v[:10] - model.space.mean) / model.space.std
    assert torch.allclose(model.space.to_u(x[:10])[:, 0], u, atol=1e-4)


def test_scale_multiplies_distances_and_leaves_the_classifier_input_unchanged(model):
    v, _ = load_data()
    plain = digits.DigitsSpace(48, model.space.mean, model.space.std, 1.0)
    scaled = digits.DigitsSpace(48, model.space.mean, model.space.std, 2.5)
    x1, x2 = plain.encode(v[:20]), scaled.encode(v[:20])
    assert torch.allclose(torch.cdist(x2.flatten(1), x2.flatten(1)), 2.5 * torch.cdist(x1.flatten(1), x1.flatten(1)),
                          atol=1e-3)
    assert torch.allclose(scaled.to_u(x2), plain.to_u(x1), atol=1e-5)
    assert (scaled.to_images(x2).int() - plain.to_images(x1).int()).abs().max() <= 1  # float rounding only


def test_classifier_space_matches_the_model_space(model, classifier):
    assert (classifier.space.scale, classifier.space.mean, classifier.space.std) == \
        (model.space.scale, model.space.mean, model.space.std)


def test_denoiser_at_t0_returns_the_projection_of_clean_data(model):
    v, labels = load_data()
    x = model.space.encode(v[:8])
    assert torch.allclose(model(x, torch.tensor(0.0), labels[:8]), x, atol=1e-4)


def test_generated_digits_are_recognised_and_cfg_narrows_classes(model, classifier, one_thread):
    """The full figures (100 per class) are in analysis/digits; here 10 per class and looser bounds."""
    from spell_lab.samplers import generate

    cond = torch.arange(10).repeat_interleave(10)
    seeds = list(range(len(cond)))
    guided = generate(model, cond, seeds, guidance=model.default_guidance).x0
    with torch.no_grad():
        accuracy = (classifier(guided).argmax(1) == cond).float().mean()
    assert accuracy >= 0.85
    plain = generate(model, cond, seeds, guidance=1.0).x0
    assert median_within(guided, cond) < median_within(plain, cond)


def test_classifier_is_accurate_on_held_out_digits(model, classifier):
    v, labels = load_data()
    _, heldout = digits.class_split(labels, 0.2, seed=0)
    with torch.no_grad():
        pred = classifier(model.space.encode(v[heldout])).argmax(1)
    assert (pred == labels[heldout]).float().mean() >= 0.95


def test_training_a_few_steps_decreases_the_loss(one_thread):
    cfg = DigitsConfig(channels=(16, 16, 16), emb_dim=32)
    _, ema, report = digits_train.train_denoiser(cfg, steps=60, batch=32, lr=3e-3, seed=0, log_every=20, log=lambda s: None)
    assert len(report.losses) == 3 and report.losses[-1] < 0.9 * report.losses[0]
    assert ema.cfg.sigma_data > 1  # filled in from the data


def test_train_command_writes_loadable_weights(tmp_path, one_thread):
    digits_train.main(["--steps", "2", "--batch", "8", "--classifier-steps", "2", "--threads", "1", "--scale", "1.7",
                       "--out", str(tmp_path)])
    m = load_digits(path=tmp_path / MODEL_FILE.name)
    assert m.cfg.resolution == 48 and m.cfg.std > 0 and m.cfg.scale == 1.7
    clf = load_classifier(path=tmp_path / CLASSIFIER_FILE.name)
    assert clf.space.resolution == 48 and clf.space.scale == 1.7


def test_train_command_refuses_a_bad_scale(tmp_path):
    with pytest.raises(ValueError, match="--scale"):
        digits_train.main(["--scale", "0", "--out", str(tmp_path)])
    assert not any(tmp_path.iterdir())


def test_model_module_does_not_sample():
    import subprocess
    import sys

    code = "import sys, spell_lab.models.digits; print('spell_lab.samplers' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() \
        == "False"


def _assert_names_file_and_command(err, path):
    assert str(path) in str(err.value) and TRAIN_COMMAND in str(err.value)


def test_missing_weights_name_the_file_and_the_train_command(tmp_path):
    path = tmp_path / "digits.safetensors"
    with pytest.raises(FileNotFoundError) as err:
        load_digits(path=path)
    _assert_names_file_and_command(err, path)


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupted_weights_name_the_file_and_the_train_command(tmp_path, damage):
    path = tmp_path / "digits_classifier.safetensors"
    if damage == "garbage":
        path.write_bytes(b"\x00not a safetensors file" * 10)
    else:
        data = CLASSIFIER_FILE.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError) as err:
        load_classifier(path=path)
    assert isinstance(err.value, ValueError)
    _assert_names_file_and_command(err, path)


def test_weights_of_another_shape_name_the_file(tmp_path):
    path = tmp_path / "digits.safetensors"
    shutil.copy(MODEL_FILE, path)
    state, config = digits.read_weights(path)
    config["channels"] = [32, 64, 64]  # metadata no longer matches the tensors
    digits.save_weights_state(state, path, config)
    with pytest.raises(WeightsError) as err:
        load_digits(path=path)
    _assert_names_file_and_command(err, path)
