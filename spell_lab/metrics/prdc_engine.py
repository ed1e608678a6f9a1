"""The fast engine behind `spell_lab.metrics.prdc`: precision, recall, density and coverage, certified exact.

The definitions, in a few readable lines, are `prdc_reference` in `spell_lab/metrics/prdc.py`; this engine is
tested against it (tests/test_prdc_engine.py).

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
exact decisions. It runs on the CPU: one worker thread per core computes a block's GEMM with single-threaded BLAS and
sifts it at once (one comparison per entry), and the main thread merges and decides the few pairs that pass.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from itertools import zip_longest

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from .features import as_features, check_same_width

BLOCK = 2048  # rows per block: a screened block is BLOCK x BLOCK float32 (16 MiB) at most
EXTRA = 3  # screened neighbours kept beyond k + 1, to certify the k-th neighbour without recomputing a whole row
FLUSH = 1 << 16  # candidate pairs decided (or merged) together: often, so the main thread works alongside the blocks
WORKERS = 8  # at most this many block threads (each holds ~30 MB of buffers)
U32, U64 = 2.0**-24, 2.0**-53  # unit roundoffs


def prdc(real, fake, k: int = 5, *, block: int = BLOCK) -> dict[str, float]:
    """Precision, recall, density and coverage of `fake` against `real` features, (N, D) and (M, D) arrays.

    precision = share of fake inside some real ball; recall = share of real inside some fake ball;
    density = (1 / kM) sum_fake #{real balls containing it}; coverage = share of real whose nearest fake lies
    inside its own ball. Identical to `prdc.compute_prdc(real, fake, k)`.
    """
    real, fake = as_features(real, "real"), as_features(fake, "fake")
    check_same_width(real, fake)
    check_k(k, real, fake)
    real, fake = _numpy(real), _numpy(fake)
    out = np.float32 if real.dtype == fake.dtype == np.float32 else np.float64  # scikit-learn's rule
    mu = real.mean(0, dtype=np.float64)  # any shift works (distances are shift-invariant); centring tightens e
    R, F = _Screened(real, mu), _Screened(fake, mu)
    lists = nearest_lists([R, F], [min(len(S.x), k + 1 + EXTRA) for S in (R, F)], block)  # both sets in one stream
    r_real, r_fake = (_Radii(S, k, out, block, li) for S, li in zip((R, F), lists))
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


def check_k(k, real, fake) -> None:
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
            self.a[s : s + chunk, :d], self.a[s : s + chunk, d] = z, np.einsum("ij,ij->i", z, z, dtype=np.float64)
        self.a[:, d + 1] = 1
        self.zmax = float(self.a[:, d].max()) ** 0.5 * (1 + U32)  # bounds every ||z||
        self.xmax = self.zmax + float(np.linalg.norm(mu)) * (1 + 1e-6)  # bounds every ||x|| = ||z + mu||

    def cols(self, J: np.ndarray) -> np.ndarray:
        """The (D + 2, |J|) right factor [-2z, 1, |z|^2]^T of the rows J: a[I] @ cols(J) = |z_i|^2 + |z_j|^2 - 2 z_i.z_j."""
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


def screen(A: _Screened, I: np.ndarray, cols: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Screened squared distances of the block A[I] x (the set behind `cols`), float32, into `out`."""
    return np.matmul(A.a[I], cols, out=out)


def exact_sq(A: _Screened, ia: np.ndarray, B: _Screened, ib: np.ndarray) -> np.ndarray:
    """The package's float64 squared distances (-2 x.y + ||x||^2) + ||y||^2 for the pairs (ia[p], ib[p])."""
    out = np.empty(len(ia))
    chunk = max(64, (1 << 21) // A.d)  # pairs at a time: float64 rows of 16 MiB per side
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


def map_blocks(tasks: list):
    """Yield fn(I, J, screen of A[I] x B[J], workspace) for the tasks (A, I, B, J, fn), in order; I and J are row
    indices. Each worker thread computes a block's GEMM with single-threaded BLAS, then sifts it with its own buffers,
    so every core runs GEMM and sifting back to back (BLAS and numpy release the GIL) and only fn's small result
    comes back to the caller. Blocks of several sets can share one stream, which keeps all cores busy to the end."""
    local = threading.local()

    def run(A, I, B, J, fn):
        if not hasattr(local, "ws"):
            local.ws, local.cols = _Workspace(), (None, None)
        if local.cols[0] is not J:  # consecutive blocks share their columns
            local.cols = (J, B.cols(J))
        return fn(I, J, screen(A, I, local.cols[1], local.ws("s", (len(I), len(J)))), local.ws)

    workers = _workers()
    with threadpool_limits(1, user_api="blas"), ThreadPoolExecutor(workers) as pool:
        ahead = deque()  # a few blocks in flight: the caller's updates (tighter thresholds) reach the later ones
        for task in tasks:
            ahead.append(pool.submit(run, *task))
            if len(ahead) > 2 * workers:
                yield ahead.popleft().result()
        while ahead:
            yield ahead.popleft().result()


def _workers() -> int:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(WORKERS, cpus))


def pairs_below(s: np.ndarray, row: np.ndarray, col: np.ndarray, ws: _Workspace):
    """(i, j, s[i, j]) where s[i, j] <= row[i] or s[i, j] <= col[j]. One comparison per entry, against
    max(row[i], max(col)), sifts the block; the few entries it passes are then tested exactly. Where the columns'
    thresholds are uneven and that lets many through, the two exact comparisons run on the whole block instead."""
    mask = ws("mask", s.shape, bool)
    np.less_equal(s, np.maximum(row, col.max())[:, None], out=mask)
    if np.count_nonzero(mask) > s.size // 64:
        np.less_equal(s, row[:, None], out=mask)
        np.logical_or(mask, np.less_equal(s, col[None, :], out=ws("mask2", s.shape, bool)), out=mask)
        i, j = np.nonzero(mask)
        return i, j, s[i, j]
    f = np.flatnonzero(mask)
    i, j = np.divmod(f, s.shape[1])
    v = s.reshape(-1)[f]
    keep = (v <= row[i]) | (v <= col[j])
    return i[keep], j[keep], v[keep]


def _blocks(order: np.ndarray, block: int) -> list[np.ndarray]:
    """Consecutive runs of `order`, `block` rows each: the blocks' row indices."""
    return [order[a : a + block] for a in range(0, len(order), block)]


def _f32_outward(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float32 thresholds no tighter than the float64 ones: lo rounded down, hi rounded up."""
    lo32, hi32 = lo.astype(np.float32), hi.astype(np.float32)
    return np.nextafter(lo32, np.float32(-np.inf)), np.nextafter(hi32, np.float32(np.inf))


# ------------------------------------------------------------------------------------------------- k-NN radii


class _Radii:
    """k-NN radii of one set. `rough` is the screened (k+1)-th smallest squared distance of each point (self
    included), within `e` of the exact one; `exact(rows)` gives the package's radius, computed only where asked."""

    def __init__(self, S: _Screened, k: int, out, block: int, lists: tuple[np.ndarray, np.ndarray]):
        n, L = lists[0].shape
        self.S, self.k, self.out, self.block = S, k, out, block
        vals, self.idx = lists  # from `nearest_lists`, L = min(n, k + 1 + EXTRA) per row
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


def nearest_lists(sets: list, Ls: list, block: int = BLOCK) -> list:
    """Per set, per row, the L smallest screened squared distances within the set (sorted, self included) and their
    rows, as (vals, idx); the blocks of all the sets go through one stream.

    The rows are blocked in a fixed random order, and the diagonal blocks come first: each gives its rows a provisional
    L-th smallest value tau, an upper bound of the final one, and as the block is a random sample of the set, about
    L entries per row pass it in every other block, whatever order the data came in. Each off-diagonal block is
    computed once for its rows and its columns; the values <= tau are merged into the lists in batches, and every
    merge tightens tau.
    """
    lists = [_Lists(S, L, block) for S, L in zip(sets, Ls)]
    diagonal = [(li.S, I, li.S, I, li.smallest) for li in lists for I in li.blocks]
    for li, I, v, j in map_blocks(diagonal):
        li.vals[I, : v.shape[1]], li.idx[I, : v.shape[1]] = v, j
    for li in lists:
        li.tau = li.vals[:, -1].copy()  # inf where a diagonal block is narrower than L: no pruning for those rows
    # column-major within a set (workers reuse their columns), the sets taking turns
    upper = [[(li.S, I, li.S, J, li.below) for bj, J in enumerate(li.blocks) for I in li.blocks[:bj]] for li in lists]
    for li, pairs in map_blocks([t for turn in zip_longest(*upper) for t in turn if t]):
        li.add(pairs)
    return [li.finish() for li in lists]


class _Lists:
    """The growing lists of one set's L smallest screened values per row, and their thresholds tau."""

    def __init__(self, S: _Screened, L: int, block: int):
        n = len(S.x)
        self.S, self.L, self.blocks = S, L, _blocks(np.random.default_rng(0).permutation(n), block)
        self.vals, self.idx = np.full((n, L), np.inf, dtype=np.float32), np.full((n, L), -1, dtype=np.int64)
        self.pending, self.size = [], 0

    def smallest(self, I, J, s, ws):
        v, j = torch.from_numpy(s).topk(min(self.L, s.shape[1]), dim=1, largest=False)  # sorted; beats argpartition
        return self, I, v.numpy(), J[j.numpy()]

    def below(self, I, J, s, ws):  # tau only ever decreases, so a value read mid-update is still an upper bound
        i, j, v = pairs_below(s, self.tau[I], self.tau[J], ws)
        return self, (I[i], J[j], v)

    def add(self, pairs) -> None:
        self.pending.append(pairs)
        self.size += len(pairs[0])
        if self.size >= FLUSH:
            self.finish()
            self.tau[:] = self.vals[:, -1]  # in place: the blocks in flight sift with it

    def finish(self) -> tuple[np.ndarray, np.ndarray]:
        if self.pending:
            _merge(self.vals, self.idx, self.tau, self.pending)
            self.pending, self.size = [], 0
        return self.vals, self.idx


def _merge(vals: np.ndarray, idx: np.ndarray, tau: np.ndarray, pending: list) -> None:
    """Merge the pairs (i, j, value) of upper-triangle blocks into the per-row sorted lists of the L smallest, in place:
    as a candidate of row i and, for the transposed block, of row j, where the value passes that row's tau."""
    n, L = vals.shape
    i, j, v = (np.concatenate(t) for t in zip(*pending))
    ri, rj = v <= tau[i], v <= tau[j]
    r = np.concatenate([np.repeat(np.arange(n), L), i[ri], j[rj]])
    c = np.concatenate([idx.ravel(), j[ri], i[rj]])
    v = np.concatenate([vals.ravel(), v[ri], v[rj]])
    o = np.argsort(_row_value_key(r, v), kind="stable")  # by row, then by value; the lists' own entries first on ties
    r, c, v = r[o], c[o], v[o]
    rank = np.arange(len(r)) - np.searchsorted(r, r)  # position within its row (r is sorted)
    first = rank < L
    vals[r[first], rank[first]], idx[r[first], rank[first]] = v[first], c[first]


def _row_value_key(r: np.ndarray, v: np.ndarray) -> np.ndarray:
    """One uint64 per (row, float32 value) that sorts as (row, value): the row in the high half, the value's bits made
    order-preserving in the low half (negative floats reversed, the sign bit set on the others). One key sorts several
    times faster than lexsort's two."""
    bits = v.astype(np.float32).view(np.uint32)
    bits = np.where(bits >> 31 == 1, ~bits, bits | np.uint32(1 << 31))
    return (r.astype(np.uint64) << np.uint64(32)) | bits


def _exact_rows(S: _Screened, rows: np.ndarray, k: int, block: int) -> np.ndarray:
    """Exact (k+1)-th smallest float64 squared distance of a few rows, from their whole rows."""
    n = len(S.x)
    out = np.empty(len(rows))
    step = max(1, (1 << 22) // n)  # rows at a time: a (step, N) float64 slab of at most 32 MiB
    for s in range(0, len(rows), step):
        r = rows[s : s + step]
        x = S.x[r].astype(np.float64)
        xx = np.einsum("ij,ij->i", x, x)[:, None]
        parts = []
        for J in _blocks(np.arange(n), block):
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

    def below(I, J, s, ws):
        i, j, v = pairs_below(s, hiA[I], hiB[J], ws)  # the few pairs near or inside some ball
        return I[i], J[j], v

    pending, size = [], 0
    # rows and columns in order of their thresholds: a block's are alike, which is what makes the sift cheap
    rows, cols = _blocks(np.argsort(hiA), block), _blocks(np.argsort(hiB), block)
    for i, j, v in map_blocks([(R, I, F, J, below) for J in cols for I in rows]):
        pending.append((i, j, v))
        size += len(v)
        if size >= FLUSH:
            decide(*(np.concatenate(t) for t in zip(*pending)))
            pending, size = [], 0
    if pending:
        decide(*(np.concatenate(t) for t in zip(*pending)))
    return count, covered, recalled
