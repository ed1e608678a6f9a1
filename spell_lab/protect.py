"""Protected sets as shield sources: the index kinds a protected-set spec names (docs/design.md sections 2 and 8).

A spec is plain data, `{"path": "/abs/set.npy", "index": "exact" | "faiss", **index parameters}` (what a `Setting`
carries); `build_index` turns it and the loaded items into a shield source `(x0, radius, overcomp, cond) -> Correction`.

`FaissProtected` is the faiss inverted-file index (IVFFlat, sqrt(N) cells) and, beside it, a flat bound index:
- exact=False: the paper's search (App. G): the `nprobe` cells whose centroids are nearest; it misses shields.
- exact=True: every center within r is found. Each item y is also kept as a (k+1)-dim bound embedding
  e(y) = (V^T (y - mu), ||R (y - mu)||): its coordinates in the top-k principal directions V of the set (mean mu,
  R = I - V V^T the rest) and its distance to that subspace. For any x, ||e(x) - e(y)|| <= ||x - y|| (Pythagoras on
  V and R, then the reverse triangle inequality on R), so every center within r of x is among the items whose bound is
  below r, whatever V is; a V that holds the set's variance makes the bound tight. faiss scans the bound index (on
  the CPU one range search; on CUDA a faiss-gpu k-NN, widened to a CPU range search where its k-th is within r) with
  a threshold widened by a float32 error allowance. Why not the IVF cells' own bounds (docs/design.md section 2): in the
  digits space the ball and Voronoi half-space bounds selected 24-30% of the cells (measured at commit
  7096111, 16-44x the 2-probe IVF's cost), where this bound leaves about 1.3 candidates per true shield at k = 32.
  With cache_margin m, the centers within r + m of a sample are kept and reused while it has moved less than m: every
  center within r of the new x0_hat is among them (triangle inequality); at each call only those whose bound to the
  new x0_hat is below r are verified, so a wide margin costs a larger cache, not more exact distances.
  Where shields are dense (the bound leaves more candidates than SCAN_RATIO makes a pass over the set worth), the
  exact search instead scans every inverted list against the batch in one float32 GEMM each, with a threshold widened
  by the expansion's rounding bound: a gathered candidate costs far more than a row of a GEMM.
The candidates get exact distances and pushes from differences (float32, float64 for float64 input), never the
expansion.
"""

from __future__ import annotations

import inspect
import json
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .repellency import Correction, ExactProtected, _work_dtype, pushes

KNN = 64  # neighbours per query of the first scan; a query whose 64th is within r is widened to a range search
GPU_MAX = 2048  # faiss-gpu's limit on k and nprobe
BOUND_DIMS = 32  # principal directions in the bound embedding (+1 for the distance to their span)
SLACK = 1e-4  # relative slack on every bound and threshold: float rounding can only add candidates, never drop one
TRAIN_PER_CELL = 64  # k-means training points per cell (faiss warns below 39; 256 default is slow at D = 2304)
ADD_CHUNK = 65536  # items added (and NaN-checked) per chunk: a memory-mapped set is never loaded whole
EMBED_CHUNK = 8192  # items embedded per chunk (float64 work: 150 MB at D = 2304)
FORMAT = 2  # saved-index layout: index.faiss, bound.faiss, bound.npz, meta.json
SCAN_RATIO = 64  # exact search: scan every list instead when candidates x SCAN_RATIO > items x queries (measured on
# the 1.2M fashion set, a verified candidate costs as much as 58-72 (item, query) pairs of the scan; benchmarks/README.md)
SCAN_BLOCK = 32768  # rows per GEMM of that scan (consecutive lists concatenated)


@dataclass
class _Cache:
    radius: float
    anchor: torch.Tensor  # (B, D) the x0_hat each row's candidates were searched from (work dtype, host)
    ids: np.ndarray  # (B, L) ids within radius + margin of the anchor (plus its nearest found), -1 padded


@dataclass
class Bound:
    """The bound embedding e(y) = (V^T (y - mu), ||(y - mu) - V V^T (y - mu)||) of the items, in a flat faiss index.
    mean (D,), basis (D, k) orthonormal, float64; top: the largest ||e(y)|| (for the float32 error allowance)."""

    mean: torch.Tensor
    basis: torch.Tensor
    index: object  # faiss.IndexFlatL2(k + 1) over e(y), float32, ids = item ids
    top: float

    @classmethod
    def fit(cls, sample: np.ndarray, dims: int) -> "Bound":
        """The top-`dims` principal directions of a sample (seeded randomized SVD, orthonormalised in float64): any
        orthonormal basis keeps the bound valid; one that holds the variance makes it tight."""
        import faiss

        s = torch.from_numpy(np.asarray(sample, dtype=np.float64))
        mean = s.mean(0)
        k = max(1, min(int(dims), *s.shape))
        with torch.random.fork_rng():
            torch.manual_seed(0)
            _, _, v = torch.svd_lowrank(s - mean, q=min(k + 8, *s.shape), niter=3)
        basis = torch.linalg.qr(v[:, :k])[0]
        return cls(mean, basis, faiss.IndexFlatL2(k + 1), 0.0)

    def embed(self, x64: torch.Tensor) -> torch.Tensor:
        """(B, D) float64 -> (B, k + 1) float64: coordinates on the basis, then the distance to its span."""
        c = x64 - self.mean
        p = c @ self.basis
        return torch.cat([p, (c - p @ self.basis.T).norm(dim=1, keepdim=True)], dim=1)

    def add(self, part: np.ndarray) -> None:
        for start in range(0, len(part), EMBED_CHUNK):
            e = self.embed(torch.from_numpy(part[start : start + EMBED_CHUNK].astype(np.float64)))
            self.top = max(self.top, float(e.norm(dim=1).max()))
            self.index.add(np.ascontiguousarray(e.numpy(), dtype=np.float32))

    def threshold(self, e: torch.Tensor, thr: float) -> np.ndarray:
        """(B,) squared thresholds on faiss's float32 bound distances that keep every item with ||e(x) - e(y)|| < thr:
        rounding e to float32 moves a distance by <= 2u (|e(x)| + |e(y)|) and the |a|^2 + |b|^2 - 2ab expansion in
        float32 by <= (k + 3) u (|e(x)| + |e(y)|)^2; 2(k + 8) u (|e(x)| + top)^2 covers both with room."""
        u, k = 2.0**-24, self.index.d
        allowance = 2 * (k + 8) * u * (e.norm(dim=1) + self.top) ** 2
        return ((thr * (1 + SLACK)) ** 2 + allowance).numpy()

    def prune(self, e: torch.Tensor, ids: np.ndarray, thr: float) -> np.ndarray:
        """`ids` (B, L) with -1 where the bound to e (B, k + 1) is at or above thr, keeping each row's lowest bound
        (the nearest found): the cached candidates within r + m that the exact verification still needs. Bounds from
        float64 differences to the stored float32 embeddings, under the same allowance as the scan."""
        rows, slots = np.nonzero(ids >= 0)
        if not rows.size:
            return ids
        ey = torch.from_numpy(self.index.reconstruct_batch(ids[rows, slots])).double()
        lb2 = torch.full(ids.shape, math.inf, dtype=torch.float64)
        lb2[rows, slots] = ((e[rows] - ey) ** 2).sum(1)
        keep = (lb2 < torch.from_numpy(self.threshold(e, thr))[:, None]) | (lb2 == lb2.min(1, keepdim=True).values)
        return np.where(keep.numpy() & (ids >= 0), ids, -1)


def _as_array(items) -> np.ndarray:
    """(N, ...) tensor, array or .npy path (memory-mapped) -> (N, D) float32 array view where possible."""
    if isinstance(items, (str, Path)):
        p = Path(items)
        if p.suffix != ".npy":
            raise ValueError(f"{p}: FaissProtected builds from an (N, ...) array or a .npy file; use "
                             "FaissProtected.load for a saved index.")
        items = np.load(p, mmap_mode="r", allow_pickle=False)
    if isinstance(items, torch.Tensor):
        items = items.detach().cpu().numpy()
    items = np.asarray(items)
    if items.ndim < 2 or items.shape[0] == 0:
        raise ValueError(f"the protected set must be a non-empty (N, ...) array (got shape {items.shape}); give at "
                         "least one reference.")
    return items


class FaissProtected:
    """A static protected set in a faiss IVFFlat index with its bound index; the call of `ExactProtected`.
    Parameters: nlist cells (default round(sqrt(N))), nprobe probes (approximate search), exact (the bound index
    decides the candidates: no miss), cache_margin m (exact only; stays exact: see the module docstring), device
    (None: where each call's x0 is; CUDA uses faiss-gpu k-NN where installed), bound_dims k of the bound embedding.

    `nearest` is exact where it is below r; above r it is the nearest center among the candidates (approximate: the
    cells probed; +inf if they hold none). `search_seconds` counts every call's time (search and exact
    verification), `queries` its rows, `candidates` the centers verified exactly; each Correction's `cells_probed`
    says how many cells each query scanned (approximate: its nprobe; exact: the flat bound index, one; 0: served from
    the cache; nlist: the dense case's scan of every list).
    """

    name = "protected"
    host_items = True  # build_index hands the items as loaded (a memory map stays one), not copied to the device

    def __init__(self, items, *, nlist=None, nprobe=1, exact=False, cache_margin=None, device=None,
                 bound_dims=BOUND_DIMS):
        import faiss

        arr = _as_array(items)
        self.item_shape, N = tuple(arr.shape[1:]), arr.shape[0]
        flat = arr.reshape(N, -1)
        nlist = int(nlist) if nlist is not None else max(1, round(math.sqrt(N)))
        if not 1 <= nlist <= N:
            raise ValueError(f"nlist must be between 1 and the set size {N} (got {nlist}).")
        if not (isinstance(bound_dims, int) and bound_dims >= 1):
            raise ValueError(f"bound_dims must be an integer >= 1 (got {bound_dims!r}); {BOUND_DIMS} is the default.")
        train = flat[np.linspace(0, N - 1, min(N, TRAIN_PER_CELL * nlist)).astype(np.int64)]  # deterministic sample
        _check_finite(train)
        index = faiss.IndexIVFFlat(faiss.IndexFlatL2(flat.shape[1]), flat.shape[1], nlist)
        index.cp.niter, index.cp.seed, index.cp.max_points_per_centroid = 10, 1234, TRAIN_PER_CELL
        index.verbose = False
        index.train(np.ascontiguousarray(train, dtype=np.float32))
        bound = Bound.fit(train, bound_dims)
        for start in range(0, N, ADD_CHUNK):  # chunks: a memory map is read once, never loaded whole
            part = np.ascontiguousarray(flat[start : start + ADD_CHUNK], dtype=np.float32)
            _check_finite(part)
            index.add(part)
            bound.add(part)
        self._setup(index, bound, self.item_shape, nprobe, exact, cache_margin, device)

    def _setup(self, index, bound, item_shape, nprobe, exact, cache_margin, device):
        if not 1 <= int(nprobe) <= index.nlist:
            raise ValueError(f"nprobe must be between 1 and nlist = {index.nlist} (got {nprobe}).")
        if cache_margin is not None and not (math.isfinite(cache_margin) and cache_margin > 0):
            raise ValueError(f"cache_margin must be a finite number > 0 or None (got {cache_margin!r}).")
        if cache_margin is not None and not exact:
            raise ValueError("cache_margin needs exact=True: the cache keeps what an exact search found.")
        if not index.direct_map.type:
            index.make_direct_map()  # id -> stored vector, for the exact verification
        self.index, self.bound, self.item_shape = index, bound, tuple(item_shape)
        self.nprobe, self.exact, self.cache_margin = int(nprobe), bool(exact), cache_margin
        self.device = None if device is None else torch.device(device)
        self.search_seconds, self.queries, self.candidates, self._cache, self._gpu = 0.0, 0, 0, None, None
        self._norms = {}  # the dense scan's item norms per block, computed on first use

    def with_search(self, *, nprobe=1, exact=False, cache_margin=None, device=None) -> "FaissProtected":
        """Another search (probes, exactness, cache) over the same index and bound index: nothing is copied."""
        other = type(self).__new__(type(self))
        other._setup(self.index, self.bound, self.item_shape, nprobe, exact, cache_margin, device)
        return other

    # --- persistence -----------------------------------------------------------------------------------------

    def save(self, path) -> None:
        """A directory with the faiss IVF index, the bound index and its basis (what exact search needs)."""
        import faiss

        p = Path(path)
        p.mkdir(parents=True, exist_ok=True)
        faiss.write_index(self.index, str(p / "index.faiss"))
        faiss.write_index(self.bound.index, str(p / "bound.faiss"))
        np.savez(p / "bound.npz", mean=self.bound.mean.numpy(), basis=self.bound.basis.numpy())
        meta = dict(format=FORMAT, item_shape=list(self.item_shape), bound_top=self.bound.top)  # json: exact repr
        (p / "meta.json").write_text(json.dumps(meta))

    @classmethod
    def load(cls, path, *, nprobe=1, exact=False, cache_margin=None, device=None, mmap=False) -> "FaissProtected":
        """A saved index; mmap=True maps the IVF lists from the file instead of reading them (a set larger than RAM)."""
        import faiss

        p = Path(path)
        names = ("index.faiss", "bound.faiss", "bound.npz", "meta.json")
        if not all((p / n).exists() for n in names):
            raise ValueError(f"{p} is not a saved FaissProtected index ({', '.join(names)}); write one with "
                             "FaissProtected(...).save(path).")
        meta = json.loads((p / "meta.json").read_text())
        if meta.get("format") != FORMAT:
            raise ValueError(f"{p} was saved in index format {meta.get('format', 1)}, this version reads {FORMAT}: "
                             "rebuild it with FaissProtected(items).save(path).")
        basis = np.load(p / "bound.npz")
        bound = Bound(torch.from_numpy(basis["mean"]), torch.from_numpy(basis["basis"]),
                      faiss.read_index(str(p / "bound.faiss")), float(meta["bound_top"]))
        index = faiss.read_index(str(p / "index.faiss"), faiss.IO_FLAG_MMAP if mmap else 0)
        self = cls.__new__(cls)
        self._setup(index, bound, meta["item_shape"], nprobe, exact, cache_margin, device)
        return self

    def __len__(self) -> int:
        return self.index.ntotal

    def validate(self, x0_example: torch.Tensor) -> None:
        if tuple(x0_example.shape[1:]) != self.item_shape:
            raise ValueError(f"protected items have shape {self.item_shape}, but samples have shape "
                             f"{tuple(x0_example.shape[1:])}: encode the references into the model's diffusion space.")

    # --- the shield source -----------------------------------------------------------------------------------

    def __call__(self, x0, radius, overcomp, cond) -> Correction:
        start = time.perf_counter()
        B, wd = x0.shape[0], _work_dtype(x0.dtype)
        x = x0.reshape(B, -1).to(wd)
        host = x.detach().cpu()
        with one_faiss_thread():
            if self.cache_margin is None:
                ids, cells = self._search(host, radius, x0.device)
            else:
                ids, cells = self._cached(host, radius, x0.device)
        n = int((ids >= 0).sum())
        if self.exact and n * SCAN_RATIO > len(self) * B:  # dense shields: one pass over the set costs less
            (c, n), cells = self._scan(x, radius, overcomp), np.full(B, self.index.nlist, dtype=np.int64)
        else:
            c = self._verify(x, ids, radius, overcomp)
        self.search_seconds += time.perf_counter() - start
        self.queries += B
        self.candidates += n
        return Correction(c.delta.reshape(x0.shape).to(x0.dtype), c.active, c.nearest,
                          torch.as_tensor(cells, device=x0.device))

    def _cached(self, host, radius, device):
        """Rows that moved m or more since their anchor (or a new batch shape / radius) are searched at r + m; every
        row's cached candidates are then pruned by their bound to the new x0_hat before the exact verification."""
        m, c = self.cache_margin, self._cache
        B = host.shape[0]
        if c is None or c.anchor.shape != host.shape or c.radius != radius:
            stale = np.ones(B, dtype=bool)
            c = self._cache = _Cache(radius, host.clone(), np.full((B, 1), -1, dtype=np.int64))
        else:
            stale = ((host - c.anchor).norm(dim=1) >= m * (1 - SLACK)).numpy()  # exact differences
        cells = np.zeros(B, dtype=np.int64)
        rows = np.flatnonzero(stale)
        if rows.size:
            new, cells[rows] = self._search(host[rows], radius + m, device)
            width = max(c.ids.shape[1], new.shape[1])
            ids = np.full((B, width), -1, dtype=np.int64)
            ids[:, : c.ids.shape[1]] = c.ids
            ids[rows] = -1
            ids[rows, : new.shape[1]] = new
            c.ids, c.anchor[rows] = ids[:, : max(1, int((ids >= 0).sum(1).max()))], host[rows]  # rows left-packed
        if int((c.ids >= 0).sum()) * SCAN_RATIO > len(self) * B:  # dense: the caller scans every list, skip the prune
            return c.ids, cells
        return self.bound.prune(self.bound.embed(host.double()), c.ids, radius), cells  # verify the bound's few

    def _search(self, host: torch.Tensor, thr: float, device):
        """(B, L) candidate ids (every center within thr, exact; within thr in the probed cells, approximate; and the
        nearest found; -1 padded) and the (B,) cells scanned."""
        if self.exact:
            e = self.bound.embed(host.double())
            q, t2, index, cells = e, self.bound.threshold(e, thr), self.bound.index, 1
        else:  # faiss distances are squared (and float32): a slightly wider net
            q, index, cells = host, self.index, min(self.nprobe, self.index.nlist)
            t2 = np.full(len(host), (thr * (1 + SLACK)) ** 2)
            self.index.nprobe = self.nprobe
        q = np.ascontiguousarray(q.numpy(), dtype=np.float32)
        gpu = self._gpu_index(index, device)
        if gpu is None:  # CPU: one range search, then the nearest for the queries it left with nothing
            rows = self._range(index, q, t2, np.arange(len(q)))
            empty = np.flatnonzero([r.size == 0 for r in rows])
            if empty.size:  # exact: the nearest of the IVF's nearest cell (above r: approximate, as documented),
                # not a second scan of the flat bound index (a fifth of the exact search's time on fashion at 120k)
                nearest = self._nearest_cell(host[empty]) if self.exact else index.search(q[empty], 1)[1][:, 0]
                for j, b in enumerate(empty):
                    rows[b] = nearest[j : j + 1]
        else:  # CUDA: faiss-gpu k-NN; the queries whose k-th is within thr may hold more: range search on the CPU
            k = min(KNN, len(self))
            dist, ids = self._knn(gpu, index, q, k)
            rows = [ids[b][(dist[b] < t2[b]) | (np.arange(k) == 0)] for b in range(len(q))]  # within thr, + nearest
            wide = np.flatnonzero((ids[:, -1] >= 0) & (dist[:, -1] < t2))
            for b, found in zip(wide, self._range(index, q, t2, wide)):
                rows[b] = np.union1d(found, ids[b, :1])
        L = max(1, max(len(r) for r in rows))
        out = np.full((len(rows), L), -1, dtype=np.int64)
        for b, r in enumerate(rows):
            r = r[r >= 0]
            out[b, : len(r)] = r
        return out, np.full(len(q), cells, dtype=np.int64)

    def _nearest_cell(self, host: torch.Tensor) -> np.ndarray:
        self.index.nprobe = 1
        return self.index.search(np.ascontiguousarray(host.numpy(), dtype=np.float32), 1)[1][:, 0]

    @staticmethod
    def _range(index, q, t2, which) -> list[np.ndarray]:
        """Ids within each query's own squared threshold, from one range search at the widest of them."""
        if not len(which):
            return []
        lims, dist, ids = index.range_search(q[which], float(t2[which].max()))
        return [ids[lims[j] : lims[j + 1]][dist[lims[j] : lims[j + 1]] < t2[b]] for j, b in enumerate(which)]

    @staticmethod
    def _knn(gpu, index, q32, k):
        """k nearest on the GPU copy of `index` (the IVF with its nprobe, or the flat bound index), where it fits
        faiss-gpu's limits (k, nprobe <= 2048); else on the CPU."""
        if getattr(index, "nprobe", 1) <= GPU_MAX and k <= GPU_MAX:
            if hasattr(gpu, "nprobe"):
                gpu.nprobe = index.nprobe
            return gpu.search(q32, k)
        return index.search(q32, k)

    def _gpu_index(self, index, device):
        import faiss

        dev = self.device or device
        if dev is None or torch.device(dev).type != "cuda" or faiss.get_num_gpus() == 0:
            return None
        if self._gpu is None:  # once: a copy on the GPU of the index this search scans; the CPU one stays for ranges
            res = faiss.StandardGpuResources()
            self._gpu = (res, faiss.index_cpu_to_gpu(res, torch.device(dev).index or 0, index))
        return self._gpu[1]

    def stored_items(self) -> torch.Tensor:
        """Every stored vector, in the inverted lists' order, shaped as the items (a protected set's order does not
        matter: semantic SPELL maps them all into its feature space)."""
        return torch.cat([y for y, _ in self._blocks()]).reshape(-1, *self.item_shape)

    def _blocks(self):
        """The stored vectors in blocks of consecutive inverted lists (at least SCAN_BLOCK rows, so the GEMMs are
        large) with their norms (computed once per index and kept), as (n, D) float32 and (n,) tensors."""
        import faiss

        inv, d, norms = self.index.invlists, self.index.d, self._norms
        parts, first = [], 0
        for l in range(inv.nlist):
            n = inv.list_size(l)
            if n:
                codes = faiss.rev_swig_ptr(inv.get_codes(l), n * inv.code_size)
                parts.append(np.frombuffer(codes, dtype=np.uint8).view(np.float32).reshape(n, d))
            if parts and (sum(len(p) for p in parts) >= SCAN_BLOCK or l == inv.nlist - 1):
                y = torch.from_numpy(np.concatenate(parts))
                if (first, l) not in norms:  # keyed by the block's lists: another SCAN_BLOCK makes other blocks
                    norms[first, l] = y.norm(dim=1)
                yield y, norms[first, l]
                parts, first = [], l + 1

    def _scan(self, x: torch.Tensor, radius: float, overcomp: float) -> tuple[Correction, int]:
        """The exact search where shields are dense: every list of the IVF against the whole batch in one float32
        GEMM each (||x||^2 + ||y||^2 - 2xy), the threshold widened by that expansion's rounding bound
        (2 (D + 8) u (|x| + |y|)^2, as `Bound.threshold`), then every candidate verified from differences in x's work
        dtype, as `_verify` does. `nearest` above r is the scan's float32 nearest, verified. Returns the correction
        and the candidates verified."""
        u, D, wd = 2.0**-24, x.shape[1], x.dtype
        xh = x.detach().cpu()
        q = xh.float()
        qn = q.norm(dim=1)
        t2 = torch.full_like(qn, (radius * (1 + SLACK)) ** 2)
        best = torch.full_like(qn, math.inf)  # each row's float32 nearest (squared), and that item
        best_vec = torch.zeros_like(xh)
        rows, diffs, z_norms = [], [], []
        for y, yn in self._blocks():
            d2 = qn[:, None] ** 2 + yn[None, :] ** 2 - 2 * (q @ y.T)
            slack = 2 * (D + 8) * u * (qn[:, None] + yn[None, :]) ** 2
            m, j = d2.min(dim=1)
            closer = m < best
            best_vec[closer] = y[j[closer]].to(wd)
            best = torch.where(closer, m, best)
            r, k = (d2 < t2[:, None] + slack).nonzero(as_tuple=True)
            z = y[k].to(wd)
            rows.append(r)
            diffs.append(xh[r] - z)  # x0_b - z_k, exact in the work dtype
            z_norms.append(z.norm(dim=1))
        row, diff, z_norm = torch.cat(rows), torch.cat(diffs), torch.cat(z_norms)
        nearest = (xh - best_vec).norm(dim=1)  # the scan's float32 nearest; exact below r: every shield is a pair
        c = _summed(xh, row, diff, z_norm, nearest, radius, overcomp)
        dev = x.device
        return Correction(c.delta.to(dev), c.active.to(dev), c.nearest.to(dev)), len(row)

    def _verify(self, x: torch.Tensor, ids: np.ndarray, radius: float, overcomp: float) -> Correction:
        """Exact distances and pushes to the candidates, from differences (x - z) in x's work dtype, one (query,
        candidate) pair at a time (no padding to the longest list), summed per row by `_summed`."""
        B = ids.shape[0]
        rows, slots = np.nonzero(ids >= 0)  # row-major: each query's candidates together
        z = self.index.reconstruct_batch(ids[rows, slots]) if rows.size else np.zeros((0, x.shape[1]), np.float32)
        row = torch.from_numpy(rows).to(x.device)
        zt = torch.from_numpy(z).to(x.device, x.dtype)
        diff = x[row] - zt  # x0_b - z_k, exact
        none = torch.full((B,), math.inf, dtype=x.dtype, device=x.device)
        return _summed(x, row, diff, zt.norm(dim=1), none, radius, overcomp)


def _summed(x, row, diff, z_norm, nearest, radius: float, overcomp: float) -> Correction:
    """The correction from (query row, x0_row - z) pairs, verified here: which push (`pushes`; coinciding with x0:
    no direction), their Eq. 5 weights summed per row by a product with a (B, pairs) weight matrix (the same order on
    every device; index_add_ would race on CUDA), and each row's nearest (the min of `nearest` and its pairs)."""
    d = diff.norm(dim=1)
    nearest = nearest.scatter_reduce(0, row, d, "amin")
    inside = pushes(d, radius, x.norm(dim=1)[row], z_norm, x.dtype)
    active = torch.zeros(len(x), dtype=torch.long, device=x.device).index_add_(0, row, inside.long())
    pick = inside.nonzero().squeeze(1)
    weights = torch.zeros(len(x), len(pick), dtype=x.dtype, device=x.device)
    weights[row[pick], torch.arange(len(pick), device=x.device)] = radius / d[pick] - 1.0
    return Correction(overcomp * (weights @ diff[pick]), active, nearest)


@contextmanager
def one_faiss_thread():
    """Queries on one faiss thread: a batch is tens of queries, and faiss's OpenMP pool (another runtime than
    torch's) spinning beside torch's made a call 20x slower on 2 loaded cores (0.29 s against 0.014 s, measured)."""
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def _check_finite(part: np.ndarray) -> None:
    if not np.isfinite(part).all():
        raise ValueError("the protected set contains NaN or inf: clean it before shielding it.")


INDEXES = {"exact": ExactProtected, "faiss": FaissProtected}  # index kind -> shield source, cls(items, **parameters)


def protected_spec(path, index: str = "exact", **params) -> dict:
    if index not in INDEXES:
        raise ValueError(f"unknown protected index {index!r}; choose from {', '.join(INDEXES)}.")
    accepted = [n for n, p in inspect.signature(INDEXES[index]).parameters.items() if p.kind == p.KEYWORD_ONLY
                or (p.kind == p.POSITIONAL_OR_KEYWORD and n != "items")]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ValueError(f"protected index {index!r} has no parameter(s) {unknown}; it takes {accepted}.")
    return {"path": str(Path(path).resolve()), "index": index, **params}


def spec_key(spec: dict) -> str:
    """One string per distinct spec: settings that share a protected set share its index."""
    return json.dumps(spec, sort_keys=True)


def build_index(spec: dict, items, device=None):
    """The spec's shield source over `items` (as loaded: a memory map for a .npy); on `device` where it holds them."""
    cls = INDEXES[spec["index"]]
    params = {k: v for k, v in spec.items() if k not in ("path", "index")}
    if getattr(cls, "host_items", False):
        return cls(items, device=device, **{k: v for k, v in params.items() if k != "device"})
    return cls(items if device is None else items.to(device), **params)
