"""Feature arrays for the metrics, and the extractors that produce them.

Every extractor is a callable `extractor(x) -> (N, D) float32 tensor` (on its device), run in batches without
gradients:
  - `RawFeatures()`            the diffusion-space vectors themselves, flattened;
  - `DigitsFeatures()`         penultimate features of the built-in digits classifier (the digits metric space);
  - `InceptionFeatures(path)`  a TorchScript FID Inception-v3 (StyleGAN3/EDM's `inception-2015-12-05.pt`);
  - `DINOv2Features(path)`     a local DINOv2 checkpoint (transformers `save_pretrained` folder), CLS token.
Nothing downloads: the weights of Inception and DINOv2 come from a path the user gives.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as Fn


def as_features(x, name: str = "features") -> torch.Tensor:
    """A finite (N, D) floating tensor from a numpy array or tensor (no copy for float numpy arrays)."""
    t = torch.from_numpy(np.ascontiguousarray(x)) if isinstance(x, np.ndarray) else torch.as_tensor(x).detach()
    if not t.is_floating_point():
        t = t.double()
    if t.ndim != 2:
        raise ValueError(
            f"{name} features must be 2-D (n_samples, n_features); got shape {tuple(t.shape)}. "
            f"Flatten samples with RawFeatures() or run a feature extractor first"
        )
    if len(t) == 0 or t.shape[1] == 0:
        raise ValueError(f"{name} features are empty (shape {tuple(t.shape)}); pass at least one sample and feature")
    bad = torch.cat([~torch.isfinite(t[a : a + 8192]).all(1) for a in range(0, len(t), 8192)])  # chunked: bounded memory
    if bad.any():
        rows = bad.nonzero().squeeze(1)
        raise ValueError(
            f"{name} features contain NaN or inf in {len(rows)} of {len(t)} rows (first: row {rows[0].item()}); "
            f"drop or regenerate those samples before computing metrics"
        )
    return t


def check_same_width(real: torch.Tensor, fake: torch.Tensor) -> None:
    if real.shape[1] != fake.shape[1]:
        raise ValueError(
            f"real and fake features have different widths ({real.shape[1]} vs {fake.shape[1]}); "
            f"extract both with the same feature extractor"
        )


class FeatureExtractor:
    """Base: `__call__(x)` maps a batch of samples to (N, D) float32 features, `batch_size` at a time."""

    batch_size: int = 256
    device: torch.device | str | None = "cpu"  # None: stay on the input's device

    def extract(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    @torch.no_grad()
    def __call__(self, x) -> torch.Tensor:
        x = torch.as_tensor(x)
        dev = x.device if self.device is None else self.device
        parts = [self.extract(x[a : a + self.batch_size].to(dev)) for a in range(0, len(x), self.batch_size)]
        return torch.cat(parts).reshape(len(x), -1).float()


class RawFeatures(FeatureExtractor):
    """The diffusion-space tensors (N, *shape) themselves, flattened to (N, prod(shape))."""

    def __init__(self, batch_size: int = 4096):
        self.batch_size, self.device = batch_size, None

    def extract(self, x):
        return x.reshape(len(x), -1)


class DigitsFeatures(FeatureExtractor):
    """Penultimate features of the shipped digits classifier; input in the digits model's diffusion space (B, 1, R, R)."""

    def __init__(self, device="cpu", batch_size: int = 1024, classifier=None):
        self.device, self.batch_size = device, batch_size
        if classifier is None:
            from spell_lab.models.digits import load_classifier  # lazy: the metrics import without the models

            classifier = load_classifier(device=device)
        self.net = classifier.eval()

    def extract(self, x):
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # one thread: the same features (to the bit) whatever the caller's thread count
        try:
            return self.net.features(x.float())
        finally:
            torch.set_num_threads(threads)


def _require_path(path, what: str, how: str) -> Path:
    if path is None or not Path(path).exists():
        raise FileNotFoundError(f"{what} weights not found at {path!r}; pass the local path of {how}. Nothing is downloaded")
    return Path(path)


def to_nchw(x: torch.Tensor) -> torch.Tensor:
    """Images as (N, C, H, W) with C in {1, 3}: NCHW is kept, NHWC (the project's `to_images` layout) is permuted."""
    if x.ndim != 4:
        raise ValueError(f"images must be 4-D (N, C, H, W) or (N, H, W, C); got shape {tuple(x.shape)}")
    if x.shape[1] in (1, 3):
        return x
    if x.shape[-1] in (1, 3):
        return x.permute(0, 3, 1, 2)
    raise ValueError(f"images need 1 or 3 channels, first or last; got shape {tuple(x.shape)}")


def to_unit_rgb(x: torch.Tensor) -> torch.Tensor:
    """float RGB in [0, 1], (N, 3, H, W): uint8 images are divided by 255, float images are taken in [-1, 1]."""
    x = to_nchw(x)
    x = x.float() / 255 if x.dtype == torch.uint8 else ((x.float() + 1) / 2).clamp(0, 1)
    return x.expand(-1, 3, -1, -1)  # grayscale -> RGB


class InceptionFeatures(FeatureExtractor):
    """FID Inception-v3 features from a TorchScript file (StyleGAN3/EDM's `inception-2015-12-05.pt`, 2048-d pool3).

    Images: (N, C, H, W) or (N, H, W, C), C in {1, 3}; uint8 in [0, 255], or float in [-1, 1] (the diffusion
    convention). They are passed as uint8 RGB NCHW (rounded, grayscale repeated), the detector's own input: it resizes
    to 299 x 299 and normalises itself. The module is called as `module(images, **call_kwargs)`; the default
    `{"return_features": True}` selects the pool3 features of that detector. For another TorchScript module taking the
    same input, pass the keyword arguments it needs (`{}` for none).
    """

    def __init__(self, path, device="cpu", batch_size: int = 64, call_kwargs: dict | None = None):
        path = _require_path(path, "Inception", "a TorchScript FID Inception, e.g. inception-2015-12-05.pt")
        self.device, self.batch_size = device, batch_size
        self.call_kwargs = {"return_features": True} if call_kwargs is None else dict(call_kwargs)
        try:
            self.net = torch.jit.load(str(path), map_location=device).eval()
        except RuntimeError as err:
            raise ValueError(f"{path} is not a TorchScript module (torch.jit.load failed: {err}); pass a .pt saved by torch.jit") from err

    def extract(self, x):
        u8 = (to_unit_rgb(x) * 255).round().to(torch.uint8)
        return self.net(u8, **self.call_kwargs)


IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class DINOv2Features(FeatureExtractor):
    """DINOv2 CLS-token features (`pooler_output`, as in Stein et al. 2023) from a local transformers checkpoint folder.

    Loaded with `AutoModel.from_pretrained(path, local_files_only=True)`. Images: as for `InceptionFeatures`
    (uint8 [0, 255] or float [-1, 1], 1 or 3 channels, NCHW or NHWC). They are mapped to RGB [0, 1], resized to
    `image_size` x `image_size` (bicubic, antialiased; 224 is DINOv2's training size) and normalised with the ImageNet
    mean and std.
    """

    def __init__(self, path, device="cpu", batch_size: int = 64, image_size: int = 224):
        path = _require_path(path, "DINOv2", "a DINOv2 checkpoint folder (transformers save_pretrained, e.g. facebook/dinov2-base)")
        from transformers import AutoModel  # lazy: transformers is only needed here

        self.device, self.batch_size, self.image_size = device, batch_size, image_size
        self.net = AutoModel.from_pretrained(str(path), local_files_only=True).to(device).eval()
        self.mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)

    def extract(self, x):
        x = Fn.interpolate(to_unit_rgb(x), size=(self.image_size,) * 2, mode="bicubic", antialias=True, align_corners=False)
        return self.net(pixel_values=(x - self.mean) / self.std).pooler_output
