"""The digits model's held-out real data and condition-fidelity score (its registry entry's `reference` and
`fidelity`): the digits the shipped classifier was *not* trained on, and that classifier's probability of the
requested class (the paper's CLIP-score stand-in)."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from .digits import CLASSIFIER_FILE, class_split, load_classifier, load_data, read_weights


def held_out(conditions, per_condition: int | None, seed: int):
    """The classifier's seeded stratified held-out split (recomputed with `class_split` and the seed stored in its
    weights), encoded into the diffusion space: (x, cond, description). `per_condition` and `seed` are unused: the
    split is fixed by the shipped classifier."""
    _, meta = read_weights(CLASSIFIER_FILE)
    holdout = float(meta.get("holdout", 0.2))  # train_classifier's default split
    v, labels = load_data()
    _, test = class_split(labels, holdout, int(meta.get("seed", 0)))
    if "heldout_size" in meta and len(test) != int(meta["heldout_size"]):
        raise ValueError(f"the recomputed held-out split has {len(test)} digits, the classifier's metadata says "
                         f"{meta['heldout_size']}; the split no longer matches the shipped classifier.")
    keep = test[torch.isin(labels[test], torch.tensor(conditions))]
    clf = _classifier()
    with torch.no_grad():
        x = clf.space.encode(v[keep])
    desc = (f"{len(keep)} held-out digits (the classifier's {holdout:.0%} split, seed {meta.get('seed', 0)}); "
            f"features: classifier penultimate layer ({clf.feature_dim}-d)")
    return x, labels[keep].numpy(), desc


@lru_cache(maxsize=1)
def _classifier():
    return load_classifier().eval()


def fidelity(x0, cond) -> np.ndarray:
    """(N,) probability the shipped classifier gives the requested class, one thread (the figures must not depend on
    the thread count)."""
    clf = _classifier()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            p = torch.cat([clf(torch.as_tensor(x0[i:i + 1024]).float()).softmax(-1) for i in range(0, len(x0), 1024)])
    finally:
        torch.set_num_threads(threads)
    return p[torch.arange(len(p)), torch.as_tensor(np.asarray(cond), dtype=torch.long)].numpy()
