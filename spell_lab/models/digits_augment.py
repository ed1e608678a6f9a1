"""Deterministic augmentations of 8x8 digits: grow a protected set beyond the training images (issue 15's scale runs).

Each new item is one training image, chosen in turn, resampled through a small random warp: a sub-pixel shift, a
small rotation about the centre and an elastic jitter (a smooth random displacement field: Gaussian offsets on a
coarse grid, upsampled bicubically). Everything is drawn from one seeded generator on the CPU, so the same
(images, size, seed) gives the same set bit for bit. Pure tensor code: no model, no files.

    grow(images, 20_000, seed=0)   # (20000, 8, 8): the 1797 originals first, then augmented copies
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

MAX_SHIFT = 0.6  # pixels of the 8x8 grid, uniform in [-MAX_SHIFT, MAX_SHIFT] per axis
MAX_DEGREES = 10.0  # rotation, uniform in [-MAX_DEGREES, MAX_DEGREES]
ELASTIC = 0.25  # std of the elastic displacement, in pixels
ELASTIC_GRID = 3  # the coarse grid the displacement is drawn on (3x3 -> 8x8: smooth)
CHUNK = 4096  # warps per batch (memory stays small for millions of items)


def warp(images: torch.Tensor, g: torch.Generator, *, max_shift=MAX_SHIFT, max_degrees=MAX_DEGREES,
         elastic=ELASTIC, elastic_grid=ELASTIC_GRID) -> torch.Tensor:
    """One random warp per image (n, H, W) in [0, 1] -> (n, H, W) in [0, 1]; background outside stays 0.
    Shift and elastic std in pixels of the image's grid (fashion_training_set warps 28x28 images with it)."""
    n, h, w = images.shape
    to_unit = torch.tensor([2.0 / w, 2.0 / h])  # pixels -> grid_sample's [-1, 1] coordinates
    angle = (torch.rand(n, generator=g) * 2 - 1) * math.radians(max_degrees)
    shift = (torch.rand(n, 2, generator=g) * 2 - 1) * max_shift * to_unit
    cos, sin = angle.cos(), angle.sin()
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, (n, 1, h, w), align_corners=False)  # (n, H, W, 2): where each output pixel reads
    coarse = torch.randn(n, 2, elastic_grid, elastic_grid, generator=g) * elastic
    field = F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=True).permute(0, 2, 3, 1)
    out = F.grid_sample(images[:, None], grid + field * to_unit, mode="bilinear", padding_mode="zeros",
                        align_corners=False)
    return out[:, 0].clamp(0, 1)


def grow(images: torch.Tensor, size: int, seed: int = 0) -> torch.Tensor:
    """`images` (N, H, W) in [0, 1] followed by size - N warped copies (copy j warps image j mod N): (size, H, W)."""
    n = images.shape[0]
    if size < n:
        raise ValueError(f"the protected set grows from the {n} training images and never shrinks: give a set size "
                         f">= {n} (got {size}).")
    images = images.float()
    g = torch.Generator().manual_seed(int(seed))
    parts, j = [images], 0
    while j < size - n:
        k = min(CHUNK, size - n - j)
        parts.append(warp(images[(torch.arange(j, j + k)) % n], g))
        j += k
    return torch.cat(parts)

