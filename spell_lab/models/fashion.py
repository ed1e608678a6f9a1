"""`fashion`: a latent diffusion model on Fashion-MNIST, built from diffusers' own components, and its classifier.

The paper's models are latent diffusion models; this one is small enough for a CPU and real in every part:
  - a VAE (`diffusers.AutoencoderKL`, f = 4): a 28x28 image, padded to 32x32 and mapped to [-1, 1], becomes a
    4x8x8 latent (256 dims), centred (`centre_latent_space`: no constant offset for LD's first step to leak).
    Latents are multiplied by one global `scaling_factor` (SD's convention, in the VAE's config), chosen by a rule
    aimed at Appendix D's selection picking r = 25 (the rule and how close it came: analysis/fashion/README.md);
  - a class-conditional denoiser (`diffusers.DiTTransformer2DModel`, patch 2: 16 tokens) trained with label dropout
    for classifier-free guidance and epsilon prediction on Latent Diffusion's schedule: scaled-linear betas
    0.00085 to 0.012 over 1,000 training steps. The null class is index 1000, DiTPipeline's convention;
  - 50-step DDIM over uniformly spaced timesteps (LDM's: 981, 961, ..., 1; the last step returns x0_hat), so that
    t = timestep / 1000 means what it means in the paper.

The weights ship in `weights/fashion/` in diffusers' `save_pretrained` layout (a DiTPipeline: transformer/, vae/,
scheduler/, model_index.json), so the same model also runs through the diffusers path
(`--model spell_lab/models/weights/fashion`). Beside it: the classifier (classifier/) and a stratified part of the
test set (heldout.npz). Training: `python -m spell_lab.models.fashion_train`.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..schedules import LatentDiffusionSchedule, ld_alphas_cumprod  # noqa: F401  (the model's schedule)
from .base import NULL_CONDITION, Denoiser

WEIGHTS_DIR = Path(__file__).parent / "weights" / "fashion"
TRAIN_COMMAND = "python -m spell_lab.models.fashion_train"
NULL_CLASS = 1000  # DiTPipeline feeds class 1000 to the unconditional branch
NUM_CLASSES = 10
IMAGE_SIZE = 32  # 28x28 padded by 2 on each side
INFO_FILE = "spell_lab.json"  # what spell_lab needs beyond diffusers' configs: defaults and training facts


# ------------------------------------------------------------------------------------------------- components


def vae_config() -> dict:
    """A small AutoencoderKL: 1x32x32 -> 4x8x8 (two downsamplings), no attention."""
    return dict(in_channels=1, out_channels=1, down_block_types=("DownEncoderBlock2D",) * 3,
                up_block_types=("UpDecoderBlock2D",) * 3, block_out_channels=(16, 32, 64), layers_per_block=1,
                latent_channels=4, norm_num_groups=8, sample_size=IMAGE_SIZE, mid_block_add_attention=False)


def transformer_config() -> dict:
    """A small DiT on the 4x8x8 latent: patch 2 (16 tokens), width 128, 4 blocks."""
    return dict(num_attention_heads=4, attention_head_dim=32, in_channels=4, out_channels=4, num_layers=4,
                sample_size=8, patch_size=2, num_embeds_ada_norm=NULL_CLASS, norm_num_groups=32)


def scheduler_config() -> dict:
    """diffusers' DDIM on LD's schedule with LDM's timesteps; the last step goes to abar = 1 (returns x0_hat)."""
    return dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                prediction_type="epsilon", clip_sample=False, set_alpha_to_one=True, steps_offset=1,
                timestep_spacing="leading")


@torch.no_grad()
def centre_latent_space(vae, offset: torch.Tensor) -> None:
    """Move the VAE's latent origin to `offset` (one value per channel), exactly: the encoder's posterior mean loses
    it (quant_conv's mean-half bias) and the decoder adds it back (post_quant_conv's bias gains W @ offset), so
    decode(encode(x)) is unchanged and the latents are centred."""
    offset = offset.to(vae.quant_conv.bias)
    vae.quant_conv.bias[: len(offset)] -= offset
    vae.post_quant_conv.bias += vae.post_quant_conv.weight[:, :, 0, 0] @ offset


def pad_images(images) -> torch.Tensor:
    """uint8 images (N, 28, 28) -> float (N, 1, 32, 32) in [-1, 1], black border (Fashion-MNIST's background)."""
    x = torch.from_numpy(np.array(images, dtype=np.float32))[:, None] / 127.5 - 1.0
    return nn.functional.pad(x, (2, 2, 2, 2), value=-1.0)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Decoded images (N, 1, 32, 32) in [-1, 1] -> uint8 (N, 32, 32, 3), as DiTPipeline's output."""
    v = (x.detach().float().cpu()[:, 0] / 2 + 0.5).clamp(0, 1)
    return (255 * v).round().to(torch.uint8)[..., None].expand(-1, -1, -1, 3).contiguous()


class FashionClassifier(nn.Module):
    """A CNN on 32x32 images in [-1, 1]; `features` (its penultimate layer, 128-d) is the metrics' space."""

    feature_dim = 128

    def __init__(self, dropout: float = 0.2):
        super().__init__()
        block = lambda a, b: (nn.Conv2d(a, b, 3, padding=1), nn.BatchNorm2d(b), nn.SiLU(), nn.MaxPool2d(2))  # noqa: E731
        self.body = nn.Sequential(*block(1, 32), *block(32, 64), *block(64, 128), nn.Flatten(), nn.Dropout(dropout),
                                  nn.Linear(128 * 16, self.feature_dim), nn.SiLU())
        self.head = nn.Linear(self.feature_dim, NUM_CLASSES)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.body(images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(images))


# --------------------------------------------------------------------------------------------------- the model


class FashionDenoiser(Denoiser):
    """x_t (B, 4, 8, 8) latents, t, class -> x0_hat; the DiT predicts epsilon at timestep t * 1000."""

    name = "fashion"
    num_classes = NUM_CLASSES
    default_sampler = "ddim"
    default_steps = 50

    def __init__(self, transformer, vae, info: dict):
        super().__init__()
        self.transformer, self.vae, self.info = transformer.eval(), vae.eval(), info
        self.schedule = LatentDiffusionSchedule()
        self.sample_shape = (transformer.config.in_channels, transformer.config.sample_size,
                             transformer.config.sample_size)
        self.scaling_factor = float(vae.config.scaling_factor)
        self.default_guidance = float(info.get("default_guidance", 1.0))
        from diffusers.models.embeddings import LabelEmbedding

        # DiT embeds the class once per block (block 0's embedding also conditions the final layer); a condition
        # embedding (embed_condition, e.g. annealed by CADS) replaces each block's lookup through a forward hook
        self._label_tables = [m for m in transformer.modules() if isinstance(m, LabelEmbedding)]
        self._embedding_override: list[torch.Tensor] | None = None
        for i, table in enumerate(self._label_tables):
            table.register_forward_hook(lambda _m, _a, out, i=i: out if self._embedding_override is None
                                        else self._embedding_override[i].to(out.dtype))

    def _labels(self, cond: torch.Tensor) -> torch.Tensor:
        return torch.where(cond == NULL_CONDITION, torch.full_like(cond, NULL_CLASS), cond)

    def embed_condition(self, cond: torch.Tensor) -> torch.Tensor:
        """Class labels (B,) (-1: no condition) -> every block's class embedding, concatenated (B, blocks x width),
        which `forward` accepts in place of the labels (the continuous condition CADS anneals)."""
        labels = self._labels(cond.to(self._label_tables[0].embedding_table.weight.device))
        return torch.cat([t.embedding_table(labels) for t in self._label_tables], dim=-1)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t, device=x.device).detach().to(torch.float64)
        alpha, sigma = self.schedule.alpha_sigma(t)  # 0-dim tensors on x's device: no host sync
        timestep = (t * self.schedule.num_train_timesteps).float().expand(x.shape[0])
        if cond.is_floating_point():  # an embedding (embed_condition): each block takes its own slice
            self._embedding_override = list(cond.to(x.device).chunk(len(self._label_tables), dim=-1))
            labels = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)  # looked up, then replaced
        else:
            labels = self._labels(cond).to(x.device)
        try:
            eps = self.transformer(x, timestep=timestep, class_labels=labels).sample
        finally:
            self._embedding_override = None
        return ((x - sigma.to(x.dtype) * eps) / alpha.to(x.dtype)).to(x.dtype)

    @torch.no_grad()
    def decode(self, x0: torch.Tensor) -> torch.Tensor:
        """Latents -> images (B, 1, 32, 32) in [-1, 1] (unclamped)."""
        return self.vae.decode(x0.to(self.vae.dtype) / self.scaling_factor).sample

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, 1, 32, 32) in [-1, 1] -> scaled latents (the posterior's mean), the diffusion space."""
        return self.vae.encode(images.to(self.vae.dtype)).latent_dist.mean * self.scaling_factor

    def to_images(self, x0: torch.Tensor) -> torch.Tensor:
        """uint8 images (B, 32, 32, 3) for the store's `image` and the galleries."""
        return torch.cat([to_uint8(self.decode(x0[i:i + 256])) for i in range(0, len(x0), 256)])


# ------------------------------------------------------------------------------------------------------ loading


class WeightsError(ValueError):
    """The fashion weights directory is missing a part or holds unreadable files."""


def read_info(path: Path | str = WEIGHTS_DIR) -> dict:
    f = Path(path) / INFO_FILE
    if not f.is_file():
        raise FileNotFoundError(f"fashion weights not found in {path} (no {INFO_FILE}); rebuild them with "
                                f"`{TRAIN_COMMAND}`.")
    return json.loads(f.read_text())


def load_fashion(device="cpu", path: Path | str = WEIGHTS_DIR) -> FashionDenoiser:
    """The shipped model (EMA weights of the DiT, the VAE), in eval mode, on `device`."""
    from diffusers import AutoencoderKL, DiTTransformer2DModel

    path = Path(path)
    info = read_info(path)
    try:
        transformer = DiTTransformer2DModel.from_pretrained(path / "transformer", low_cpu_mem_usage=False)
        vae = AutoencoderKL.from_pretrained(path / "vae", low_cpu_mem_usage=False)
    except (OSError, ValueError) as err:
        raise WeightsError(f"fashion weights in {path} are unreadable ({err}); restore them or rebuild them with "
                           f"`{TRAIN_COMMAND}`.") from err
    return FashionDenoiser(transformer, vae, info).requires_grad_(False).to(device)


def load_classifier(device="cpu", path: Path | str = WEIGHTS_DIR) -> FashionClassifier:
    """The shipped Fashion-MNIST classifier: `forward(images)` logits, `features(images)` 128-d features."""
    from safetensors.torch import load_file

    f = Path(path) / "classifier" / "model.safetensors"
    if not f.is_file():
        raise FileNotFoundError(f"fashion classifier {f} not found; rebuild it with `{TRAIN_COMMAND}`.")
    clf = FashionClassifier()
    clf.load_state_dict(load_file(str(f)))
    return clf.eval().requires_grad_(False).to(device)


class LatentClassifier(nn.Module):
    """The classifier on the diffusion space: decode the latents with the VAE, then classify."""

    def __init__(self, model: FashionDenoiser, classifier: FashionClassifier):
        super().__init__()
        self.model, self.classifier = model, classifier
        self.feature_dim = classifier.feature_dim

    def features(self, x0: torch.Tensor) -> torch.Tensor:
        return self.classifier.features(self.model.decode(x0).clamp(-1, 1))

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.model.decode(x0).clamp(-1, 1))


# ------------------------------------------------------------------------------- metrics: features and held-out data


def _one_thread(fn):
    """Run fn with one torch thread: features and scores then equal to the bit whatever the caller's thread count."""
    def wrapped(*args, **kwargs):
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with torch.no_grad():
                return fn(*args, **kwargs)
        finally:
            torch.set_num_threads(threads)
    return wrapped


@functools.lru_cache(maxsize=1)
def latent_classifier(device="cpu") -> LatentClassifier:
    """The shipped VAE and classifier as one module on latents (loaded once per process)."""
    return LatentClassifier(load_fashion(device), load_classifier(device)).eval()


class FashionFeatures:
    """The metrics' feature extractor on `fashion`: latents -> decoded image -> the classifier's 128-d features."""

    def __init__(self, net: LatentClassifier | None = None, batch_size: int = 500):
        self.net, self.batch_size = net or latent_classifier(), batch_size

    @_one_thread
    def __call__(self, x0) -> torch.Tensor:
        x0 = torch.as_tensor(x0).float()
        return torch.cat([self.net.features(x0[i:i + self.batch_size]) for i in range(0, len(x0), self.batch_size)])


def feature_map(device="cpu"):
    """phi for semantic SPELL: latents -> decoded image -> the classifier's 128-d features (the metrics'), with
    gradients (`LatentClassifier.features` decodes without them)."""
    net = latent_classifier(device)
    vae, scale, clf = net.model.vae, net.model.scaling_factor, net.classifier
    return lambda x0: clf.features(vae.decode(x0.to(vae.dtype) / scale).sample.clamp(-1, 1))


@_one_thread
def fidelity(x0, cond) -> np.ndarray:
    """The condition-fidelity score: the classifier's probability of the requested class for decoded latents."""
    net, x0 = latent_classifier(), torch.as_tensor(x0).float()
    p = torch.cat([net(x0[i:i + 500]).softmax(-1) for i in range(0, len(x0), 500)])
    return p[torch.arange(len(p)), torch.as_tensor(np.asarray(cond), dtype=torch.long)].numpy()


def held_out(conditions, per_condition: int | None = None, seed: int = 0, data_dir=None):
    """Held-out real images of `conditions` encoded into the diffusion space (the VAE's posterior mean, scaled):
    from the whole test set where the dataset is installed, else from the shipped stratified part; every image of a
    class, or a seeded stratified `per_condition` of each (e.g. as many as were generated, so that coverage and
    recall compare like with like). Real and generated images are both read through the VAE's decoder by the
    features. Returns (x, cond, description)."""
    from .fashion_data import heldout, stratified_part

    images, labels, which = heldout(data_dir)
    keep = np.flatnonzero(np.isin(labels, np.asarray([int(c) for c in conditions])))
    if per_condition is not None:
        keep = keep[stratified_part(labels[keep], int(per_condition), seed)]
    net = latent_classifier()
    x = _one_thread(lambda imgs: torch.cat([net.model.encode(imgs[i:i + 500]) for i in range(0, len(imgs), 500)]))(
        pad_images(images[keep]))
    part = "" if per_condition is None else f", {int(per_condition)} per class (seed {seed})"
    desc = (f"{len(keep)} held-out images: {which}{part}, encoded by the VAE; features: the classifier's "
            f"penultimate layer ({net.feature_dim}-d) on decoded images")
    return x, labels[keep], desc
