"""The Vendi score (Friedman & Dieng 2023) with the cosine-similarity kernel.

K = X^ X^T / N with unit-norm rows X^; the score is exp of the (Renyi order q) entropy of K's eigenvalues, i.e. the
effective number of distinct samples (1 for N copies of one vector, N for N orthogonal vectors). The nonzero
eigenvalues of X^ X^T / N are those of the D x D matrix X^T X^ / N, so for N > D that one is used: 50,000 x 2048
features cost one 2048 x 2048 eigendecomposition. Agrees with `vendi_score.vendi.score_dual(X, q)`.
"""

from __future__ import annotations

import math

import torch

from .features import as_features


def vendi(features, q: float | str = 1.0, *, chunk: int = 8192) -> float:
    """Vendi score of (N, D) features: q = 1 Shannon (the paper's), other q >= 0 Renyi, q = inf (or "inf") min-entropy."""
    q = _order(q)
    x = as_features(features)
    w = _eigenvalues(x, chunk)
    return math.exp(_entropy(w, q))


def _order(q) -> float:
    q = math.inf if q == "inf" else float(q)
    if not q >= 0:
        raise ValueError(f"the Vendi order q must be >= 0 (1: Shannon, inf: min-entropy); got {q!r}")
    return q


def _unit_rows(x: torch.Tensor) -> torch.Tensor:
    x = x.double()
    norm = x.norm(dim=1, keepdim=True)
    if (norm == 0).any():
        i = (norm.squeeze(1) == 0).nonzero()[0].item()
        raise ValueError(f"feature row {i} is all zeros: cosine similarity is undefined; drop zero rows first")
    return x / norm


def _eigenvalues(x: torch.Tensor, chunk: int) -> torch.Tensor:
    """Eigenvalues of X^ X^T / N (they sum to 1); through the D x D Gram when N > D, accumulated in row chunks."""
    n, d = x.shape
    if n <= d:
        u = _unit_rows(x)
        g = u @ u.T
    else:
        g = torch.zeros(d, d, dtype=torch.float64, device=x.device)
        for a in range(0, n, chunk):
            u = _unit_rows(x[a : a + chunk])
            g += u.T @ u
    w = torch.linalg.eigvalsh(g / n)
    return w.clamp_min(0)


def _entropy(w: torch.Tensor, q: float) -> float:
    """Renyi entropy of order q of the eigenvalue distribution w; eigenvalues below the rank tolerance count as 0."""
    p = w[w > w.max() * len(w) * torch.finfo(w.dtype).eps]
    if q == 1:
        return -(p * p.log()).sum().item()
    if q == math.inf:
        return -math.log(p.max().item())
    return math.log((p**q).sum().item()) / (1 - q)
