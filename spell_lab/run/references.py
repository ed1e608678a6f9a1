"""Reference sets from files (the protected set): .npy, .pt or .safetensors, in the model's diffusion space."""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import numpy as np
import torch

from ..protect import build_index, spec_key
from ..repellency import all_finite


def load_reference_set(path: str | Path) -> torch.Tensor:
    """An (N, *sample_shape) float tensor from a file; a clear error for a missing file or an unknown format."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"protected set {p} does not exist; give a .npy, .pt or .safetensors file of references.")
    if p.suffix not in (".npy", ".pt", ".safetensors"):
        raise ValueError(f"unknown reference file type {p.suffix!r} for {p}; use .npy, .pt or .safetensors.")
    try:
        items = _read(p)
    except _Layout:
        raise
    except Exception as err:  # numpy, torch and safetensors each raise their own types for a broken file
        raise ValueError(f"protected set {p} is not a readable {p.suffix} file ({type(err).__name__}: "
                         f"{str(err).splitlines()[0] if str(err) else 'unreadable'}); write it with numpy.save, "
                         "torch.save or safetensors.") from None
    if not isinstance(items, torch.Tensor) or items.ndim < 2:
        raise ValueError(f"{p} must hold one (N, ...) tensor of references, got {type(items).__name__}.")
    return items.float()


class _Layout(ValueError):
    """A readable file that holds something other than one tensor of references."""


def _read(p: Path):
    if p.suffix == ".npy":  # memory-mapped: a large set is paged in as it is read, never loaded whole
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # read-only map: nothing writes to references
            return torch.from_numpy(np.load(p, mmap_mode="r", allow_pickle=False))
    if p.suffix == ".pt":
        return torch.load(p, map_location="cpu", weights_only=True)
    from safetensors.torch import load_file

    tensors = load_file(str(p))
    if len(tensors) != 1 and "items" not in tensors:
        raise _Layout(f"{p} holds tensors {sorted(tensors)}; store the references as one tensor named 'items'.")
    return tensors.get("items", next(iter(tensors.values())))


def file_digest(path) -> str:
    """A digest of a file's contents, so that resuming into a store made from other contents is refused."""
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            h.update(block)
    return h.hexdigest()


def check_references(items: torch.Tensor, sample_shape, path) -> None:
    if tuple(items.shape[1:]) != tuple(sample_shape):
        raise ValueError(
            f"protected set {path} has items of shape {tuple(items.shape[1:])}, but the model's diffusion space is "
            f"{tuple(sample_shape)}: encode the references into the model's space (latents for latent models)."
        )
    if items.shape[0] == 0:
        raise ValueError(f"protected set {path} is empty; give at least one reference.")
    if not all_finite(items):
        raise ValueError(f"protected set {path} contains NaN or inf; clean it before shielding it.")


class ProtectedLoader:
    """Builds each distinct protected-set spec's index once per process, on that process's device (picklable for
    DDP); keyed by `protect.spec_key`."""

    def __init__(self, specs):
        self.specs = {spec_key(s): s for s in specs}

    def __call__(self, device) -> dict:
        return {k: build_index(s, load_reference_set(s["path"]), device) for k, s in self.specs.items()}
