"""`fashion`'s own training set as a protected set: the 60,000 Fashion-MNIST training images in the diffusion space.

    training_set(model, set_size=None, seed=0)   # (N, 4, 8, 8) float32, scaled like the model's own latents
    python -m spell_lab.models.fashion_training_set --n 1200000 [--data DIR]   # fill the cache ahead of a run

Item i < 60,000 is training image i; item i >= 60,000 warps image i mod 60,000 in image space (a shift, a small
rotation and an elastic jitter: `digits_augment.warp` at 28x28), each block of CHUNK warps drawn from a generator
seeded by (seed, block), so a smaller set is a prefix of a larger one. Items are encoded as the model encodes its own
latents (the VAE's posterior mean) and cached on disk UNSCALED under $XDG_CACHE_HOME/spell_lab (default ~/.cache),
keyed by a digest of the VAE's weights, the training-image file and the augmentation parameters; the model's
scaling_factor is applied after loading, so a model retrained with another scaling factor on the same VAE reuses it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
from pathlib import Path

import numpy as np
import torch
from filelock import FileLock

from .digits_augment import warp
from .fashion import pad_images
from .fashion_data import FILES, load_split

AUGMENT = dict(max_shift=2.0, max_degrees=10.0, elastic=0.9, elastic_grid=4)  # pixels of the 28x28 grid
CHUNK = 6000  # warps per seeded block
BATCH = 500  # images per encoder call; batches sit at multiples of BATCH, so a cached prefix is reused bit for bit
VERSION = 1  # bump when the items change for the same key inputs


def cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "spell_lab" / "fashion_training_set"


def _digest_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _digest_vae(vae) -> str:
    h = hashlib.sha256()
    for name, t in sorted(vae.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def cache_key(vae, data_dir=None) -> str:
    from .fashion_data import DEFAULT_DIR, _find

    images = _find(Path(data_dir) if data_dir is not None else DEFAULT_DIR, FILES["train"][0])
    parts = dict(vae=_digest_vae(vae), data=_digest_file(images), augment=AUGMENT, chunk=CHUNK, version=VERSION)
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:20]


def images_in_space(images: np.ndarray, start: int, stop: int, seed: int) -> torch.Tensor:
    """Items [start, stop) as padded images (n, 1, 32, 32) in [-1, 1]; `images` (N0, 28, 28) uint8."""
    n0, parts = len(images), []
    if start < n0:
        parts.append(pad_images(images[start:min(stop, n0)]))
    for block in range(max(0, start - n0) // CHUNK, max(0, stop - n0 + CHUNK - 1) // CHUNK):
        lo, hi = n0 + block * CHUNK, n0 + (block + 1) * CHUNK
        if hi <= start or lo >= stop:
            continue
        warped = augment_block(images, block, seed)[max(start, lo) - lo:min(stop, hi) - lo]
        parts.append(torch.nn.functional.pad(warped[:, None] * 2 - 1, (2, 2, 2, 2), value=-1.0))
    return torch.cat(parts)


def augment_block(images: np.ndarray, block: int, seed: int) -> torch.Tensor:
    """The CHUNK warps of block `block`: item n0 + block * CHUNK + j warps image (block * CHUNK + j) mod n0."""
    n0 = len(images)
    src = (block * CHUNK + np.arange(CHUNK)) % n0
    state = np.random.SeedSequence([int(seed), int(block)]).generate_state(1, dtype=np.uint64)[0]
    g = torch.Generator().manual_seed(int(state & 0x7FFF_FFFF_FFFF_FFFF))
    return warp(torch.from_numpy(images[src].astype(np.float32) / 255.0), g, **AUGMENT)


@torch.no_grad()
def encode_unscaled(vae, x: torch.Tensor) -> torch.Tensor:
    """The VAE's posterior mean, as `FashionDenoiser.encode` before its scaling factor."""
    return vae.encode(x.to(vae.dtype)).latent_dist.mean.float()


def _cached(folder: Path, seed: int) -> tuple[int, Path | None]:
    """The largest cached set for this seed: (its size, its path), or (0, None)."""
    found = [(int(m.group(1)), p) for p in folder.glob(f"seed{seed}-n*.npy")
             if (m := re.fullmatch(rf"seed{seed}-n(\d+)\.npy", p.name))]
    return max(found, default=(0, None))


def unscaled_set(vae, n: int | None, seed: int = 0, data_dir=None, progress=None) -> np.ndarray:
    """Items [0, n) unscaled (n None: the training images), (n, 4, 8, 8) float32, memory-mapped from the cache
    (encoded and written on a miss; a smaller cached set is copied as the prefix)."""
    images, _ = load_split("train", data_dir)  # a missing dataset stops here, before anything is created
    n = len(images) if n is None else n
    if n < len(images):
        raise ValueError(f"the protected set grows from the {len(images)} training images and never shrinks: give "
                         f"a set size >= {len(images)} (got {n}).")
    folder = cache_dir() / cache_key(vae, data_dir)
    have, path = _cached(folder, seed) if folder.is_dir() else (0, None)
    if have >= n:
        return np.load(path, mmap_mode="r")[:n]
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".seed{seed}-n{n}.partial.npy"
    with FileLock(str(tmp) + ".lock"):  # one writer; a killed one's partial is resumed from its last flushed block
        out, start = _open_partial(tmp, n, path, have)
        for span in range(start, n, CHUNK):  # one warp block at a time, encoded in BATCH-aligned batches
            x = images_in_space(images, span, min(n, span + CHUNK), seed)
            for lo in range(0, len(x), BATCH):
                out[span + lo:span + lo + BATCH] = encode_unscaled(vae, x[lo:lo + BATCH]).numpy()
            out.flush()
            _write_done(tmp, span + len(x))
            if progress is not None:
                progress(span + len(x), n)
        del out
        final = folder / f"seed{seed}-n{n}.npy"
        tmp.replace(final)
        _done_file(tmp).unlink()
    return np.load(final, mmap_mode="r")


def _done_file(tmp: Path) -> Path:
    return tmp.with_name(tmp.name + ".done")  # how many rows of the partial are written and flushed


def _write_done(tmp: Path, rows: int) -> None:
    part = tmp.with_name(tmp.name + ".done.tmp")
    part.write_text(str(rows))
    part.replace(_done_file(tmp))  # atomic: a kill leaves the old count or the new one


def _open_partial(tmp: Path, n: int, path: Path | None, have: int):
    """The partial file to fill and the first row to encode: an interrupted one resumed from its flushed rows, else a
    new one holding the largest cached smaller set as its prefix."""
    if tmp.exists() and _done_file(tmp).exists():
        return np.lib.format.open_memmap(tmp, mode="r+"), int(_done_file(tmp).read_text())
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n, 4, 8, 8))
    start = 0
    if path is not None:
        start = have - have % BATCH
        out[:start] = np.load(path, mmap_mode="r")[:start]
        out.flush()
    _write_done(tmp, start)
    return out, start


def training_set(model, set_size: int | None = None, seed: int = 0, data_dir=None) -> np.ndarray:
    """The registry's `training_set` of `fashion`: (N, 4, 8, 8) float32 in the diffusion space (N = set_size, or the
    training images: 60,000)."""
    unscaled = unscaled_set(model.vae, set_size, seed, data_dir)
    return (torch.from_numpy(np.array(unscaled)) * model.scaling_factor).numpy()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Encode fashion's training set (grown to --n) into the cache.")
    p.add_argument("--n", type=int, default=None, help="items (default: the training images)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", type=str, default=None, help="directory of the Fashion-MNIST IDX files")
    args = p.parse_args(argv)
    from .fashion import load_fashion

    torch.set_num_threads(1)
    step = max(CHUNK, (args.n or 0) // 100)
    x = unscaled_set(load_fashion().vae, args.n, args.seed, args.data,
                     progress=lambda i, n: print(f"{i:,} / {n:,}", flush=True) if i % step < CHUNK else None)
    print(f"cached: {x.shape} in {cache_dir()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
