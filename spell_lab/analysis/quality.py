"""Per-condition quality of generated samples against held-out real data (the paper's protocol): precision, recall,
density, coverage (k = 5 neighbours), Vendi and Fréchet distance computed within each condition, fakes against that
condition's real samples. `vendi` is on the metric features (the digits classifier's penultimate layer on digits,
the raw vectors on gmm); `vendi_raw` is on the raw diffusion-space outputs x0. `real_vendi`, `real_vendi_raw`: the
same Vendi scores of that condition's held-out real samples at the generated sample size (mean over 10 seeded
subsets; Vendi grows with the number of samples). `fidelity`, where the model has a classifier: its mean probability
of the requested condition (the paper's CLIP-score stand-in)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
import xarray as xr


def reference_data(model: str, conditions, *, per_condition: int = 256, seed: int = 12345):
    """Held-out real data in the diffusion space for a built-in model: (x, cond, feature extractor, description).

    digits: the digits the shipped classifier was *not* trained on (its seeded stratified 20% split, recomputed with
    `class_split` and the seed stored in the classifier's weights), encoded into the diffusion space; features are
    the classifier's penultimate layer. gmm: `per_condition` exact samples of each condition's mixture
    (mean of a uniformly drawn component + std x noise, seeded); features are the raw vectors."""
    from ..metrics import DigitsFeatures, RawFeatures

    conditions = [int(c) for c in conditions]
    if model == "gmm":
        from ..models import load_model

        gmm = load_model("gmm")
        g = torch.Generator().manual_seed(seed)
        xs, cs = [], []
        for c in conditions:
            j = torch.randint(gmm.components, (per_condition,), generator=g)
            noise = torch.randn(per_condition, gmm.means.shape[-1], generator=g)
            xs.append((gmm.means[c, j] + gmm.std * noise).reshape(per_condition, *gmm.sample_shape))
            cs.append(torch.full((per_condition,), c))
        desc = f"{per_condition} exact mixture samples per condition (seed {seed}); features: raw vectors"
        return torch.cat(xs), torch.cat(cs).numpy(), RawFeatures(), desc
    if model == "digits":
        from ..models.digits import CLASSIFIER_FILE, class_split, load_classifier, load_data, read_weights

        _, meta = read_weights(CLASSIFIER_FILE)
        holdout = float(meta.get("holdout", 0.2))  # train_classifier's default split
        v, labels = load_data()
        _, test = class_split(labels, holdout, int(meta.get("seed", 0)))
        if "heldout_size" in meta and len(test) != int(meta["heldout_size"]):
            raise ValueError(f"the recomputed held-out split has {len(test)} digits, the classifier's metadata says "
                             f"{meta['heldout_size']}; the split no longer matches the shipped classifier.")
        keep = test[torch.isin(labels[test], torch.tensor(conditions))]
        clf = load_classifier()
        with torch.no_grad():
            x = clf.space.encode(v[keep])
        desc = (f"{len(keep)} held-out digits (the classifier's {holdout:.0%} split, seed {meta.get('seed', 0)}); "
                f"features: classifier penultimate layer ({clf.feature_dim}-d)")
        return x, labels[keep].numpy(), DigitsFeatures(classifier=clf), desc
    if model == "fashion":
        from ..models.fashion import FashionFeatures, held_out

        x, cond, desc = held_out(conditions)
        return x, cond, FashionFeatures(), desc
    raise ValueError(f"no held-out real data is known for model {model!r}; pass `reference=(x, cond, features)` "
                     f"to analyse_run / metric tables (built-in: gmm, digits).")



def generated(ds: xr.Dataset) -> tuple[torch.Tensor, np.ndarray]:
    """A group's outputs x0 as a float32 tensor and their conditions."""
    x0 = ds["x0"].transpose("sample", ...).values
    return torch.from_numpy(np.ascontiguousarray(x0, dtype=np.float32)), ds["condition"].values



def condition_fidelity(model: str):
    """The condition-fidelity score of a built-in model, `(x0, cond) -> (N,)` probability the model's classifier gives
    the requested condition (digits: the shipped classifier, one thread so the figures do not depend on the thread
    count); None for models without a classifier (the column is then left out)."""
    if model == "fashion":
        from ..models.fashion import fidelity

        return fidelity
    if model != "digits":
        return None
    from ..models.digits import load_classifier

    clf = load_classifier().eval()

    def score(x0, cond) -> np.ndarray:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with torch.no_grad():
                p = torch.cat([clf(torch.as_tensor(x0[i:i + 1024]).float()).softmax(-1) for i in range(0, len(x0), 1024)])
        finally:
            torch.set_num_threads(threads)
        return p[torch.arange(len(p)), torch.as_tensor(np.asarray(cond), dtype=torch.long)].numpy()

    return score


def condition_metrics(x0, cond, real_x, real_cond, features, k: int = 5, real_features=None,
                      fidelity=None) -> pd.DataFrame:
    """One row per condition of the fakes: n, precision, recall, density, coverage, vendi, vendi_raw, fd, real_vendi
    (and fidelity, given `fidelity` from `condition_fidelity`). `features` maps (N, *shape) tensors to (N, D)
    features; pass `real_features` to reuse the real ones."""
    from ..metrics import frechet_distance, per_condition, prdc, vendi

    x0 = torch.as_tensor(x0)
    cond = np.asarray(cond)
    counts = pd.Series(cond).value_counts()
    if (counts < k + 1).any():
        c = counts.idxmin()
        raise ValueError(f"condition {c} has {counts[c]} generated samples; per-condition precision/recall need "
                         f"at least k + 1 = {k + 1}. Generate more samples per condition.")
    rf = features(real_x) if real_features is None else real_features
    ff = features(x0)
    raw = x0.reshape(len(x0), -1)
    q = per_condition(prdc, rf, ff, real_cond, cond, k=k).per_condition
    v = per_condition(vendi, None, ff, None, cond).per_condition
    vr = per_condition(vendi, None, raw, None, cond).per_condition
    fd = per_condition(frechet_distance, rf, ff, real_cond, cond).per_condition
    real_cond = np.asarray(real_cond)
    real_raw = torch.as_tensor(real_x).reshape(len(real_x), -1)
    fid = None if fidelity is None else pd.Series(fidelity(x0, cond)).groupby(cond).mean()
    rows = []
    for c in q:
        rows.append(dict(condition=c, n=int(counts[c]), n_real=int((real_cond == c).sum()), **q[c], vendi=v[c],
                         vendi_raw=vr[c], fd=fd[c], real_vendi=_real_vendi(rf, real_cond == c, int(counts[c])),
                         real_vendi_raw=_real_vendi(real_raw, real_cond == c, int(counts[c])),
                         **({} if fid is None else {"fidelity": float(fid[c])})))
    return pd.DataFrame(rows)



def _real_vendi(x, mask, n: int, draws: int = 10) -> float:
    """Vendi of the real samples of one condition at the fakes' sample size n (Vendi grows with n): the mean over
    `draws` seeded subsets of n, or all of them when there are at most n."""
    from ..metrics import vendi

    x = x[torch.from_numpy(mask)]
    if len(x) <= n:
        return vendi(x)
    g = torch.Generator().manual_seed(0)
    return float(np.mean([vendi(x[torch.randperm(len(x), generator=g)[:n]]) for _ in range(draws)]))

