"""Feature maps for semantic SPELL on diffusers models (docs/design.md section 2, "Semantic shields"): decode x0_hat
with the pipeline's own VAE, then a DINOv2 or CLIP image encoder from a local folder the user gives (transformers
`save_pretrained`; nothing downloads), differentiable end to end, so the pull-back can take its Jacobian.

    phi = feature_map(model, "/models/dinov2-base")       # (B, *latent shape) -> (B, F)
    spell(space="features", encoder="/models/dinov2-base") # the method spec: the same, bound to the run's model

DINOv2: the CLS token (`pooler_output`), ImageNet mean and std, as `metrics.DINOv2Features` (FD_DINOv2's features).
CLIP: the projected image embedding (`image_embeds` of `CLIPVisionModelWithProjection`, also from a full CLIP folder),
CLIP's own mean and std. Images are resized to the encoder's `image_size` (bicubic, antialiased).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as Fn

from ..metrics.features import IMAGENET_MEAN, IMAGENET_STD

IMAGENET = (IMAGENET_MEAN, IMAGENET_STD)  # DINOv2's preprocessing, as the metrics' DINOv2Features
CLIP = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))  # OpenAI CLIP's preprocessing


def image_encoder(path, device="cpu"):
    """`encode(images)`: float images in [-1, 1], (B, C, H, W), C in {1, 3} -> (B, F) features, with gradients."""
    from transformers import AutoConfig, AutoModel, CLIPVisionModelWithProjection  # lazy: only semantic SPELL needs it

    p = Path(path)
    if not (p / "config.json").is_file():
        raise ValueError(f"{p}: not an image-encoder folder (no config.json); give a DINOv2 or CLIP checkpoint saved "
                         "with transformers' save_pretrained, e.g. facebook/dinov2-base downloaded beforehand.")
    config = AutoConfig.from_pretrained(str(p), local_files_only=True)
    kind = config.model_type
    if kind == "dinov2":
        net, (mean, std), out = AutoModel.from_pretrained(str(p), local_files_only=True), IMAGENET, "pooler_output"
        size = config.image_size
    elif kind in ("clip", "clip_vision_model"):
        net = CLIPVisionModelWithProjection.from_pretrained(str(p), local_files_only=True)
        (mean, std), out = CLIP, "image_embeds"
        size = (config.vision_config if kind == "clip" else config).image_size
    else:
        raise ValueError(f"{p} holds a {kind!r} model; semantic features need a DINOv2 or CLIP image encoder.")
    net = net.to(device).eval().requires_grad_(False)  # gradients flow to the images, not the weights
    mean, std = (torch.tensor(v, device=device).view(1, 3, 1, 1) for v in (mean, std))

    def encode(images: torch.Tensor) -> torch.Tensor:
        x = ((images.float() + 1) / 2).clamp(0, 1).expand(-1, 3, -1, -1)  # [-1, 1] -> [0, 1] RGB
        x = Fn.interpolate(x, size=(size, size), mode="bicubic", antialias=True, align_corners=False)
        return getattr(net(pixel_values=(x - mean) / std), out)

    return encode


def feature_map(model, path, device="cpu"):
    """phi(x0) = encoder(model.decode(x0)): `model` a `PipelineModel` (its VAE decodes latents; pixel pipelines pass
    their pixels), `path` a DINOv2 or CLIP folder."""
    encode = image_encoder(path, device)
    return lambda x0: encode(model.decode(x0))
