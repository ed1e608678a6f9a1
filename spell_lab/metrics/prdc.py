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

How it stays fast and bounded: no N x M matrix is ever held. Squared distances are screened block by block with one
float32 GEMM each on mean-centred features, the norms folded in ([z, |z|^2, 1] . [-2z', 1, |z'|^2]), within-set blocks
once for both triangles. The GEMM's rounding error has a rigorous bound `e` (Higham: |fl(x.y) - x.y| <= gamma_D
sum|x_i y_i|). Only the pairs whose screened value lies within the bounds of a radius are recomputed in float64 with
the package's formula, and only the radii those pairs need are made exact, so float32 speed comes with the package's
exact decisions. It runs on the CPU: BLAS for the GEMMs, in a thread that runs one block ahead, and single-threaded
numpy, overlapping it, for the sifting of each block and the few candidates it leaves.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from .features import as_features, check_same_width

BLOCK = 2048  # rows per block: a screened block is BLOCK x 4 BLOCK float32 (64 MiB) at most
EXTRA = 3  # screened neighbours kept beyond k + 1, to certify the k-th neighbour without recomputing a whole row
FLUSH = 1 << 20  # candidate pairs decided (or merged) together
U32, U64 = 2.0**-24, 2.0**-53  # unit roundoffs


def prdc(real, fake, k: int = 5, *, block: int = BLOCK) -> dict[str, float]:
    """Precision, recall, density and coverage of `fake` against `real` features, (N, D) and (M, D) arrays.

    precision = share of fake inside some real ball; recall = share of real inside some fake ball;
    density = (1 / kM) sum_fake #{real balls containing it}; coverage = share of real whose nearest fake lies
    inside its own ball. Identical to `prdc.compute_prdc(real, fake, k)`.
    """
    real, fake = as_features(real, "real"), as_features(fake, "fake")
    check_same_width(real, fake)
    _check_k(k, real, fake)
    real, fake = _numpy(real), _numpy(fake)
    out = np.float32 if real.dtype == fake.dtype == np.float32 else np.float64  # scikit-learn's rule
    mu = real.mean(0, dtype=np.float64)  # any shift works (distances are shift-invariant); centring tightens e
    R, F = _Screened(real, mu), _Screened(fake, mu)
    r_real, r_fake = _Radii(R, k, out, block), _Radii(F, k, out, block)
    count, covered, recalled = _cross(R, F, r_real, r_fake, out, block)
    return dict(
        precision=float((count > 0).mean()),
        recall=float(recalled.mean()),
        density=(1.0 / k) * (int(count.sum()) / len(fake)),
        coverage=float(covered.mean()),
    )


def _numpy(t) -> np.ndarray:
    t = t.cpu()
    return (t.double() if t.dtype == torch.bfloat16 else t).numpy()  # numpy has no bfloat16


def _check_k(k, real, fake) -> None:
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k must be a positive integer (the neighbour defining each radius); got {k!r}")
    for name, x in (("real", real), ("fake", fake)):
        if len(x) < k + 1:
            raise ValueError(
                f"{name} has {len(x)} samples but k={k} needs at least k + 1 = {k + 1} (the k-th neighbour "
                f"excluding the point itself); pass more samples or a smaller k"
            )


# ------------------------------------------------------------------------------------ screen and exact distances


class _Screened:
    """One feature set: the features x, and for the screen the float32 rows a = [z, |z|^2, 1] of the centred z."""

    def __init__(self, x: np.ndarray, mu: np.ndarray, chunk: int = 2048):
        n, d = x.shape
        self.x, self.d = x, d
        self.a = np.empty((n, d + 2), dtype=np.float32)
        for s in range(0, n, chunk):  # chunked: no float64 copy of the whole set
            z = (x[s : s + chunk] - mu).astype(np.float32)  # one rounding of the exact difference
            z64 = z.astype(np.float64)
            self.a[s : s + chunk, :d], self.a[s : s + chunk, d] = z, np.einsum("ij,ij->i", z64, z64)
        self.a[:, d + 1] = 1
        self.zmax = float(self.a[:, d].max()) ** 0.5 * (1 + U32)  # bounds every ||z||
        self.xmax = self.zmax + float(np.linalg.norm(mu)) * (1 + 1e-6)  # bounds every ||x|| = ||z + mu||

    def cols(self, J: slice) -> np.ndarray:
        """The (D + 2, |J|) right factor [-2z, 1, |z|^2]^T: a[I] @ cols(J) = |z_i|^2 + |z_j|^2 - 2 z_i.z_j."""
        d, a = self.d, self.a[J]
        c = np.empty((d + 2, len(a)), dtype=np.float32)
        np.multiply(a[:, :d].T, -2, out=c[:d])
        c[d], c[d + 1] = 1, a[:, d]
        return c


def screen_error(A: _Screened, B: _Screened) -> float:
    """Rigorous bound on |screened - exact| squared distance over A x B: the float32 GEMM of D + 2 terms
    (gamma_{D+2} (|z| + |z'|)^2), the norms' and the centring's roundings, and the float64 expansion of the exact value."""
    d = A.d + 10
    return d * U32 / (1 - d * U32) * (A.zmax + B.zmax) ** 2 + 2 * d * U64 * (A.xmax + B.xmax) ** 2


def screen(A: _Screened, I: slice, cols: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Screened squared distances of the block A[I] x (the set behind `cols`), float32, into `out`."""
    return np.matmul(A.a[I], cols, out=out)


def exact_sq(A: _Screened, ia: np.ndarray, B: _Screened, ib: np.ndarray, chunk: int = 8192) -> np.ndarray:
    """The package's float64 squared distances (-2 x.y + ||x||^2) + ||y||^2 for the pairs (ia[p], ib[p])."""
    out = np.empty(len(ia))
    for s in range(0, len(ia), chunk):
        x, y = A.x[ia[s : s + chunk]].astype(np.float64), B.x[ib[s : s + chunk]].astype(np.float64)
        xx, yy = np.einsum("ij,ij->i", x, x), np.einsum("ij,ij->i", y, y)
        d2 = (-2 * np.einsum("ij,ij->i", x, y) + xx) + yy
        noise = np.abs(d2) <= _noise(xx, yy, x.shape[1])
        if noise.any():
            diff = x[noise] - y[noise]
            d2[noise] = np.einsum("ij,ij->i", diff, diff)
        out[s : s + chunk] = d2
    return out


def _noise(xx, yy, d: int):
    """Error bound of the float64 expansion. Below it the value is rounding noise (duplicates, near-duplicates), which
    the package keeps (it zeroes only the diagonal) and no other code can reproduce; there the difference formula
    gives the true small distance, 0 for identical rows."""
    return 2 * (d + 4) * U64 * (xx + yy)


def as_distance(s: np.ndarray, out) -> np.ndarray:
    """The package's distance from a float64 squared distance: round to `out`, clip at 0, sqrt (held in float64)."""
    return np.sqrt(np.maximum(s.astype(out), 0)).astype(np.float64)


class _Workspace:
    """Buffers reused across blocks for the large per-block arrays. Allocating them afresh each block fragments the
    heap between the small arrays that stay alive (glibc): resident memory grew ~10 MB a block, 11 GB at 50k x 2048."""

    def __init__(self):
        self.flat = {}

    def __call__(self, name: str, shape: tuple[int, int], dtype=np.float32) -> np.ndarray:
        n = shape[0] * shape[1]
        if name not in self.flat or self.flat[name].size < n:
            self.flat[name] = np.empty(n, dtype=dtype)
        return self.flat[name][:n].reshape(shape)


def screened_blocks(A: _Screened, B: _Screened, blocks: list, ws: _Workspace):
    """Yield (I, J, screen of A[I] x B[J]) for the blocks (I, J). The next block's GEMM runs in a thread (BLAS releases
    the GIL) while the caller sifts the current one with single-threaded numpy, so the two overlap. Two buffers
    alternate: a yielded block stays valid until the caller asks for the next one."""
    cols = {}

    def gemm(n, I, J):
        key = (J.start, J.stop)
        if key not in cols:  # consecutive blocks share their columns
            cols.clear()
            cols[key] = B.cols(J)
        return screen(A, I, cols[key], ws(f"s{n % 2}", (I.stop - I.start, J.stop - J.start)))

    with ThreadPoolExecutor(max_workers=1) as pool:
        ahead = pool.submit(gemm, 0, *blocks[0]) if blocks else None
        for n, (I, J) in enumerate(blocks):
            s = ahead.result()
            ahead = pool.submit(gemm, n + 1, *blocks[n + 1]) if n + 1 < len(blocks) else None
            yield I, J, s


def pairs_below(s: np.ndarray, row: np.ndarray, col: np.ndarray, ws: _Workspace):
    """(i, j, s[i, j]) where s[i, j] <= row[i] or s[i, j] <= col[j]."""
    a, b = ws("a", s.shape, bool), ws("b", s.shape, bool)
    np.less_equal(s, row[:, None], out=a)
    np.logical_or(a, np.less_equal(s, col[None, :], out=b), out=a)
    i, j = np.nonzero(a)
    return i, j, s[i, j]


def _blocks(n: int, block: int) -> list[slice]:
    return [slice(a, min(a + block, n)) for a in range(0, n, block)]


def _f32_outward(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float32 thresholds no tighter than the float64 ones: lo rounded down, hi rounded up."""
    lo32, hi32 = lo.astype(np.float32), hi.astype(np.float32)
    return np.nextafter(lo32, np.float32(-np.inf)), np.nextafter(hi32, np.float32(np.inf))


# ------------------------------------------------------------------------------------------------- k-NN radii


class _Radii:
    """k-NN radii of one set. `rough` is the screened (k+1)-th smallest squared distance of each point (self
    included), within `e` of the exact one; `exact(rows)` gives the package's radius, computed only where asked."""

    def __init__(self, S: _Screened, k: int, out, block: int):
        n = len(S.x)
        self.S, self.k, self.out, self.block = S, k, out, block
        L = min(n, k + 1 + EXTRA)
        vals, self.idx = nearest(S, L, block)
        self.vals = vals.astype(np.float64)
        self.rough, self.e = self.vals[:, k], screen_error(S, S)
        # a list is complete when its last entry lies beyond the window kth +- 2e (or it holds the whole set)
        self.listed = self.vals[:, -1] > self.rough + 2 * self.e if L < n else np.ones(n, dtype=bool)
        self.r = np.full(n, np.nan)  # exact radii, filled on demand

    def bounds(self, e: float) -> tuple[np.ndarray, np.ndarray]:
        """float32 (lo, hi) per point: a pair whose screened value (error <= e) is below lo is surely inside the ball,
        above hi surely outside. Covers the unknown exact radius within self.e and its rounding to `out`."""
        slack = 12 * np.finfo(self.out).eps
        return _f32_outward((self.rough - self.e) * (1 - slack) - e, (self.rough + self.e) * (1 + slack) + e)

    def exact(self, rows: np.ndarray) -> np.ndarray:
        """The package's radii of `rows` (float64 holding `out` values)."""
        todo = np.unique(rows)
        todo = todo[np.isnan(self.r[todo])]
        if len(todo):
            rho = np.empty(len(todo))
            ok = self.listed[todo]
            rho[ok] = self._from_list(todo[ok])
            rho[~ok] = _exact_rows(self.S, todo[~ok], self.k, self.block)  # heavy ties near the radius: whole rows
            self.r[todo] = as_distance(rho, self.out)
        return self.r[rows]

    def _from_list(self, rows: np.ndarray) -> np.ndarray:
        """Exact (k+1)-th smallest squared distance from the candidate lists: entries surely below are counted, the
        window around the screened value is recomputed exactly, entries above are surely larger."""
        v, k, e = self.vals[rows], self.k, self.e
        kth = v[:, k : k + 1]
        below = v < kth - 2 * e
        window = ~below & (v <= kth + 2 * e)
        s = np.full(v.shape, np.inf)
        s[window] = exact_sq(self.S, np.broadcast_to(rows[:, None], v.shape)[window], self.S, self.idx[rows][window])
        rank = k - below.sum(1)  # the (k+1)-th overall is this one (0-based) among the window's exact values
        return np.take_along_axis(np.sort(s, 1), rank[:, None], 1)[:, 0]


def nearest(S: _Screened, L: int, block: int = BLOCK) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the L smallest screened squared distances within the set (sorted, self included) and their columns.

    Diagonal blocks come first and give every row a provisional L-th smallest value tau, an upper bound of the final
    one. Each off-diagonal block is then computed once for its rows and its columns, and only values <= tau pass
    (about L per row and block); they are merged into the lists in batches, and every merge tightens tau.
    """
    n = len(S.x)
    blocks, ws = _blocks(n, block), _Workspace()
    vals, idx = np.full((n, L), np.inf, dtype=np.float32), np.full((n, L), -1, dtype=np.int64)
    for I, _, s in screened_blocks(S, S, [(I, I) for I in blocks], ws):
        v, j = torch.from_numpy(s).topk(min(L, s.shape[1]), dim=1, largest=False)  # sorted; faster than argpartition
        vals[I, : v.shape[1]], idx[I, : v.shape[1]] = v.numpy(), j.numpy() + I.start
    tau = vals[:, -1].copy()  # inf where a diagonal block is narrower than L: no pruning for those rows
    pending, size = [], 0
    upper = [(I, J) for bi, I in enumerate(blocks) for J in blocks[bi + 1 :]]
    for I, J, s in screened_blocks(S, S, upper, ws):
        i, j, v = pairs_below(s, tau[I], tau[J], ws)
        pending.append((i + I.start, j + J.start, v))
        size += len(i)
        if size >= FLUSH:
            _merge(vals, idx, tau, pending)
            tau, pending, size = vals[:, -1].copy(), [], 0
    if pending:
        _merge(vals, idx, tau, pending)
    return vals, idx


def _merge(vals: np.ndarray, idx: np.ndarray, tau: np.ndarray, pending: list) -> None:
    """Merge the pairs (i, j, value) of upper-triangle blocks into the per-row sorted lists of the L smallest, in place:
    as a candidate of row i and, for the transposed block, of row j, where the value passes that row's tau."""
    n, L = vals.shape
    i, j, v = (np.concatenate(t) for t in zip(*pending))
    ri, rj = v <= tau[i], v <= tau[j]
    r = np.concatenate([np.repeat(np.arange(n), L), i[ri], j[rj]])
    c = np.concatenate([idx.ravel(), j[ri], i[rj]])
    v = np.concatenate([vals.ravel(), v[ri], v[rj]])
    o = np.lexsort((v, r))  # by row, then by value
    r, c, v = r[o], c[o], v[o]
    rank = np.arange(len(r)) - np.searchsorted(r, r)  # position within its row (r is sorted)
    first = rank < L
    vals[r[first], rank[first]], idx[r[first], rank[first]] = v[first], c[first]


def _exact_rows(S: _Screened, rows: np.ndarray, k: int, block: int) -> np.ndarray:
    """Exact (k+1)-th smallest float64 squared distance of a few rows, from their whole rows."""
    n = len(S.x)
    out = np.empty(len(rows))
    step = max(1, (1 << 24) // n)  # rows at a time: a (step, N) float64 slab of at most 128 MiB
    for s in range(0, len(rows), step):
        r = rows[s : s + step]
        x = S.x[r].astype(np.float64)
        xx = np.einsum("ij,ij->i", x, x)[:, None]
        parts = []
        for J in _blocks(n, block):
            y = S.x[J].astype(np.float64)
            parts.append((-2 * (x @ y.T) + xx) + np.einsum("ij,ij->i", y, y))
        d2 = np.concatenate(parts, 1)
        i, j = np.nonzero(np.abs(d2) <= 4 * (S.d + 4) * U64 * S.xmax**2)
        d2[i, j] = exact_sq(S, r[i], S, j)  # noise-level entries: the difference formula
        out[s : s + step] = np.partition(d2, k, axis=1)[:, k]
    return out


# ------------------------------------------------------------------------------------------- real x fake pairs


def _cross(R: _Screened, F: _Screened, r_real: _Radii, r_fake: _Radii, out, block):
    """Real-fake pairs inside real balls (per fake: count; per real: covered) and inside fake balls (per real)."""
    n, m = len(R.x), len(F.x)
    e = screen_error(R, F)
    loA, hiA = r_real.bounds(e)  # A: d(real i, fake j) < r_real[i]
    loB, hiB = r_fake.bounds(e)  # B: d(real i, fake j) < r_fake[j]
    count = np.zeros(m, dtype=np.int64)
    covered, recalled = np.zeros(n, dtype=bool), np.zeros(n, dtype=bool)

    def decide(i, j, v):  # candidate pairs (real i, fake j, screened v): certain by the bounds, or exactly
        a, b = v < loA[i], v < loB[j]
        unsure = ((v <= hiA[i]) & ~a) | ((v <= hiB[j]) & ~b)
        if unsure.any():  # the package's float64 distance against the package's radius
            iu, ju = i[unsure], j[unsure]
            d = as_distance(exact_sq(R, iu, F, ju), out)
            a[unsure], b[unsure] = d < r_real.exact(iu), d < r_fake.exact(ju)
        count[:] += np.bincount(j[a], minlength=m)
        covered[i[a]] = True
        recalled[i[b]] = True

    pending, size, ws = [], 0, _Workspace()
    blocks = [(I, J) for J in _blocks(m, 4 * block) for I in _blocks(n, block)]
    for I, J, s in screened_blocks(R, F, blocks, ws):
        i, j, v = pairs_below(s, hiA[I], hiB[J], ws)  # the few pairs near or inside some ball
        pending.append((i + I.start, j + J.start, v))
        size += len(v)
        if size >= FLUSH:
            decide(*(np.concatenate(t) for t in zip(*pending)))
            pending, size = [], 0
    if pending:
        decide(*(np.concatenate(t) for t in zip(*pending)))
    return count, covered, recalled
