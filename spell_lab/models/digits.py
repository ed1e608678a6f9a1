"""`digits`: a small class-conditional diffusion model (with CFG) on scikit-learn's bundled 8x8 digits, and a
digits classifier whose penultimate layer is the feature space the metrics use on digits.

The diffusion space. Each 8x8 digit (pixel / 16, in [0, 1]) is bicubically upsampled to 48x48 and standardised
with the dataset's global mean and std, so the data have unit variance per dimension on average, as the paper's
latent spaces do (SD's VAE scale factor is also one global constant). Upsampling multiplies L2 distances by 3.2
to 6.1 (the singular values of A), which puts the within-class median pairwise distance of real digits at 35 and of
guided samples at 28: the paper's radius 25 lands in the regime of its Appendix F (analysis/digits/README.md). Per-pixel standardisation was rejected: near-constant border pixels blow up to |z| > 10.

The network. Upsampling is linear (A: 64 -> 2304, bicubic keeps constants), so every data point lies in the 64-dim
span of A, and so does E[x0 | x_t] (a convex combination of data). Isotropic noise orthogonal to that span carries
no information about x0, so the projection w = Q^T x_t (Q = A S^-1 orthonormal, S = (A^T A)^(1/2), w laid out on
the 8x8 grid) is a sufficient statistic: the UNet works on 8x8 and x0_hat = Q w0_hat is exact in form and cheap.
||x - x'|| = ||w - w'|| on the span, so distances are the same in both coordinates.

Commands (seeded; the trained weights ship in `weights/`):
    python -m spell_lab.models.digits train       # diffusion model + classifier (17 min on a shared 2-core CPU)
    python -m spell_lab.models.digits evaluate    # the analysis entry: accuracy, distances, grid (analysis/digits)
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..schedules import VPLinear
from .base import NULL_CONDITION, Denoiser

WEIGHTS_DIR = Path(__file__).parent / "weights"
MODEL_FILE = WEIGHTS_DIR / "digits.safetensors"
CLASSIFIER_FILE = WEIGHTS_DIR / "digits_classifier.safetensors"
TRAIN_COMMAND = "python -m spell_lab.models.digits train"


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
    """The diffusion space: x = (upsample(v) - mean) / std, and its isometric 8x8 coordinates w = Q^T x."""

    def __init__(self, resolution: int, mean: float, std: float):
        super().__init__()
        self.resolution, self.mean, self.std = resolution, float(mean), float(std)
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
        return (u @ self.S).float().reshape(-1, 1, 8, 8)  # S is symmetric

    def to_w(self, x: torch.Tensor) -> torch.Tensor:
        return (x.reshape(x.shape[0], -1).to(self.Q.dtype) @ self.Q).reshape(-1, 1, 8, 8)

    def from_w(self, w: torch.Tensor) -> torch.Tensor:
        return (w.reshape(w.shape[0], 64) @ self.Q.T).reshape(-1, *self.sample_shape)

    def encode(self, v: torch.Tensor) -> torch.Tensor:
        """8x8 images in [0, 1] (B, 8, 8) -> diffusion space (B, 1, R, R)."""
        return self.from_w(self.pixels_to_w(v).to(self.Q.device))

    def to_u(self, x: torch.Tensor) -> torch.Tensor:
        """Diffusion space -> the standardised 8x8 image whose upsampling is x's projection on the span."""
        return (self.to_w(x).reshape(-1, 64) @ self.S_inv).reshape(-1, 1, 8, 8)  # S_inv is symmetric

    def to_images(self, x: torch.Tensor) -> torch.Tensor:
        """Diffusion space -> uint8 images (B, R, R, 3), dark ink on white, for grids and the store's `image`."""
        v = (self.mean + self.std * x.detach().float().cpu()[:, 0]).clamp(0, 1)
        return (255 * (1 - v)).round().to(torch.uint8)[..., None].expand(-1, -1, -1, 3).contiguous()


# ----------------------------------------------------------------------------------------------------- networks


@dataclass
class DigitsConfig:
    resolution: int = 48
    channels: tuple[int, ...] = (32, 64, 128)  # UNet widths at 8x8, 4x4, 2x2
    emb_dim: int = 128
    dropout: float = 0.1
    p_uncond: float = 0.15  # label dropout that trains the null class for CFG
    mean: float = 0.0  # data standardisation, filled in from the data by `train_denoiser`
    std: float = 1.0
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
        emb = self.noise_mlp(torch.cat([angles.sin(), angles.cos()], 1)) + self.class_emb(label)
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
    default_guidance = 3.0  # measured in analysis/digits/README.md

    def __init__(self, cfg: DigitsConfig):
        super().__init__()
        self.cfg = cfg
        self.schedule = VPLinear()
        self.space = DigitsSpace(cfg.resolution, cfg.mean, cfg.std)
        self.sample_shape = self.space.sample_shape
        self.net = UNet8(cfg, self.num_classes)

    def denoise_w(self, y: torch.Tensor, s: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """EDM (Karras et al., 2022, Table 1): y = w0 + s n with s = sigma/alpha per sample -> w0_hat."""
        sd = self.cfg.sigma_data
        s = s.to(y.dtype).reshape(-1, 1, 1, 1).expand(y.shape[0], 1, 1, 1)
        c_skip, c_out = sd**2 / (s**2 + sd**2), s * sd / (s**2 + sd**2).sqrt()
        c_in, c_noise = 1 / (s**2 + sd**2).sqrt(), s.clamp_min(1e-4).log().flatten() / 4
        label = torch.where(cond == NULL_CONDITION, torch.full_like(cond, self.num_classes), cond)
        return c_skip * y + c_out * self.net(c_in * y, c_noise, label)

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

    def __init__(self, resolution: int, mean: float, std: float, dropout: float = 0.2):
        super().__init__()
        self.space = DigitsSpace(resolution, mean, std)
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
    return DigitsConfig(**known)


def load_digits(device="cpu", path: Path | str = MODEL_FILE) -> DigitsDenoiser:
    """The shipped (EMA) diffusion model, in eval mode, on `device`."""
    state, config = read_weights(path)
    model = DigitsDenoiser(config_from_dict(config))
    return _load_state(model, state, Path(path)).to(device)


def load_classifier(device="cpu", path: Path | str = CLASSIFIER_FILE) -> DigitsClassifier:
    """The shipped digits classifier: `forward(x)` logits, `features(x)` penultimate features (x in the space)."""
    state, config = read_weights(path)
    clf = DigitsClassifier(config["resolution"], config["mean"], config["std"])
    return _load_state(clf, state, Path(path)).to(device)


# ----------------------------------------------------------------------------------------------------- training


def data_scaling(resolution: int) -> tuple[float, float]:
    """Global mean and std of the upsampled dataset (computed in float64): one scalar each, like SD's scale factor."""
    v, _ = load_data()
    A = upsample_matrix(resolution)
    x = v.reshape(-1, 64).double() @ A.T
    return float(x.mean()), float(x.std())


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


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    for pe, pm in zip(ema.parameters(), model.parameters()):
        pe.lerp_(pm, 1 - decay)


@dataclass
class TrainReport:
    steps: int
    seconds: float
    losses: list[float] = field(default_factory=list)  # mean loss per logging window


def train_denoiser(
    cfg: DigitsConfig, steps: int, batch: int = 256, lr: float = 1e-3, seed: int = 0, log_every: int = 500, log=print
) -> tuple[DigitsDenoiser, DigitsDenoiser, TrainReport]:
    """Train on all 1797 digits: t ~ U(0, 1) on the VP schedule, EDM-weighted loss, label dropout, EMA."""
    torch.manual_seed(seed)
    cfg.mean, cfg.std = data_scaling(cfg.resolution)
    model = DigitsDenoiser(cfg)
    v, labels = load_data()
    w0 = model.space.pixels_to_w(v)
    cfg.sigma_data = float(w0.pow(2).mean().sqrt())
    ema = DigitsDenoiser(cfg)
    ema.load_state_dict(model.state_dict())
    ema.requires_grad_(False).eval()
    opt = torch.optim.AdamW(model.net.parameters(), lr=lr, weight_decay=0.0)
    warmup = min(200, max(steps // 10, 1))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: min(1.0, (i + 1) / warmup) * (0.1 + 0.9 * (1 - i / steps)))
    g = torch.Generator().manual_seed(seed)
    report, window, t0 = TrainReport(steps, 0.0), [], time.perf_counter()
    model.train()
    for step in range(steps):
        idx = torch.randint(len(w0), (batch,), generator=g)
        loss = denoiser_loss(model, w0[idx], labels[idx], cfg.p_uncond, g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step(), sched.step()
        ema_update(ema, model, min(0.999, (1 + step) / (10 + step)))
        window.append(loss.item())
        if (step + 1) % log_every == 0 or step + 1 == steps:
            report.losses.append(sum(window) / len(window))
            log(f"denoiser step {step + 1}/{steps}  loss {report.losses[-1]:.4f}  {time.perf_counter() - t0:.0f}s")
            window = []
    report.seconds = time.perf_counter() - t0
    return model.eval(), ema, report


def denoiser_loss(model: DigitsDenoiser, w0: torch.Tensor, labels: torch.Tensor, p_uncond: float, g) -> torch.Tensor:
    """EDM's loss lambda(s) ||D(w0 + s n) - w0||^2, lambda = 1/c_out^2 (unit-scale target for the network)."""
    B, sd = w0.shape[0], model.cfg.sigma_data
    t = torch.rand(B, generator=g).clamp_min(1e-3)
    alpha, sigma = model.schedule.alpha_sigma(t)
    s = (sigma / alpha).float()
    y = w0 + s[:, None, None, None] * torch.randn(w0.shape, generator=g)
    cond = torch.where(torch.rand(B, generator=g) < p_uncond, torch.full_like(labels, NULL_CONDITION), labels)
    weight = (s**2 + sd**2) / (s * sd) ** 2
    return (weight[:, None, None, None] * (model.denoise_w(y, s, cond) - w0) ** 2).mean()


def train_classifier(
    resolution: int, mean: float, std: float, steps: int, batch: int = 128, seed: int = 0, holdout: float = 0.2,
    log=print,
) -> tuple[DigitsClassifier, dict]:
    """Train on a seeded 80% split with pixel noise augmentation; report the held-out accuracy."""
    torch.manual_seed(seed)
    clf = DigitsClassifier(resolution, mean, std)
    v, labels = load_data()
    train, test = class_split(labels, holdout, seed)
    u = ((v - mean) / std)[:, None]  # the 8x8 standardised image, as `features` sees it
    opt = torch.optim.AdamW(clf.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    g = torch.Generator().manual_seed(seed)
    clf.train()
    for step in range(steps):
        idx = train[torch.randint(len(train), (batch,), generator=g)]
        x = u[idx] + (0.1 / std) * torch.randn(u[idx].shape, generator=g)  # noise of 0.1 in pixel units
        loss = F.cross_entropy(clf.head(clf.features_u(x)), labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step(), sched.step()
        if (step + 1) % 500 == 0:
            log(f"classifier step {step + 1}/{steps}  loss {loss.item():.4f}")
    clf.eval()
    with torch.no_grad():
        acc = (clf.head(clf.features_u(u[test])).argmax(1) == labels[test]).float().mean().item()
    log(f"classifier held-out accuracy {acc:.4f} on {len(test)} digits")
    return clf, {"heldout_accuracy": acc, "heldout_size": len(test), "holdout": holdout, "seed": seed,
                 "steps": steps}


def train_main(args) -> None:
    torch.set_num_threads(args.threads)
    cfg = DigitsConfig(resolution=args.resolution)
    _, ema, report = train_denoiser(cfg, args.steps, batch=args.batch, lr=args.lr, seed=args.seed)
    meta = asdict(cfg) | {"train_steps": args.steps, "train_seconds": round(report.seconds), "seed": args.seed,
                          "final_loss": report.losses[-1]}
    out = Path(args.out)
    save_weights(ema, out / MODEL_FILE.name, meta)
    clf, clf_report = train_classifier(cfg.resolution, cfg.mean, cfg.std, args.classifier_steps, seed=args.seed)
    save_weights(clf, out / CLASSIFIER_FILE.name, {"resolution": cfg.resolution, "mean": cfg.mean, "std": cfg.std,
                                                     **clf_report})
    print(f"wrote {out / MODEL_FILE.name} ({report.seconds:.0f}s, final loss {report.losses[-1]:.4f}) "
          f"and {out / CLASSIFIER_FILE.name} (held-out accuracy {clf_report['heldout_accuracy']:.4f})")


# --------------------------------------------------------------------------------------------------- evaluation


def within_class_median(x: torch.Tensor, labels: torch.Tensor) -> tuple[float, list[float]]:
    """Median pairwise L2 distance within each class (the paper's radius calibration), and their median."""
    per_class = []
    for c in range(10):
        z = x[labels == c].flatten(1).double()
        i, j = torch.triu_indices(len(z), len(z), 1)
        per_class.append(float(torch.cdist(z, z)[i, j].median()))
    return float(torch.tensor(per_class).median()), per_class


def time_per_sample(model: DigitsDenoiser, batch: int, repeats: int = 20) -> float:
    """Seconds per sample of one denoiser evaluation (median over repeats)."""
    x, cond = torch.randn(batch, *model.sample_shape), torch.arange(batch) % 10
    times = []
    with torch.no_grad():
        model(x, torch.tensor(0.5), cond)
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(x, torch.tensor(0.5), cond)
            times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2] / batch


def save_grid(images: torch.Tensor, rows: int, path: Path) -> None:
    """uint8 (N, H, W, 3) -> one PNG, `rows` rows, 2-pixel grey gutters."""
    import matplotlib.image

    n, h, w, _ = images.shape
    cols, pad = n // rows, 2
    grid = torch.full((rows * (h + pad) + pad, cols * (w + pad) + pad, 3), 128, dtype=torch.uint8)
    for k in range(n):
        r, c = divmod(k, cols)
        grid[pad + r * (h + pad):pad + r * (h + pad) + h, pad + c * (w + pad):pad + c * (w + pad) + w] = images[k]
    path.parent.mkdir(parents=True, exist_ok=True)
    matplotlib.image.imsave(path, grid.numpy())


def nearest_distances(x: torch.Tensor, real: torch.Tensor, exclude_self: bool = False) -> torch.Tensor:
    """L2 distance of each x to its nearest real digit (excluding itself when x is the real set)."""
    d = torch.cdist(x.flatten(1).double(), real.flatten(1).double())
    if exclude_self:
        d.fill_diagonal_(math.inf)
    return d.min(1).values


def measure(model, clf, cond: torch.Tensor, guidance: float, steps: int, real) -> tuple[dict, torch.Tensor]:
    """Generate one sample per entry of `cond` (seeds 0..N-1) and measure it: accuracy, spread, closeness to data."""
    from ..samplers import generate

    t0 = time.perf_counter()
    x = generate(model, cond, list(range(len(cond))), sampler=model.default_sampler, steps=steps, guidance=guidance).x0
    with torch.no_grad():
        pred = clf(x).argmax(1)
    return {
        "accuracy": float((pred == cond).float().mean()),
        "per_class_accuracy": [float((pred[cond == c] == c).float().mean()) for c in range(10)],
        "within_class_median": within_class_median(x, cond),
        "nearest_training_distance_median": float(nearest_distances(x, real).median()),
        "seconds": time.perf_counter() - t0,
    }, x


def first_per_class(x: torch.Tensor, labels: torch.Tensor, n: int = 10) -> torch.Tensor:
    return torch.cat([x[labels == c][:n] for c in range(10)])


def grid_name(guidance: float, model: DigitsDenoiser) -> str:
    return "grid.png" if guidance == model.default_guidance else f"grid_w{guidance:g}.png"


def evaluate_main(args) -> None:
    """The analysis entry: real-data reference figures, then per guidance weight; grid at the default weight."""
    import os
    import sys

    torch.set_num_threads(args.threads)
    model, clf = load_digits(), load_classifier()
    steps, out_dir = args.steps or model.default_steps, Path(args.out)
    v, labels = load_data()
    real = model.space.encode(v)
    meta = read_weights(CLASSIFIER_FILE)[1]
    _, heldout = class_split(labels, meta.get("holdout", 0.2), meta["seed"])
    with torch.no_grad():
        real_acc = float((clf(real[heldout]).argmax(1) == labels[heldout]).float().mean())
    report = {
        "command": "python -m spell_lab.models.digits " + " ".join(sys.argv[1:]),
        "sampler": model.default_sampler, "steps": steps, "per_class": args.per_class,
        "params": sum(p.numel() for p in model.net.parameters()),
        "ms_per_sample": {b: 1e3 * time_per_sample(model, b) for b in (32, 256)}, "load_average": os.getloadavg(),
        "real": {"n": len(real), "within_class_median": within_class_median(real, labels),
                 "nearest_other_distance_median": float(nearest_distances(real, real, exclude_self=True).median()),
                 "classifier_heldout_accuracy": real_acc, "heldout_n": len(heldout)},
        "guidance": {},
    }
    cond = torch.arange(10).repeat_interleave(args.per_class)
    for w in [float(g) for g in args.guidance.split(",")]:
        report["guidance"][str(w)], x = measure(model, clf, cond, w, steps, real)
        print(f"guidance {w}: accuracy {report['guidance'][str(w)]['accuracy']:.3f}, within-class median "
              f"{report['guidance'][str(w)]['within_class_median'][0]:.1f} "
              f"(real {report['real']['within_class_median'][0]:.1f})")
        if w in (1.0, model.default_guidance):  # the default weight, and no guidance for comparison
            save_grid(model.space.to_images(first_per_class(x, cond)), 10, out_dir / grid_name(w, model))
    save_grid(model.space.to_images(first_per_class(real, labels)), 10, out_dir / "grid_real.png")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "metrics.json").write_text(json.dumps(report, indent=1))
    print(f"wrote {out_dir / 'metrics.json'}")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m spell_lab.models.digits", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train the diffusion model and the classifier from scratch (seeded)")
    t.add_argument("--steps", type=int, default=5000)
    t.add_argument("--classifier-steps", type=int, default=1000)
    t.add_argument("--batch", type=int, default=128)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--resolution", type=int, default=48)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--threads", type=int, default=2)
    t.add_argument("--out", default=str(WEIGHTS_DIR), help="folder for the weights (default: the package's)")
    e = sub.add_parser("evaluate", help="measure accuracy and distances; write the analysis entry")
    e.add_argument("--per-class", type=int, default=100)
    e.add_argument("--guidance", default="1,3", help="comma-separated CFG weights (1 = no guidance)")
    e.add_argument("--steps", type=int, default=None, help="sampler steps (default: the model's)")
    e.add_argument("--out", default="analysis/digits")
    e.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    if args.command == "train":
        train_main(args)
    else:
        evaluate_main(args)


if __name__ == "__main__":
    main()
