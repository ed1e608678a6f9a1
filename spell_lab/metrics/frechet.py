"""Fréchet distance between Gaussians fitted to two feature sets (FID on Inception features, FD_DINOv2 on DINOv2's).

FD = ||mu_1 - mu_2||^2 + tr(S_1) + tr(S_2) - 2 tr((S_1 S_2)^(1/2)), in float64. The trace of the matrix square root
is computed as sum sqrt(eig(A S_2 A)) with A = S_1^(1/2): S_1 S_2 and A S_2 A share their eigenvalues, and A S_2 A
is symmetric positive semi-definite, so two symmetric eigendecompositions replace scipy's general sqrtm and need
no offset when the covariances are singular (fewer samples than dimensions).
"""

from __future__ import annotations

import torch

from .features import as_features, check_same_width


def frechet_distance(real, fake, *, chunk: int = 8192) -> float:
    """Fréchet distance between (N, D) real and (M, D) fake features (covariances with N - 1, as pytorch-fid)."""
    real, fake = as_features(real, "real"), as_features(fake, "fake")
    check_same_width(real, fake)
    mu1, s1 = mean_cov(real, "real", chunk)
    mu2, s2 = mean_cov(fake.to(real.device), "fake", chunk)
    diff = mu1 - mu2
    return (diff @ diff + s1.trace() + s2.trace() - 2 * trace_sqrt_product(s1, s2)).item()


def mean_cov(x: torch.Tensor, name: str = "features", chunk: int = 8192) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 mean and unbiased covariance of (N, D) features, accumulated in row chunks."""
    n, d = x.shape
    if n < 2:
        raise ValueError(f"{name} has {n} sample; a covariance needs at least 2")
    mu = x.mean(0, dtype=torch.float64)
    cov = torch.zeros(d, d, dtype=torch.float64, device=x.device)
    for a in range(0, n, chunk):
        c = x[a : a + chunk].double() - mu
        cov += c.T @ c
    return mu, cov / (n - 1)


def _clip(w: torch.Tensor) -> torch.Tensor:
    """Eigenvalues below the rounding level of their matrix set to 0: sqrt would turn noise of size eps * max into
    sqrt(eps * max), which adds up over the null space of singular covariances."""
    return torch.where(w > w.max() * len(w) * torch.finfo(w.dtype).eps, w, 0.0)


def psd_sqrt(s: torch.Tensor) -> torch.Tensor:
    """Symmetric square root of a symmetric positive semi-definite matrix."""
    w, v = torch.linalg.eigh(s)
    return (v * _clip(w).sqrt()) @ v.T


def trace_sqrt_product(s1: torch.Tensor, s2: torch.Tensor) -> torch.Tensor:
    """tr((S_1 S_2)^(1/2)) = sum sqrt(eig(A S_2 A)), A = S_1^(1/2)."""
    a = psd_sqrt(s1)
    m = a @ s2 @ a
    return _clip(torch.linalg.eigvalsh((m + m.T) / 2)).sqrt().sum()
