"""Precision and recall (Kynkäänniemi et al. 2019), density and coverage (Naeem et al. 2020) on feature arrays.

    prdc(real, fake, k=5)            the fast engine (`prdc_engine.py`), identical to the `prdc` package
    prdc_reference(real, fake, k=5)  the four definitions, literally: the engine is tested against it
"""

from __future__ import annotations

import torch

from .features import as_features, check_same_width
from .prdc_engine import check_k, prdc

__all__ = ["prdc", "prdc_reference"]


def prdc_reference(real, fake, k: int = 5) -> dict[str, float]:
    """Precision, recall, density and coverage of fake y_1..y_M against real x_1..x_N, from every pairwise distance.

    With d the Euclidean distance, r_i the distance from x_i to its k-th nearest neighbour among the real (itself
    excluded) and s_j the same for y_j among the fake, and [.] the indicator:

        precision = 1/M  sum_j [ exists i: d(x_i, y_j) < r_i ]
        recall    = 1/N  sum_i [ exists j: d(x_i, y_j) < s_j ]
        density   = 1/kM sum_j sum_i [ d(x_i, y_j) < r_i ]
        coverage  = 1/N  sum_i [ min_j d(x_i, y_j) < r_i ]

    Balls are open (strict <), as in the `prdc` package. Distances are float64 differences (exact zeros between
    copies); the engine agrees on float64 features, and on float32 ones up to its float32 rounding (the package's).
    Holds N x M distances: for small sets.
    """
    x, y = as_features(real, "real"), as_features(fake, "fake")
    check_same_width(x, y)
    check_k(k, x, y)
    x, y = x.cpu().double(), y.cpu().double()
    dist = lambda a, b: torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist")  # noqa: E731 (no a.b expansion)
    r = dist(x, x).kthvalue(k + 1, dim=1).values  # the (k+1)-th smallest: the zero self-distance comes first
    s = dist(y, y).kthvalue(k + 1, dim=1).values
    d = dist(x, y)  # d[i, j] = d(x_i, y_j)
    in_real = d < r[:, None]
    return dict(
        precision=in_real.any(0).double().mean().item(),
        recall=(d < s[None, :]).any(1).double().mean().item(),
        density=in_real.sum(0).double().mean().item() / k,
        coverage=(d.min(1).values < r).double().mean().item(),
    )
