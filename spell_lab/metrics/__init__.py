"""Sample-quality and diversity metrics on feature arrays (numpy or torch, (N, D)).

    prdc(real, fake, k=5)       precision, recall, density, coverage (identical to the `prdc` package)
    prdc_reference(real, fake)  the same four from their definitions, every distance held (small sets; tests)
    vendi(features, q=1)        Vendi score, cosine kernel (agrees with `vendi-score`)
    frechet_distance(real, fake) Fréchet distance, float64 (FID on Inception features, FD_DINOv2 on DINOv2's)
    per_condition(fn, ...)      a metric within each condition (class/prompt), then averaged, as the paper reports

Features come from the extractors in `spell_lab.metrics.features` (raw, digits classifier, Inception, DINOv2).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import numpy as np
import torch

from .features import DigitsFeatures, DINOv2Features, InceptionFeatures, RawFeatures, as_features
from .frechet import frechet_distance
from .prdc import prdc, prdc_reference
from .vendi import vendi

__all__ = [
    "prdc",
    "prdc_reference",
    "vendi",
    "frechet_distance",
    "per_condition",
    "PerCondition",
    "RawFeatures",
    "DigitsFeatures",
    "InceptionFeatures",
    "DINOv2Features",
    "as_features",
]


class PerCondition(NamedTuple):
    mean: float | dict[str, float]  # mean over conditions (per key when the metric returns a dict)
    per_condition: dict  # condition -> the metric's value within it


def per_condition(metric_fn: Callable, real, fake, real_cond, fake_cond, **kwargs) -> PerCondition:
    """`metric_fn` within each condition of `fake_cond`, then the unweighted mean over conditions (the paper's protocol).

    metric_fn(real_c, fake_c, **kwargs) for two-set metrics (prdc, frechet_distance); pass real=None for one-set metrics
    (vendi), called as metric_fn(fake_c, **kwargs). Every condition present in the fakes needs real samples.
    """
    fake_cond = _labels(fake_cond, len(fake), "fake_cond")
    conditions = np.unique(fake_cond)
    if real is not None:
        real_cond = _labels(real_cond, len(real), "real_cond")
        missing = np.setdiff1d(conditions, real_cond)  # checked up front, before any metric runs
        if len(missing):
            c = missing[0]
            raise ValueError(
                f"condition {c.item()} has {int((fake_cond == c).sum())} fake samples but no real ones; "
                f"pass real samples of every generated condition or drop those fakes"
            )
    values = {}
    for c in conditions:
        f = _rows(fake, fake_cond == c)
        values[c.item()] = metric_fn(f, **kwargs) if real is None else metric_fn(_rows(real, real_cond == c), f, **kwargs)
    first = next(iter(values.values()))
    if isinstance(first, dict):
        mean = {key: float(np.mean([v[key] for v in values.values()])) for key in first}
    else:
        mean = float(np.mean(list(values.values())))
    return PerCondition(mean, values)


def _labels(cond, n: int, name: str) -> np.ndarray:
    cond = cond.cpu().numpy() if isinstance(cond, torch.Tensor) else np.asarray(cond)
    if cond.shape != (n,):
        raise ValueError(f"{name} must hold one condition per sample, shape ({n},); got {cond.shape}")
    return cond


def _rows(x, mask: np.ndarray):
    return x[torch.from_numpy(mask).to(x.device)] if isinstance(x, torch.Tensor) else np.asarray(x)[mask]
