"""`digits`' own training set as a protected set: all 1797 of scikit-learn's digits (digits_train trains on every
one) in the model's diffusion space, grown by `digits_augment.grow`. The registry's `training_set` of `digits`."""

from __future__ import annotations

import numpy as np
import torch

from .digits import load_data
from .digits_augment import grow


def training_set(model, set_size: int | None, seed: int, data_dir=None) -> np.ndarray:
    """(N, 1, R, R) float32: the training images, then set_size - 1797 warped copies. `data_dir`: unused (bundled)."""
    pixels, _ = load_data()
    pixels = grow(pixels, set_size or len(pixels), seed)
    with torch.no_grad():
        return torch.cat([model.space.encode(p) for p in pixels.split(8192)]).cpu().numpy().astype(np.float32)
