"""Precision and recall (Kynkäänniemi et al. 2019), density and coverage (Naeem et al. 2020) on feature arrays.

The conventions are those of the `prdc` package (0.2), so the results are identical to `prdc.compute_prdc`:
  - the radius of a point is the distance to its k-th nearest neighbour in its own set, excluding itself
    (the (k+1)-th smallest distance, the zero self-distance included);
  - balls are open: a point is inside a ball when its distance is strictly below the radius;
  - distances are ||x||^2 + ||y||^2 - 2 x.y computed in float64, rounded to float32 when both sets are float32
    (what scikit-learn does), then square-rooted.
One deliberate difference: where that float64 expansion is below its own rounding error (identical or near-identical
rows) it is replaced by the difference formula, so duplicates are at distance exactly 0. The package zeroes only
the diagonal and leaves rounding noise (~1e-7) between duplicates elsewhere, which no other code reproduces; results
on data with exact duplicates can therefore differ from it, and agree everywhere else.

How it stays fast and bounded: no N x M matrix is ever held. Squared distances are screened block by block with
one float32 GEMM on mean-centred features, whose rounding error has a rigorous bound `e` (Higham:
|fl(x.y) - x.y| <= gamma_D sum|x_i y_i|). Only the pairs whose screened value lies within `e` of a radius are
recomputed in float64 with the package's formula, so float32 speed comes with the package's exact decisions.
Within-set blocks are symmetric and computed once. Works on CPU or CUDA tensors (the device of `real`).
"""

from __future__ import annotations

import torch

from .features import as_features, check_same_width

BLOCK = 2048  # rows per block: one screened block is BLOCK x BLOCK float32 (16 MiB)
EXTRA = 8  # screened neighbours kept beyond k + 1, to certify the k-th neighbour without recomputing a row
FLUSH = 1 << 20  # candidate real-fake pairs decided together


def prdc(real, fake, k: int = 5, *, block: int = BLOCK) -> dict[str, float]:
    """Precision, recall, density and coverage of `fake` against `real` features, (N, D) and (M, D) arrays.

    precision = share of fake inside some real ball; recall = share of real inside some fake ball;
    density = (1 / kM) sum_fake #{real balls containing it}; coverage = share of real whose nearest fake lies
    inside its own ball. Identical to `prdc.compute_prdc(real, fake, k)`.
    """
    real, fake = as_features(real, "real"), as_features(fake, "fake")
    check_same_width(real, fake)
    _check_k(k, real, fake)
    out = torch.float32 if real.dtype == fake.dtype == torch.float32 else torch.float64  # scikit-learn's rule
    mu = real.mean(0, dtype=torch.float64)  # distances are shift-invariant; centring tightens the float32 bound
    R, F = _Screened(real, mu), _Screened(fake.to(real.device), mu)
    r_real, r_fake = knn_radii(R, k, out, block), knn_radii(F, k, out, block)
    count, covered, recalled = _cross(R, F, r_real, r_fake, out, block)
    m = len(fake)
    return dict(
        precision=(count > 0).double().mean().item(),
        recall=recalled.double().mean().item(),
        density=(1.0 / k) * (count.sum().item() / m),
        coverage=covered.double().mean().item(),
    )


def _check_k(k, real, fake) -> None:
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive integer (the neighbour defining each radius); got {k!r}")
    for name, x in (("real", real), ("fake", fake)):
        if len(x) < k + 1:
            raise ValueError(
                f"{name} has {len(x)} samples but k={k} needs at least k + 1 = {k + 1} (the k-th neighbour "
                f"excluding the point itself); pass more samples or a smaller k"
            )


class _Screened:
    """One feature set, prepared once: float32 centred copy z for the screen, float64 norms for the exact pass."""

    def __init__(self, x: torch.Tensor, mu: torch.Tensor, chunk: int = 4096):
        n = len(x)
        self.x = x
        self.z = torch.empty(x.shape, dtype=torch.float32, device=x.device)
        self.xx = torch.empty(n, dtype=torch.float64, device=x.device)  # ||x||^2 as the package computes it
        zz = torch.empty(n, dtype=torch.float64, device=x.device)
        for a in range(0, n, chunk):  # chunked: never a float64 copy of the whole set
            c = x[a : a + chunk].double()
            self.xx[a : a + chunk] = (c * c).sum(1)
            self.z[a : a + chunk] = c - mu
            zc = self.z[a : a + chunk].double()
            zz[a : a + chunk] = (zc * zc).sum(1)
        self.zz = zz.float()
        self.zmax = zz.max().sqrt().item()
        self.xmax = self.xx.max().sqrt().item()


def screen_error(A: _Screened, B: _Screened) -> float:
    """Rigorous bound on |screen - exact| for any pair of A x B (float32 GEMM, norms, centring and float64 terms)."""
    d = A.z.shape[1] + 10  # D products plus the norm, addition and centring roundings
    u = 2.0**-24 if torch.get_float32_matmul_precision() == "highest" else 2.0**-8  # TF32/bf16 matmuls
    u64 = 2.0**-53
    return d * u / (1 - d * u) * (A.zmax + B.zmax) ** 2 + 2 * d * u64 * (A.xmax + B.xmax) ** 2


def screen(A: _Screened, I: slice, B: _Screened, J: slice) -> torch.Tensor:
    """Screened squared distances of the block A[I] x B[J]: ||z_i||^2 + ||z_j||^2 - 2 z_i.z_j in float32."""
    s = torch.addmm(B.zz[J].unsqueeze(0), A.z[I], B.z[J].T, alpha=-2)
    return s.add_(A.zz[I].unsqueeze(1))


def exact_sq(A: _Screened, ia: torch.Tensor, B: _Screened, ib: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """The package's float64 squared distances (-2 x.y + ||x||^2) + ||y||^2 for the pairs (ia[p], ib[p])."""
    out = torch.empty(len(ia), dtype=torch.float64, device=ia.device)
    for a in range(0, len(ia), chunk):
        i, j = ia[a : a + chunk], ib[a : a + chunk]
        x, y = A.x[i].double(), B.x[j].double()
        s = (-2 * (x * y).sum(1) + A.xx[i]) + B.xx[j]
        noise = s.abs() <= _noise(A.xx[i], B.xx[j], x.shape[1])
        if noise.any():
            s[noise] = ((x[noise] - y[noise]) ** 2).sum(1)
        out[a : a + chunk] = s
    return out


def _noise(xx: torch.Tensor, yy: torch.Tensor, d: int) -> torch.Tensor:
    """Error bound of the float64 expansion. Below it the value is rounding noise (duplicates, near-duplicates), which
    the package keeps (it zeroes only the diagonal) and no other code can reproduce; there the difference formula
    gives the true small distance, 0 for identical rows."""
    return 2 * (d + 4) * 2.0**-53 * (xx + yy)


def as_distance(s: torch.Tensor, out: torch.dtype) -> torch.Tensor:
    """The package's distance from a float64 squared distance: round to `out`, clip at 0, sqrt (held in float64)."""
    return s.to(out).clamp_min(0).sqrt().double()


def _thresholds(r: torch.Tensor, e: float, out: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 (lo, hi): a screened value below lo is surely inside a ball of radius r, above hi surely not."""
    rho = r * r  # exact for float32 radii
    slack = 8 * torch.finfo(out).eps * rho + e  # rounding of the distance to `out`, and the screen's error
    lo = torch.nextafter((rho - slack).float(), torch.tensor(-float("inf"), device=r.device))
    hi = torch.nextafter((rho + slack).float(), torch.tensor(float("inf"), device=r.device))
    return lo, hi


def _blocks(n: int, block: int) -> list[slice]:
    return [slice(a, min(a + block, n)) for a in range(0, n, block)]


def knn_radii(S: _Screened, k: int, out: torch.dtype = torch.float32, block: int = BLOCK) -> torch.Tensor:
    """Distance of each point to its k-th nearest neighbour in its own set, excluding itself (float64 holding `out`)."""
    n = len(S.x)
    L = min(n, k + 1 + EXTRA)
    blocks = _blocks(n, block)
    found = [[] for _ in blocks]  # per row block: the L smallest screened values (and columns) of each block
    for bi, I in enumerate(blocks):
        for bj in range(bi, len(blocks)):  # upper triangle: each block serves its rows and, transposed, its columns
            s = screen(S, I, S, blocks[bj])
            _keep(found[bi], _smallest(s, L, blocks[bj].start), L)
            if bj != bi:
                _keep(found[bj], _smallest(s.T.contiguous(), L, I.start), L)
    vals, idx = (torch.cat(t) for t in zip(*(_merge(f, L) for f in found)))
    e = screen_error(S, S)
    v = vals.double()
    kth = v[:, k : k + 1]  # screened (k+1)-th smallest, self included; the exact one is within e of it
    below = v < kth - 2 * e  # surely among the k+1 smallest
    window = ~below & (v <= kth + 2 * e)  # may be the (k+1)-th: decided exactly; beyond the window: surely larger
    # the window is complete when the list's last entry lies beyond it (or the list holds the whole set)
    certain = (v[:, -1] > kth[:, 0] + 2 * e) if L < n else torch.ones(n, dtype=torch.bool, device=v.device)
    rows = torch.arange(n, device=v.device).unsqueeze(1).expand(n, L)
    s = torch.full((n, L), float("inf"), dtype=torch.float64, device=v.device)
    s[window] = exact_sq(S, rows[window], S, idx[window])
    rank = k - below.sum(1)  # the (k+1)-th overall is this one (0-based) among the window's exact values
    rho = s.sort(1).values.gather(1, rank.unsqueeze(1)).squeeze(1)
    rho[~certain] = _exact_rows(S, (~certain).nonzero().squeeze(1), k, block)
    return as_distance(rho, out)


def _smallest(s: torch.Tensor, L: int, col0: int) -> tuple[torch.Tensor, torch.Tensor]:
    v, j = torch.topk(s, min(L, s.shape[1]), dim=1, largest=False, sorted=False)
    return v, j.add_(col0)


def _keep(parts: list, part: tuple, L: int, most: int = 4) -> None:
    """Collect a block's candidates; merged every `most` blocks, so memory stays O(N L)."""
    parts.append(part)
    if len(parts) >= most:
        parts[:] = [_merge(parts, L)]


def _merge(parts: list, L: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The L smallest per row (sorted) over the blocks' candidates."""
    v, p = torch.topk(torch.cat([v for v, _ in parts], 1), L, dim=1, largest=False, sorted=True)
    return v, torch.cat([j for _, j in parts], 1).gather(1, p)


def _exact_rows(S: _Screened, rows: torch.Tensor, k: int, block: int) -> torch.Tensor:
    """Exact (k+1)-th smallest float64 squared distance of a few rows (heavy ties near the radius), whole rows."""
    n = len(S.x)
    out = torch.empty(len(rows), dtype=torch.float64, device=S.x.device)
    step = max(1, (1 << 24) // n)  # rows at a time: a (step, N) float64 slab of at most 128 MiB
    for a in range(0, len(rows), step):
        r = rows[a : a + step]
        x = S.x[r].double()
        d = torch.cat([torch.addmm(S.xx[r].unsqueeze(1), x, S.x[J].double().T, alpha=-2) + S.xx[J] for J in _blocks(n, block)], 1)
        i, j = (d.abs() <= _noise(S.xx[r].unsqueeze(1), S.xx.unsqueeze(0), x.shape[1])).nonzero(as_tuple=True)
        d[i, j] = exact_sq(S, r[i], S, j)  # noise-level entries: the difference formula
        out[a : a + step] = d.kthvalue(k + 1, dim=1).values
    return out


def _cross(R: _Screened, F: _Screened, r_real, r_fake, out, block):
    """Real-fake pairs inside real balls (per fake count; per real: covered) and inside fake balls (per real)."""
    n, m, dev = len(R.x), len(F.x), R.x.device
    e = screen_error(R, F)
    loA, hiA = _thresholds(r_real, e, out)  # A: d(real i, fake j) < r_real[i]
    loB, hiB = _thresholds(r_fake, e, out)  # B: d(real i, fake j) < r_fake[j]
    count = torch.zeros(m, dtype=torch.long, device=dev)
    covered = torch.zeros(n, dtype=torch.bool, device=dev)
    recalled = torch.zeros(n, dtype=torch.bool, device=dev)

    def decide(i, j, v):  # candidate pairs (real i, fake j, screened v): certain by the bounds, or exactly
        a, b = v < loA[i], v < loB[j]
        unsure = ((v <= hiA[i]) & ~a) | ((v <= hiB[j]) & ~b)
        if unsure.any():  # decide these with the package's float64 distances
            d = as_distance(exact_sq(R, i[unsure], F, j[unsure]), out)
            a[unsure], b[unsure] = d < r_real[i[unsure]], d < r_fake[j[unsure]]
        count.add_(torch.bincount(j[a], minlength=m))
        covered[i[a]] = True
        recalled[i[b]] = True

    pending, size = [], 0  # candidates are decided in batches of about FLUSH pairs: few, large operations
    for I in _blocks(n, block):
        for J in _blocks(m, block):
            s = screen(R, I, F, J)
            maybe = torch.le(s, hiA[I].unsqueeze(1)).logical_or_(torch.le(s, hiB[J].unsqueeze(0)))
            i, j = maybe.nonzero(as_tuple=True)  # the few pairs near or inside some ball
            v = s[i, j]
            pending.append((i.add_(I.start), j.add_(J.start), v))
            size += len(i)
            if size >= FLUSH:
                decide(*(torch.cat(t) for t in zip(*pending)))
                pending, size = [], 0
    if pending:
        decide(*(torch.cat(t) for t in zip(*pending)))
    return count, covered, recalled
