"""Reference sets from files (the protected set): .npy, .pt or .safetensors, in the model's diffusion space."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..protect import build_index, spec_key


def load_reference_set(path: str | Path) -> torch.Tensor:
    """An (N, *sample_shape) float tensor from a file; a clear error for a missing file or an unknown format."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"protected set {p} does not exist; give a .npy, .pt or .safetensors file of references.")
    if p.suffix == ".npy":
        items = torch.from_numpy(np.load(p))
    elif p.suffix == ".pt":
        items = torch.load(p, map_location="cpu", weights_only=True)
    elif p.suffix == ".safetensors":
        from safetensors.torch import load_file

        tensors = load_file(str(p))
        if len(tensors) != 1 and "items" not in tensors:
            raise ValueError(f"{p} holds tensors {sorted(tensors)}; store the references as one tensor named 'items'.")
        items = tensors.get("items", next(iter(tensors.values())))
    else:
        raise ValueError(f"unknown reference file type {p.suffix!r} for {p}; use .npy, .pt or .safetensors.")
    if not isinstance(items, torch.Tensor) or items.ndim < 2:
        raise ValueError(f"{p} must hold one (N, ...) tensor of references, got {type(items).__name__}.")
    return items.float()


def check_references(items: torch.Tensor, sample_shape, path) -> None:
    if tuple(items.shape[1:]) != tuple(sample_shape):
        raise ValueError(
            f"protected set {path} has items of shape {tuple(items.shape[1:])}, but the model's diffusion space is "
            f"{tuple(sample_shape)}: encode the references into the model's space (latents for latent models)."
        )


class ProtectedLoader:
    """Builds each distinct protected-set spec's index once per process, on that process's device (picklable for
    DDP); keyed by `protect.spec_key`."""

    def __init__(self, specs):
        self.specs = {spec_key(s): s for s in specs}

    def __call__(self, device) -> dict:
        return {k: build_index(s, load_reference_set(s["path"]).to(device)) for k, s in self.specs.items()}
