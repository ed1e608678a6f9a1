"""`digits`: a small class-conditional diffusion model (with CFG) on scikit-learn's bundled 8x8 digits, and a
digits classifier whose penultimate layer is the feature space the metrics use on digits.

The diffusion space. Each 8x8 digit (pixel / 16, in [0, 1]) is bicubically upsampled to 48x48, standardised
with the dataset's global mean and std (unit variance per dimension on average, as the paper's latent spaces; SD's
VAE scale factor is also one global constant), then multiplied by one global `scale` (config, in the weights'
metadata). Upsampling multiplies L2 distances by 3.2 to 6.1 (the singular values of A). The scale is chosen so
that the paper's Appendix D selection (`python -m spell_lab.experiments.calibrate --select`) picks r = 25 at the
model's default guidance, as it does for the paper's Latent Diffusion: the rule and its measured inputs are in
analysis/digits/README.md. Per-pixel standardisation was rejected: near-constant border pixels blow up to |z| > 10.

The network. Upsampling is linear (A: 64 -> 2304, bicubic keeps constants), so every data point lies in the 64-dim
span of A, and so does E[x0 | x_t] (a convex combination of data). Isotropic noise orthogonal to that span carries
no information about x0, so the projection w = Q^T x_t (Q = A S^-1 orthonormal, S = (A^T A)^(1/2), w laid out on
the 8x8 grid) is a sufficient statistic: the UNet works on 8x8 and x0_hat = Q w0_hat is exact in form and cheap.
||x - x'|| = ||w - w'|| on the span, so distances are the same in both coordinates.

This module is the model and its space only (it samples nothing). Training: `spell_lab.models.digits_train`;
the evaluation, which samples: `spell_lab.experiments.digits`. The trained weights ship in `weights/`:
    python -m spell_lab.models.digits_train --into-package  # diffusion model + classifier (seeded)
    python -m spell_lab.experiments.digits          # accuracy, distances, grids (analysis/digits)
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..schedules import VPLinear
from .base import NULL_CONDITION, Denoiser

WEIGHTS_DIR = Path(__file__).parent / "weights"
MODEL_FILE = WEIGHTS_DIR / "digits.safetensors"
CLASSIFIER_FILE = WEIGHTS_DIR / "digits_classifier.safetensors"
TRAIN_COMMAND = "python -m spell_lab.models.digits_train --into-package"


class WeightsError(ValueError):
    """A weights file exists but cannot be used (corrupted, truncated, or from another configuration)."""


# ----------------------------------------------------------------------------------------------- data and space


def load_data() -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's bundled digits (no download): images (1797, 8, 8) in [0, 1] and labels (1797,)."""
    from sklearn.datasets import load_digits as sk_digits

    d = sk_digits()
    return torch.tensor(d.images, dtype=torch.float32) / 16.0, torch.tensor(d.target, dtype=torch.long)


def upsample_matrix(resolution: int) -> torch.Tensor:
    """A (resolution^2, 64): bicubic upsampling of an 8x8 image as a matrix (float64)."""
    basis = torch.eye(64, dtype=torch.float64).reshape(64, 1, 8, 8)
    up = F.interpolate(basis, size=(resolution, resolution), mode="bicubic", align_corners=False)
    return up.reshape(64, -1).T


class DigitsSpace(nn.Module):
    """The diffusion space: x = scale (upsample(v) - mean) / std, and its isometric 8x8 coordinates w = Q^T x."""

    def __init__(self, resolution: int, mean: float, std: float, scale: float = 1.0):
        super().__init__()
        self.resolution, self.mean, self.std, self.scale = resolution, float(mean), float(std), float(scale)
        U, sv, Vh = torch.linalg.svd(upsample_matrix(resolution), full_matrices=False)
        # polar decomposition A = Q S: unique, so the same on every machine (no SVD sign ambiguity)
        self.register_buffer("Q", (U @ Vh).float(), persistent=False)  # (D, 64), orthonormal columns
        self.S = (Vh.T * sv) @ Vh  # (64, 64) float64 on the CPU, u -> w: data preparation only
        self.register_buffer("S_inv", ((Vh.T / sv) @ Vh).float(), persistent=False)  # w -> u, moves with the model

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        return (1, self.resolution, self.resolution)

    def pixels_to_w(self, v: torch.Tensor) -> torch.Tensor:
        """8x8 images in [0, 1] (B, 8, 8) -> w (B, 1, 8, 8), without going through the 48x48 space."""
        u = ((v.detach().cpu() - self.mean) / self.std).reshape(-1, 64).to(self.S.dtype)  # A 1 = 1: x = A u exactly
        return (self.scale * (u @ self.S)).float().reshape(-1, 1, 8, 8)  # S is symmetric

    def to_w(self, x: torch.Tensor) -> torch.Tensor:
        return (x.reshape(x.shape[0], -1).to(self.Q.dtype) @ self.Q).reshape(-1, 1, 8, 8)

    def from_w(self, w: torch.Tensor) -> torch.Tensor:
        return (w.reshape(w.shape[0], 64) @ self.Q.T).reshape(-1, *self.sample_shape)

    def encode(self, v: torch.Tensor) -> torch.Tensor:
        """8x8 images in [0, 1] (B, 8, 8) -> diffusion space (B, 1, R, R)."""
        return self.from_w(self.pixels_to_w(v).to(self.Q.device))

    def to_u(self, x: torch.Tensor) -> torch.Tensor:
        """Diffusion space -> the standardised 8x8 image whose upsampling is x's projection on the span (scale-free)."""
        return (self.to_w(x).reshape(-1, 64) @ self.S_inv / self.scale).reshape(-1, 1, 8, 8)  # S_inv is symmetric

    def to_images(self, x: torch.Tensor) -> torch.Tensor:
        """Diffusion space -> uint8 images (B, R, R, 3), dark ink on white, for grids and the store's `image`."""
        v = (self.mean + self.std / self.scale * x.detach().float().cpu()[:, 0]).clamp(0, 1)
        return (255 * (1 - v)).round().to(torch.uint8)[..., None].expand(-1, -1, -1, 3).contiguous()


# ----------------------------------------------------------------------------------------------------- networks


@dataclass
class DigitsConfig:
    resolution: int = 48
    channels: tuple[int, ...] = (32, 64, 128)  # UNet widths at 8x8, 4x4, 2x2
    emb_dim: int = 128
    dropout: float = 0.1
    p_uncond: float = 0.15  # label dropout that trains the null class for CFG
    mean: float = 0.0  # data standardisation, filled in from the data by `digits_train.train_denoiser`
    std: float = 1.0
    scale: float = 1.22  # distances x this: Appendix D selects r = 25 at it (rule: analysis/digits/README.md)
    sigma_data: float = 1.0  # rms of w per coordinate (EDM preconditioning)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, with the embedding as FiLM (scale, shift) between the convs."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int, dropout: float):
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(8, c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.film = nn.Linear(emb_dim, 2 * c_out)
        self.norm2, self.conv2 = nn.GroupNorm(8, c_out), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.drop = nn.Dropout(dropout)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x, emb):
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.film(emb)[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        return self.skip(x) + self.conv2(self.drop(F.silu(h)))


class UNet8(nn.Module):
    """A UNet on the 8x8 grid (8 -> 4 -> 2 -> 4 -> 8), conditioned on noise level and class (index C = null)."""

    def __init__(self, cfg: DigitsConfig, num_classes: int = 10):
        super().__init__()
        c, e = cfg.channels, cfg.emb_dim
        self.register_buffer("freqs", torch.exp(torch.linspace(0, math.log(1000), e // 2)), persistent=False)
        self.noise_mlp = nn.Sequential(nn.Linear(e, e), nn.SiLU(), nn.Linear(e, e))
        self.class_emb = nn.Embedding(num_classes + 1, e)
        self.stem = nn.Conv2d(1, c[0], 3, padding=1)
        self.down = nn.ModuleList(ResBlock(a, b, e, cfg.dropout) for a, b in zip((c[0],) + c[:-1], c))
        self.mid = ResBlock(c[-1], c[-1], e, cfg.dropout)
        self.up = nn.ModuleList(ResBlock(2 * b, a, e, cfg.dropout) for a, b in zip((c[0],) + c[:-1], c))
        self.out = nn.Sequential(nn.GroupNorm(8, c[0]), nn.SiLU(), nn.Conv2d(c[0], 1, 3, padding=1))
        nn.init.zeros_(self.out[-1].weight), nn.init.zeros_(self.out[-1].bias)

    def forward(self, x, c_noise, label):
        angles = c_noise[:, None] * self.freqs[None]
        c = label if label.is_floating_point() else self.class_emb(label)  # a float: the class embedding itself
        emb = self.noise_mlp(torch.cat([angles.sin(), angles.cos()], 1)) + c
        emb = F.silu(emb)
        h, skips = self.stem(x), []
        for i, block in enumerate(self.down):
            h = block(h if i == 0 else F.avg_pool2d(h, 2), emb)
            skips.append(h)
        h = self.mid(h, emb)
        for i, block in reversed(list(enumerate(self.up))):
            if h.shape[-1] != skips[i].shape[-1]:
                h = F.interpolate(h, size=skips[i].shape[-2:], mode="nearest")
            h = block(torch.cat([h, skips[i]], 1), emb)
        return self.out(h)


class DigitsDenoiser(Denoiser):
    """x_t (B, 1, 48, 48), t, class -> x0_hat; VP schedule, EDM preconditioning on w = Q^T x_t / alpha_t."""

    name = "digits"
    num_classes = 10
    default_sampler = "ddim"
    default_steps = 50  # measured in analysis/digits/README.md
    default_guidance = 2.0  # the F(P, C)-best CFG weight of `calibrate --select` (analysis/digits/README.md)

    def __init__(self, cfg: DigitsConfig):
        super().__init__()
        self.cfg = cfg
        self.schedule = VPLinear()
        self.space = DigitsSpace(cfg.resolution, cfg.mean, cfg.std, cfg.scale)
        self.sample_shape = self.space.sample_shape
        self.net = UNet8(cfg, self.num_classes)

    def denoise_w(self, y: torch.Tensor, s: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """EDM (Karras et al., 2022, Table 1): y = w0 + s n with s = sigma/alpha per sample -> w0_hat."""
        sd = self.cfg.sigma_data
        s = s.to(y.dtype).reshape(-1, 1, 1, 1).expand(y.shape[0], 1, 1, 1)
        c_skip, c_out = sd**2 / (s**2 + sd**2), s * sd / (s**2 + sd**2).sqrt()
        c_in, c_noise = 1 / (s**2 + sd**2).sqrt(), s.clamp_min(1e-4).log().flatten() / 4
        label = cond if cond.is_floating_point() else self._label(cond)  # float: an embedding (embed_condition)
        return c_skip * y + c_out * self.net(c_in * y, c_noise, label)

    def _label(self, cond: torch.Tensor) -> torch.Tensor:
        return torch.where(cond == NULL_CONDITION, torch.full_like(cond, self.num_classes), cond)

    def embed_condition(self, cond: torch.Tensor) -> torch.Tensor:
        """Class labels (B,) (-1: no condition) -> their class embeddings (B, emb_dim), which `forward` accepts in
        place of the labels (the continuous condition CADS anneals)."""
        return self.net.class_emb(self._label(cond.to(self.net.class_emb.weight.device)))

    def to_images(self, x0: torch.Tensor) -> torch.Tensor:
        """uint8 images (B, 48, 48, 3) for the store's `image` and the galleries."""
        return self.space.to_images(x0)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t, device=x.device).detach().to(torch.float64)
        alpha, sigma = self.schedule.alpha_sigma(t)  # 0-dim tensors on x's device: no host sync
        y = self.space.to_w(x) / alpha.float()  # the VP path seen as variance exploding: w0 + (sigma / alpha) n
        return self.space.from_w(self.denoise_w(y, (sigma / alpha).float(), cond.to(x.device))).to(x.dtype)


class DigitsClassifier(nn.Module):
    """A small CNN on the 8x8 standardised digit; `features` is its penultimate layer (the metrics' space)."""

    feature_dim = 64

    def __init__(self, resolution: int, mean: float, std: float, scale: float = 1.0, dropout: float = 0.2):
        super().__init__()
        self.space = DigitsSpace(resolution, mean, std, scale)
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.SiLU(), nn.Conv2d(32, 64, 3, padding=1), nn.SiLU(),
            nn.MaxPool2d(2), nn.Conv2d(64, 128, 3, padding=1), nn.SiLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Dropout(dropout), nn.Linear(128 * 4, self.feature_dim), nn.SiLU(),
        )
        self.head = nn.Linear(self.feature_dim, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """x in the diffusion space (B, 1, R, R) -> penultimate features (B, 64)."""
        return self.body(self.space.to_u(x))

    def features_u(self, u: torch.Tensor) -> torch.Tensor:
        return self.body(u)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


# ------------------------------------------------------------------------------------------------- save / load


def save_weights(module: nn.Module, path: Path, config: dict) -> None:
    save_weights_state(module.state_dict(), path, config)


def save_weights_state(state: dict, path: Path, config: dict) -> None:
    """Tensors with the config (JSON) in the safetensors metadata."""
    from safetensors.torch import save_file

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    save_file(state, str(path), metadata={"config": json.dumps(config)})


def read_weights(path: Path | str) -> tuple[dict, dict]:
    """(state_dict, config) from a safetensors file; missing or unreadable files say how to rebuild them."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"digits weights {path} not found; rebuild them with `{TRAIN_COMMAND}`.")
    try:
        with safe_open(str(path), framework="pt") as f:
            config = json.loads((f.metadata() or {})["config"])
            state = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:  # safetensors raises several types for truncated or garbled files
        raise WeightsError(
            f"digits weights {path} are unreadable ({type(err).__name__}: {err}); "
            f"restore the file or rebuild it with `{TRAIN_COMMAND}`."
        ) from err
    return state, config


def _load_state(module: nn.Module, state: dict, path: Path) -> nn.Module:
    try:
        module.load_state_dict(state)
    except RuntimeError as err:
        raise WeightsError(
            f"digits weights {path} do not match the model ({err}); rebuild them with `{TRAIN_COMMAND}`."
        ) from err
    return module.eval().requires_grad_(False)


def config_from_dict(d: dict) -> DigitsConfig:
    """The model config from a weights file's metadata (which also holds training facts: steps, seconds, loss)."""
    known = {k: d[k] for k in DigitsConfig.__dataclass_fields__ if k in d}
    known["channels"] = tuple(known.get("channels", DigitsConfig.channels))
    known.setdefault("scale", 1.0)  # files written before the scale existed
    return DigitsConfig(**known)


def load_digits(device="cpu", path: Path | str = MODEL_FILE) -> DigitsDenoiser:
    """The shipped (EMA) diffusion model, in eval mode, on `device`."""
    state, config = read_weights(path)
    model = DigitsDenoiser(config_from_dict(config))
    return _load_state(model, state, Path(path)).to(device)


def load_classifier(device="cpu", path: Path | str = CLASSIFIER_FILE) -> DigitsClassifier:
    """The shipped digits classifier: `forward(x)` logits, `features(x)` penultimate features (x in the space)."""
    state, config = read_weights(path)
    clf = DigitsClassifier(config["resolution"], config["mean"], config["std"], config.get("scale", 1.0))
    return _load_state(clf, state, Path(path)).to(device)


def class_split(labels: torch.Tensor, holdout: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded stratified split: (train indices, held-out indices)."""
    g = torch.Generator().manual_seed(seed)
    train, test = [], []
    for c in labels.unique():
        idx = (labels == c).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        k = round(holdout * len(idx))
        test.append(idx[:k]), train.append(idx[k:])
    return torch.cat(train), torch.cat(test)


def feature_map(device="cpu"):
    """phi for semantic SPELL: the shipped classifier's penultimate features (the metrics'), with gradients."""
    return load_classifier(device=device).features
