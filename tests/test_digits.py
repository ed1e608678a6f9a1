"""The built-in digits model: shipped weights, its diffusion space, recognisable samples, training, clear errors."""

from __future__ import annotations

import shutil

import pytest
import torch

from spell_lab.models import digits
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


def test_space_has_unit_variance_and_is_isometric(model):
    v, _ = load_data()
    x = model.space.encode(v)
    assert abs(float(x.mean())) < 1e-3 and abs(float(x.var()) - 1) < 1e-3  # unit variance per dimension (average)
    w = model.space.to_w(x)
    assert torch.allclose(torch.cdist(x[:50].flatten(1), x[50:100].flatten(1)),
                          torch.cdist(w[:50].flatten(1), w[50:100].flatten(1)), atol=1e-3)
    # the image the classifier sees is the standardised 8x8 digit
    u = (v[:10] - model.space.mean) / model.space.std
    assert torch.allclose(model.space.to_u(x[:10])[:, 0], u, atol=1e-4)


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
    assert digits.within_class_median(guided, cond)[0] < digits.within_class_median(plain, cond)[0]


def test_classifier_is_accurate_on_held_out_digits(model, classifier):
    v, labels = load_data()
    _, heldout = digits.class_split(labels, 0.2, seed=0)
    with torch.no_grad():
        pred = classifier(model.space.encode(v[heldout])).argmax(1)
    assert (pred == labels[heldout]).float().mean() >= 0.95


def test_training_a_few_steps_decreases_the_loss(one_thread):
    cfg = DigitsConfig(channels=(16, 16, 16), emb_dim=32)
    _, ema, report = digits.train_denoiser(cfg, steps=60, batch=32, lr=3e-3, seed=0, log_every=20, log=lambda s: None)
    assert len(report.losses) == 3 and report.losses[-1] < 0.9 * report.losses[0]
    assert ema.cfg.sigma_data > 1  # filled in from the data


def test_train_command_writes_loadable_weights(tmp_path, one_thread):
    digits.main(["train", "--steps", "2", "--batch", "8", "--classifier-steps", "2", "--threads", "1",
                 "--out", str(tmp_path)])
    m = load_digits(path=tmp_path / MODEL_FILE.name)
    assert m.cfg.resolution == 48 and m.cfg.std > 0
    assert load_classifier(path=tmp_path / CLASSIFIER_FILE.name).space.resolution == 48


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
