"""Per-condition quality of generated samples against held-out real data (the paper's protocol): precision, recall,
density, coverage (k = 5 neighbours), Vendi and Fréchet distance computed within each condition, fakes against that
condition's real samples. `vendi` is on the metric features (the digits classifier's penultimate layer on digits,
the raw vectors on gmm); `vendi_raw` is on the raw diffusion-space outputs x0. `real_vendi`, `real_vendi_raw`: the
same Vendi scores of that condition's held-out real samples at the generated sample size (mean over 10 seeded
subsets; Vendi grows with the number of samples). `fidelity`, where the model has a classifier: its mean probability
of the requested condition (the paper's CLIP-score stand-in).
The held-out data, features and fidelity score of a built-in model come from its registry entry
(`spell_lab.models.reference_data`, `condition_fidelity`)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
import xarray as xr


def generated(ds: xr.Dataset) -> tuple[torch.Tensor, np.ndarray]:
    """A group's outputs x0 as a float32 tensor and their conditions."""
    x0 = ds["x0"].transpose("sample", ...).values
    return torch.from_numpy(np.ascontiguousarray(x0, dtype=np.float32)), ds["condition"].values



def condition_metrics(x0, cond, real_x, real_cond, features, k: int = 5, real_features=None,
                      fidelity=None) -> pd.DataFrame:
    """One row per condition of the fakes: n, precision, recall, density, coverage, vendi, vendi_raw, fd, real_vendi
    (and fidelity, given `fidelity`: the model registry's `condition_fidelity`). `features` maps (N, *shape) tensors to (N, D)
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

