"""Fashion-MNIST (Xiao et al., 2017; MIT licence): 60,000 training and 10,000 test images, 28x28 grey, 10 classes.

Read from the four IDX files of Debian's `dataset-fashion-mnist` package (/usr/share/datasets/fashion-mnist) or a
directory the user names; nothing downloads. A stratified part of the test set ships with the package in compact
form (`weights/fashion/heldout.npz`), so the metrics need no dataset install.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

DEFAULT_DIR = Path("/usr/share/datasets/fashion-mnist")
FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
         "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
CLASS_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
HELDOUT_FILE = Path(__file__).parent / "weights" / "fashion" / "heldout.npz"


class DatasetMissing(FileNotFoundError):
    """The Fashion-MNIST IDX files are not where the command looked."""


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (optionally gzipped) as a numpy array: magic (0, 0, dtype 0x08 = uint8, ndim), big-endian dims."""
    raw = (gzip.open if path.suffix == ".gz" else open)(path, "rb").read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{path} is not a uint8 IDX file; restore it from the dataset-fashion-mnist package.")
    ndim = raw[3]
    dims = np.frombuffer(raw, dtype=">u4", count=ndim, offset=4).astype(int)
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise ValueError(f"{path} holds {data.size} values, its header says {tuple(dims)}; the file is truncated.")
    return data.reshape(tuple(dims))


def _find(directory: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (directory / name).is_file():
            return directory / name
    return None


def dataset_available(data_dir: str | Path | None = None) -> bool:
    d = Path(data_dir) if data_dir is not None else DEFAULT_DIR
    return all(_find(d, stem) for pair in FILES.values() for stem in pair)


def load_split(split: str, data_dir: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N, 28, 28), labels int64 (N,)) of the 'train' or 'test' split."""
    d = Path(data_dir) if data_dir is not None else DEFAULT_DIR
    found = [_find(d, stem) for stem in FILES[split]]
    if None in found:
        raise DatasetMissing(
            f"Fashion-MNIST's IDX files are not in {d}; install them with `apt-get install dataset-fashion-mnist` "
            f"(puts them in {DEFAULT_DIR}) or pass --data DIR holding {', '.join(FILES[split])} (.gz or not).")
    images, labels = read_idx(found[0]), read_idx(found[1]).astype(np.int64)
    if images.shape[1:] != (28, 28) or len(images) != len(labels):
        raise ValueError(f"{found[0]} and {found[1]} do not hold matching 28x28 images and labels.")
    return images, labels


def stratified_part(labels: np.ndarray, per_class: int, seed: int = 0) -> np.ndarray:
    """Sorted indices of `per_class` items of each class, drawn with a seeded permutation."""
    rng = np.random.default_rng(seed)
    keep = [rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in np.unique(labels)]
    return np.sort(np.concatenate(keep))


def write_heldout(path: Path, data_dir=None, per_class: int = 300, seed: int = 0) -> Path:
    """The shipped held-out images: a stratified part of the test set, uint8, compressed."""
    images, labels = load_split("test", data_dir)
    idx = stratified_part(labels, per_class, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, images=images[idx], labels=labels[idx], test_index=idx, seed=seed)
    return path


def heldout(data_dir=None, prefer_full: bool = True) -> tuple[np.ndarray, np.ndarray, str]:
    """Held-out real images for the metrics: the whole test set where the dataset is installed (or `data_dir`
    names it), else the shipped stratified part. Returns (images uint8, labels, a description of which)."""
    if prefer_full and dataset_available(data_dir):
        images, labels = load_split("test", data_dir)
        return images, labels, f"the Fashion-MNIST test set ({len(labels)} images, {data_dir or DEFAULT_DIR})"
    if data_dir is not None:
        load_split("test", data_dir)  # names what is missing from the directory the user gave
    with np.load(HELDOUT_FILE) as f:
        images, labels = f["images"], f["labels"]
    return images, labels, (f"the shipped stratified part of the Fashion-MNIST test set ({len(labels)} images, "
                            f"{len(labels) // 10} per class)")
