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
float32 GEMMs on mean-centred features (within-set blocks once, for both triangles), whose rounding error has a
rigorous bound `e` (Higham: |fl(x.y) - x.y| <= gamma_D sum|x_i y_i|). Only the pairs whose screened value lies within
the bounds of a radius are recomputed in float64 with the package's formula, and only the radii those pairs need are
made exact, so float32 speed comes with the package's exact decisions. Runs on the device of `real` (CPU or CUDA).
"""

from __future__ import annotations

import numpy as np
import torch

from .features import as_features, check_same_width

BLOCK = 2048  # rows per block: a screened block is BLOCK x 4 BLOCK float32 (64 MiB) at most
EXTRA = 3  # screened neighbours kept beyond k + 1, to certify the k-th neighbour without recomputing a whole row
FLUSH = 1 << 20  # candidate pairs decided (or merged) together: few, large tensor operations


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
    mu = real.mean(0, dtype=torch.float32)  # any shift works (distances are shift-invariant); centring tightens e
    R, F = _Screened(real, mu), _Screened(fake.to(real.device), mu)
    r_real, r_fake = _Radii(R, k, out, block), _Radii(F, k, out, block)
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


# ------------------------------------------------------------------------------------ screen and exact distances


class _Screened:
    """One feature set: the features x, and for the screen a float32 centred copy z with its squared norms zz."""

    def __init__(self, x: torch.Tensor, mu: torch.Tensor, chunk: int = 8192):
        self.x = x
        self.z = torch.empty(x.shape, dtype=torch.float32, device=x.device)
        self.zz = torch.empty(len(x), dtype=torch.float32, device=x.device)
        for a in range(0, len(x), chunk):  # chunked: no float64 copy of the whole set
            c = x[a : a + chunk]
            z = (c.double() - mu.double()).float() if c.dtype == torch.float64 else c.float() - mu
            self.z[a : a + chunk], self.zz[a : a + chunk] = z, z.pow(2).sum(1)
        d = x.shape[1]
        self.zmax = (self.zz.max().item() * (1 + 2 * d * 2.0**-24)) ** 0.5  # bounds every ||z|| despite rounding
        self.xmax = self.zmax + mu.double().norm().item() * (1 + 1e-6)  # bounds every ||x|| = ||z + mu||


def screen_error(A: _Screened, B: _Screened) -> float:
    """Rigorous bound on |screened - exact| squared distance over A x B: the float32 dot products and norms
    (gamma_D (||z|| + ||z'||)^2), the additions and the centring, and the float64 expansion of the exact value."""
    d = A.z.shape[1] + 10
    u = 2.0**-24 if torch.get_float32_matmul_precision() == "highest" else 2.0**-8  # TF32/bf16 matmuls
    return d * u / (1 - d * u) * (A.zmax + B.zmax) ** 2 + 2 * d * 2.0**-53 * (A.xmax + B.xmax) ** 2


def screen(A: _Screened, I: slice, B: _Screened, J: slice, out: torch.Tensor) -> torch.Tensor:
    """Screened squared distances of the block A[I] x B[J]: ||z_i||^2 + ||z_j||^2 - 2 z_i.z_j in float32, into `out`."""
    torch.addmm(B.zz[J].unsqueeze(0), A.z[I], B.z[J].T, alpha=-2, out=out)
    return out.add_(A.zz[I].unsqueeze(1))


def exact_sq(A: _Screened, ia: torch.Tensor, B: _Screened, ib: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """The package's float64 squared distances (-2 x.y + ||x||^2) + ||y||^2 for the pairs (ia[p], ib[p])."""
    out = torch.empty(len(ia), dtype=torch.float64, device=ia.device)
    for a in range(0, len(ia), chunk):
        x, y = A.x[ia[a : a + chunk]].double(), B.x[ib[a : a + chunk]].double()
        xx, yy = x.pow(2).sum(1), y.pow(2).sum(1)
        s = (-2 * (x * y).sum(1) + xx) + yy
        noise = s.abs() <= _noise(xx, yy, x.shape[1])
        if noise.any():
            s[noise] = (x[noise] - y[noise]).pow(2).sum(1)
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


class _Workspace:
    """Buffers reused across blocks for the large per-block tensors. Allocating them afresh each block fragments the
    heap between the small tensors that stay alive (glibc): resident memory grew ~10 MB a block, 11 GB at 50k x 2048."""

    def __init__(self, device):
        self.flat, self.device = {}, device

    def __call__(self, name: str, shape: tuple[int, int], dtype=torch.float32) -> torch.Tensor:
        n = shape[0] * shape[1]
        if name not in self.flat or self.flat[name].numel() < n:
            self.flat[name] = torch.empty(n, dtype=dtype, device=self.device)
        return self.flat[name][:n].view(shape)


def pairs_below(s: torch.Tensor, row: torch.Tensor, col: torch.Tensor, ws: _Workspace):
    """(i, j, s[i, j]) where s[i, j] <= row[i] or s[i, j] <= col[j]. On CPU through numpy, whose single-threaded
    passes do not wait on a second OpenMP thread: on a busy machine that wait cost torch more than the passes."""
    a, b = ws("a", s.shape, torch.bool), ws("b", s.shape, torch.bool)
    if s.device.type == "cpu":
        sn, an, bn = s.numpy(), a.numpy(), b.numpy()
        np.less_equal(sn, row.numpy()[:, None], out=an)
        np.logical_or(an, np.less_equal(sn, col.numpy()[None, :], out=bn), out=an)
        i, j = np.nonzero(an)
        return torch.from_numpy(i), torch.from_numpy(j), torch.from_numpy(sn[i, j])
    torch.le(s, row.unsqueeze(1), out=a).logical_or_(torch.le(s, col.unsqueeze(0), out=b))
    i, j = a.nonzero(as_tuple=True)
    return i, j, s[i, j]


def _blocks(n: int, block: int) -> list[slice]:
    return [slice(a, min(a + block, n)) for a in range(0, n, block)]


# ------------------------------------------------------------------------------------------------- k-NN radii


class _Radii:
    """k-NN radii of one set. `rough` is the screened (k+1)-th smallest squared distance of each point (self
    included), within `e` of the exact one; `exact(rows)` gives the package's radius, computed only where asked."""

    def __init__(self, S: _Screened, k: int, out: torch.dtype, block: int):
        n = len(S.x)
        self.S, self.k, self.out, self.block = S, k, out, block
        L = min(n, k + 1 + EXTRA)
        vals, self.idx = nearest(S, L, block)
        self.vals = vals.double()
        self.rough, self.e = self.vals[:, k], screen_error(S, S)
        # a list is complete when its last entry lies beyond the window kth +- 2e (or it holds the whole set)
        self.listed = self.vals[:, -1] > self.rough + 2 * self.e if L < n else torch.ones_like(self.rough, dtype=torch.bool)
        self.r = torch.full((n,), float("nan"), dtype=torch.float64, device=S.x.device)  # exact radii, filled on demand

    def bounds(self, e: float) -> tuple[torch.Tensor, torch.Tensor]:
        """float32 (lo, hi) per point: a pair whose screened value (error <= e) is below lo is surely inside the ball,
        above hi surely outside. Covers the unknown exact radius within self.e and its rounding to `out`."""
        slack = 12 * torch.finfo(self.out).eps
        lo = (self.rough - self.e) * (1 - slack) - e
        hi = (self.rough + self.e) * (1 + slack) + e
        inf = torch.tensor(float("inf"), device=lo.device)
        return torch.nextafter(lo.float(), -inf), torch.nextafter(hi.float(), inf)

    def exact(self, rows: torch.Tensor) -> torch.Tensor:
        """The package's radii of `rows` (float64 holding `out` values)."""
        todo = rows.unique()
        todo = todo[torch.isnan(self.r[todo])]
        if len(todo):
            rho = torch.empty(len(todo), dtype=torch.float64, device=todo.device)
            ok = self.listed[todo]
            rho[ok] = self._from_list(todo[ok])
            rho[~ok] = _exact_rows(self.S, todo[~ok], self.k, self.block)  # heavy ties near the radius: whole rows
            self.r[todo] = as_distance(rho, self.out)
        return self.r[rows]

    def _from_list(self, rows: torch.Tensor) -> torch.Tensor:
        """Exact (k+1)-th smallest squared distance from the candidate lists: entries surely below are counted, the
        window around the screened value is recomputed exactly, entries above are surely larger."""
        v, k, e = self.vals[rows], self.k, self.e
        kth = v[:, k : k + 1]
        below = v < kth - 2 * e
        window = ~below & (v <= kth + 2 * e)
        s = torch.full(v.shape, float("inf"), dtype=torch.float64, device=v.device)
        s[window] = exact_sq(self.S, rows.unsqueeze(1).expand_as(v)[window], self.S, self.idx[rows][window])
        rank = k - below.sum(1)  # the (k+1)-th overall is this one (0-based) among the window's exact values
        return s.sort(1).values.gather(1, rank.unsqueeze(1)).squeeze(1)


def nearest(S: _Screened, L: int, block: int = BLOCK) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row, the L smallest screened squared distances within the set (sorted, self included) and their columns.

    Diagonal blocks come first and give every row a provisional L-th smallest value tau, an upper bound of the final
    one. Each off-diagonal block is then computed once for its rows and its columns, and only values <= tau pass
    (about L per row and block); they are merged into the lists in batches, and every merge tightens tau.
    """
    n, dev = len(S.x), S.x.device
    blocks, ws = _blocks(n, block), _Workspace(dev)
    vals = torch.full((n, L), float("inf"), device=dev)
    idx = torch.full((n, L), -1, dtype=torch.long, device=dev)
    for I in blocks:
        s = screen(S, I, S, I, ws("s", (I.stop - I.start,) * 2))
        v, j = torch.topk(s, min(L, s.shape[1]), dim=1, largest=False, sorted=True)
        vals[I, : v.shape[1]], idx[I, : v.shape[1]] = v, j + I.start
    tau = vals[:, -1].clone()  # inf where a diagonal block is narrower than L: no pruning for those rows
    pending, size = [], 0
    for bi, I in enumerate(blocks):
        for J in blocks[bi + 1 :]:
            s = screen(S, I, S, J, ws("s", (I.stop - I.start, J.stop - J.start)))
            i, j, v = pairs_below(s, tau[I], tau[J], ws)
            pending.append((i.add_(I.start), j.add_(J.start), v))
            size += len(i)
            if size >= FLUSH:
                _merge(vals, idx, tau, pending)
                tau, pending, size = vals[:, -1].clone(), [], 0
    if pending:
        _merge(vals, idx, tau, pending)
    return vals, idx


def _merge(vals: torch.Tensor, idx: torch.Tensor, tau: torch.Tensor, pending: list) -> None:
    """Merge the pairs (i, j, value) of upper-triangle blocks into the per-row sorted lists of the L smallest, in place:
    as a candidate of row i and, for the transposed block, of row j, where the value passes that row's tau."""
    n, L = vals.shape
    i, j, v = (torch.cat(t) for t in zip(*pending))
    ri, rj = v <= tau[i], v <= tau[j]
    r, c, v = torch.cat([i[ri], j[rj]]), torch.cat([j[ri], i[rj]]), torch.cat([v[ri], v[rj]])
    r = torch.cat([torch.arange(n, device=r.device).repeat_interleave(L), r])
    c, v = torch.cat([idx.flatten(), c]), torch.cat([vals.flatten(), v])
    o = torch.argsort(v, stable=True)
    o = o[torch.argsort(r[o], stable=True)]  # by row, then by value
    r, c, v = r[o], c[o], v[o]
    counts = torch.bincount(r, minlength=n)
    rank = torch.arange(len(r), device=r.device) - (torch.cumsum(counts, 0) - counts)[r]  # position within its row
    first = rank < L
    vals[r[first], rank[first]], idx[r[first], rank[first]] = v[first], c[first]


def _exact_rows(S: _Screened, rows: torch.Tensor, k: int, block: int) -> torch.Tensor:
    """Exact (k+1)-th smallest float64 squared distance of a few rows, from their whole rows."""
    n = len(S.x)
    out = torch.empty(len(rows), dtype=torch.float64, device=S.x.device)
    step = max(1, (1 << 24) // n)  # rows at a time: a (step, N) float64 slab of at most 128 MiB
    for a in range(0, len(rows), step):
        r = rows[a : a + step]
        x = S.x[r].double()
        xx = x.pow(2).sum(1, keepdim=True)
        parts = []
        for J in _blocks(n, block):
            y = S.x[J].double()
            parts.append(torch.addmm(xx, x, y.T, alpha=-2) + y.pow(2).sum(1))
        d = torch.cat(parts, 1)
        i, j = (d.abs() <= 4 * (x.shape[1] + 4) * 2.0**-53 * S.xmax**2).nonzero(as_tuple=True)
        d[i, j] = exact_sq(S, r[i], S, j)  # noise-level entries: the difference formula
        out[a : a + step] = d.kthvalue(k + 1, dim=1).values
    return out


# ------------------------------------------------------------------------------------------- real x fake pairs


def _cross(R: _Screened, F: _Screened, r_real: _Radii, r_fake: _Radii, out, block):
    """Real-fake pairs inside real balls (per fake: count; per real: covered) and inside fake balls (per real)."""
    n, m, dev = len(R.x), len(F.x), R.x.device
    e = screen_error(R, F)
    loA, hiA = r_real.bounds(e)  # A: d(real i, fake j) < r_real[i]
    loB, hiB = r_fake.bounds(e)  # B: d(real i, fake j) < r_fake[j]
    count = torch.zeros(m, dtype=torch.long, device=dev)
    covered = torch.zeros(n, dtype=torch.bool, device=dev)
    recalled = torch.zeros(n, dtype=torch.bool, device=dev)

    def decide(i, j, v):  # candidate pairs (real i, fake j, screened v): certain by the bounds, or exactly
        a, b = v < loA[i], v < loB[j]
        unsure = ((v <= hiA[i]) & ~a) | ((v <= hiB[j]) & ~b)
        if unsure.any():  # the package's float64 distance against the package's radius
            iu, ju = i[unsure], j[unsure]
            d = as_distance(exact_sq(R, iu, F, ju), out)
            a[unsure], b[unsure] = d < r_real.exact(iu), d < r_fake.exact(ju)
        count.add_(torch.bincount(j[a], minlength=m))
        covered[i[a]] = True
        recalled[i[b]] = True

    pending, size, ws = [], 0, _Workspace(dev)
    for I in _blocks(n, block):
        for J in _blocks(m, 4 * block):
            s = screen(R, I, F, J, ws("s", (I.stop - I.start, J.stop - J.start)))
            i, j, v = pairs_below(s, hiA[I], hiB[J], ws)  # the few pairs near or inside some ball
            pending.append((i.add_(I.start), j.add_(J.start), v))
            size += len(v)
            if size >= FLUSH:
                decide(*(torch.cat(t) for t in zip(*pending)))
                pending, size = [], 0
    if pending:
        decide(*(torch.cat(t) for t in zip(*pending)))
    return count, covered, recalled
