"""Semantic SPELL on diffusers models (spell_lab.diffusers.features): the feature map decodes x0_hat with the
pipeline's VAE and encodes it with a DINOv2 or CLIP folder the user gives (tiny random-weight encoders saved here:
nothing downloads); it is differentiable, equals decode-then-encode written out, and a run with it repels in that
feature space."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from test_diffusers import tiny_dit  # noqa: E402

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def encoders(tmp_path_factory):
    """A tiny DINOv2 and a tiny CLIP vision model with projection, random weights, in save_pretrained folders."""
    root = tmp_path_factory.mktemp("encoders")
    torch.manual_seed(0)
    transformers.Dinov2Model(transformers.Dinov2Config(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                                       mlp_ratio=2, image_size=28, patch_size=14)).save_pretrained(root / "dino")
    clip = transformers.CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, image_size=28, patch_size=14, projection_dim=12)
    transformers.CLIPVisionModelWithProjection(clip).save_pretrained(root / "clip")
    return root


@pytest.fixture(scope="module")
def model():
    from spell_lab.diffusers.model import PipelineModel

    return PipelineModel(tiny_dit(), "tiny-dit")


@pytest.mark.parametrize("kind,dim", [("dino", 16), ("clip", 12)])
def test_feature_map_is_decode_then_encode_and_differentiable(encoders, model, kind, dim):
    from spell_lab.diffusers.features import feature_map, image_encoder
    from spell_lab.semantic import jacobians

    phi = feature_map(model, encoders / kind)
    x = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    f = phi(x)
    assert f.shape == (3, dim) and torch.isfinite(f).all()
    with torch.no_grad():
        assert torch.allclose(f, image_encoder(encoders / kind)(model.decode(x)), atol=1e-6)
    J = jacobians(phi, x)  # what the pull-back uses: each sample's own (F, D) Jacobian
    assert J.shape == (3, dim, 4 * 8 * 8) and J.abs().sum() > 0
    dx = 1e-3 * torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():  # first order: phi(x + dx) - phi(x) = J dx
        moved = phi(x[:1] + dx) - phi(x[:1])
    assert torch.allclose(moved[0], J[0] @ dx.flatten(), rtol=0.05, atol=1e-6)


def test_a_run_repels_in_the_encoders_feature_space(encoders, model):
    from spell_lab.methods import resolve

    cond, seeds = torch.tensor([3, 3, 3, 3]), [0, 1, 2, 3]
    plain = model.generate(cond, seeds, steps=4, guidance=2.0, method=resolve({"name": "spell", "radius": 0.0}))
    method = {"name": "spell", "radius": 1e6, "intra_batch": True, "space": "features", "encoder": str(encoders / "dino")}
    shielded = model.generate(cond, seeds, steps=4, guidance=2.0, method=resolve(method))
    assert shielded.records["active_batch"].any() and (shielded.records["shield_residual"] >= 0).all()
    assert not torch.equal(shielded.x0, plain.x0)  # every pair is inside a shield of that radius: outputs move


def test_refusals_say_what_to_change(tmp_path, encoders):
    from spell_lab.diffusers.features import image_encoder
    from spell_lab.methods import resolve
    from spell_lab.models import load_model

    with pytest.raises(ValueError, match="space='features'"):
        resolve({"name": "spell", "radius": 1.0, "encoder": str(encoders / "dino")})
    with pytest.raises(ValueError, match="no config.json"):
        image_encoder(tmp_path)
    transformers.BertConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                            intermediate_size=8).save_pretrained(tmp_path / "bert")
    with pytest.raises(ValueError, match="DINOv2 or CLIP"):
        image_encoder(tmp_path / "bert")
    hooks = resolve({"name": "spell", "radius": 1.0, "space": "features", "encoder": str(encoders / "dino")})
    with pytest.raises(ValueError, match="drop encoder="):
        hooks.bind(load_model("gmm"))
