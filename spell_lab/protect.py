"""Protected sets as shield sources: the index kinds a protected-set spec names (design.md sections 2 and 8).

A spec is plain data, `{"path": "/abs/set.npy", "index": "exact" | "faiss", **index parameters}` (what a `Setting`
carries); `build_index` turns it and the loaded items into a shield source `(x0, radius, overcomp, cond) -> Correction`.

`FaissProtected` is the faiss inverted-file index (IVFFlat, sqrt(N) cells):
- exact=False: the paper's search (App. G): the `nprobe` cells whose centroids are nearest; it misses shields.
- exact=True: every center within r is found. A cell l with centroid c_l and radius R_l = max ||y - c_l|| over its
  members can hold a center within r of x only if max(0, ||x - c_l|| - R_l) < r, and (members being nearer c_l than
  any other centroid c_a) only if x is within r of that Voronoi half-space; every cell that passes both bounds is
  probed (plus the `nprobe` nearest, for the nearest distance). With cache_margin m, the centers within r + m of a sample
  are kept and reused while it has moved less than m: every center within r of the new x0_hat is among them
  (triangle inequality).
Candidates are scanned by faiss (k-NN first, a range search where the k-NN may have cut shields off); the ones kept
get exact distances and pushes from differences (float32, float64 for float64 input), never the expansion.
"""

from __future__ import annotations

import inspect
import json
import math
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .repellency import Correction, ExactProtected, _work_dtype

KNN = 64  # neighbours per query of the first scan; a query whose 64th is within r is widened to a range search
GPU_MAX = 2048  # faiss-gpu's limit on k and nprobe
HALF_SPACES = 4  # nearest centroids whose Voronoi half-spaces tighten the ball bound
SLACK = 1e-4  # relative slack on every bound and threshold: float rounding can only add candidates, never drop one
TRAIN_PER_CELL = 64  # k-means training points per cell (faiss warns below 39; 256 default is slow at D = 2304)
ADD_CHUNK = 65536  # items added (and NaN-checked) per chunk: a memory-mapped set is never loaded whole


@dataclass
class _Cache:
    radius: float
    anchor: torch.Tensor  # (B, D) the x0_hat each row's candidates were searched from (work dtype, host)
    ids: np.ndarray  # (B, L) ids within radius + margin of the anchor (plus its nearest found), -1 padded


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
    """A static protected set in a faiss IVFFlat index; the call of `ExactProtected`. Parameters: nlist cells
    (default round(sqrt(N))), nprobe probes, exact (ball-bounded probing: no miss), cache_margin m (exact only
    stays exact with it: see the module docstring), device (None: where each call's x0 is; CUDA uses faiss-gpu
    k-NN where installed).

    `nearest` is exact where it is below r; above r it is the nearest center among the cells probed (+inf if they
    hold none). `search_seconds` counts every call's time (search and exact verification), `queries` its rows;
    each Correction's `cells_probed` says how many cells each query scanned (0: served from the cache).
    """

    name = "protected"
    host_items = True  # build_index hands the items as loaded (a memory map stays one), not copied to the device

    def __init__(self, items, *, nlist=None, nprobe=1, exact=False, cache_margin=None, device=None):
        import faiss

        arr = _as_array(items)
        self.item_shape, N = tuple(arr.shape[1:]), arr.shape[0]
        flat = arr.reshape(N, -1)
        nlist = int(nlist) if nlist is not None else max(1, round(math.sqrt(N)))
        if not 1 <= nlist <= N:
            raise ValueError(f"nlist must be between 1 and the set size {N} (got {nlist}).")
        train = flat[np.linspace(0, N - 1, min(N, TRAIN_PER_CELL * nlist)).astype(np.int64)]  # deterministic sample
        _check_finite(train)
        index = faiss.IndexIVFFlat(faiss.IndexFlatL2(flat.shape[1]), flat.shape[1], nlist)
        index.cp.niter, index.cp.seed, index.cp.max_points_per_centroid = 10, 1234, TRAIN_PER_CELL
        index.verbose = False
        index.train(np.ascontiguousarray(train, dtype=np.float32))
        for start in range(0, N, ADD_CHUNK):  # chunks: a memory map is read once, never loaded whole
            part = np.ascontiguousarray(flat[start : start + ADD_CHUNK], dtype=np.float32)
            _check_finite(part)
            index.add(part)
        self._setup(index, *cell_radii(index), self.item_shape, nprobe, exact, cache_margin, device)

    def _setup(self, index, radii, max_norm, item_shape, nprobe, exact, cache_margin, device):
        if not 1 <= int(nprobe) <= index.nlist:
            raise ValueError(f"nprobe must be between 1 and nlist = {index.nlist} (got {nprobe}).")
        if cache_margin is not None and not (math.isfinite(cache_margin) and cache_margin > 0):
            raise ValueError(f"cache_margin must be a finite number > 0 or None (got {cache_margin!r}).")
        index.make_direct_map()  # id -> stored vector, for the exact verification
        self.index, self.item_shape = index, tuple(item_shape)
        self.radii = torch.as_tensor(np.asarray(radii, dtype=np.float64))
        self.centroids = torch.from_numpy(index.quantizer.reconstruct_n(0, index.nlist).astype(np.float64))
        self.gaps = torch.cdist(self.centroids, self.centroids).fill_diagonal_(0.0)  # ||c_a - c_l||
        # faiss assigned each item to its nearest centroid by float32 distances: ||y - c_l||^2 <= ||y - c_a||^2 + eps
        # for every a, with eps twice the worst-case float32 error of a length-d distance (gamma_d (|y| + |c|)^2)
        u, d = 2.0**-24, index.d
        self.max_norm = float(max_norm)
        self.eps = 4 * (d * u / (1 - d * u) + 4 * u) * (self.max_norm + float(self.centroids.norm(dim=1).max())) ** 2
        self.nprobe, self.exact, self.cache_margin = int(nprobe), bool(exact), cache_margin
        self.device = None if device is None else torch.device(device)
        self.search_seconds, self.queries, self._cache, self._gpu = 0.0, 0, None, None

    def with_search(self, *, nprobe=1, exact=False, cache_margin=None, device=None) -> "FaissProtected":
        """Another search (probes, exactness, cache) over the same index and radii: nothing is copied."""
        other = type(self).__new__(type(self))
        other._setup(self.index, self.radii, self.max_norm, self.item_shape, nprobe, exact, cache_margin, device)
        return other

    # --- persistence -----------------------------------------------------------------------------------------

    def save(self, path) -> None:
        """A directory with the faiss index and its per-cell radii (what exact search needs)."""
        import faiss

        p = Path(path)
        p.mkdir(parents=True, exist_ok=True)
        faiss.write_index(self.index, str(p / "index.faiss"))
        meta = dict(item_shape=list(self.item_shape), radii=self.radii.tolist(), max_norm=self.max_norm)  # exact repr
        (p / "meta.json").write_text(json.dumps(meta))

    @classmethod
    def load(cls, path, *, nprobe=1, exact=False, cache_margin=None, device=None) -> "FaissProtected":
        import faiss

        p = Path(path)
        if not (p / "index.faiss").exists() or not (p / "meta.json").exists():
            raise ValueError(f"{p} is not a saved FaissProtected index (index.faiss and meta.json); write one with "
                             "FaissProtected(...).save(path).")
        meta = json.loads((p / "meta.json").read_text())
        self = cls.__new__(cls)
        self._setup(faiss.read_index(str(p / "index.faiss")), meta["radii"], meta["max_norm"], meta["item_shape"],
                    nprobe, exact, cache_margin, device)
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
        c = self._verify(x, ids, radius, overcomp)
        self.search_seconds += time.perf_counter() - start
        self.queries += B
        return Correction(c.delta.reshape(x0.shape).to(x0.dtype), c.active, c.nearest,
                          torch.as_tensor(cells, device=x0.device))

    def _cached(self, host, radius, device):
        """Rows that moved m or more since their anchor (or a new batch shape / radius) are searched at r + m."""
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
        return c.ids, cells

    def _cells(self, q64: torch.Tensor, thr: float) -> np.ndarray:
        """(B, nlist) which cells to probe: the nprobe nearest centroids, and (exact) every cell whose lower bound on
        the distance from x to its members is below thr. Centroid distances in float64 (torch: numpy's BLAS was
        20x slower for these small products on a loaded machine)."""
        dc = torch.cdist(q64, self.centroids)  # (B, nlist); exact differences for small B
        k = min(dc.shape[1], max(self.nprobe, HALF_SPACES))
        near = dc.topk(k, dim=1, largest=False).indices  # nearest first
        probe = torch.zeros(dc.shape, dtype=torch.bool).scatter_(1, near[:, : self.nprobe], True)
        if self.exact:
            probe |= self.lower_bound(dc, near[:, :HALF_SPACES]) < thr + SLACK * (thr + dc + self.radii)
        return probe.numpy()

    def lower_bound(self, dc: torch.Tensor, near: torch.Tensor) -> torch.Tensor:
        """(B, nlist) lower bounds on ||x - y|| over the members y of each cell l (design.md section 2): the ball
        max(0, ||x - c_l|| - R_l), and, for each of a few centroids c_a near x, the half-space bound: members of l
        are no farther from c_l than from c_a (nearest-centroid assignment, up to eps), so they are at least
        (||x - c_l||^2 - ||x - c_a||^2 - eps) / (2 ||c_a - c_l||) from x. dc, the bounds: float64."""
        lb = (dc - self.radii).clamp_min(0.0)
        for a in near.T:  # each of the nearest centroids in turn, for every query at once
            da = dc.gather(1, a[:, None])
            hs = (dc**2 - da**2 - self.eps) / (2 * self.gaps[a]).masked_fill(self.gaps[a] == 0, math.inf)
            lb = torch.maximum(lb, hs)
        return lb

    def _search(self, host: torch.Tensor, thr: float, device):
        """(B, L) candidate ids (every center within thr in the probed cells, and the nearest found; -1 padded) and
        the (B,) cells probed."""
        q64 = host.double()
        q32 = np.ascontiguousarray(q64.numpy(), dtype=np.float32)
        probe = self._cells(q64, thr)
        cells = probe.sum(1)
        width = int(cells.max())
        order = np.argsort(~probe, axis=1, kind="stable")[:, :width]
        assign = np.where(np.take_along_axis(probe, order, 1), order, -1)  # probed cells first, -1: none
        t2 = (thr * (1 + SLACK)) ** 2  # faiss distances are squared (and float32): a slightly wider net
        k = min(KNN, len(self))
        dist, ids = self._knn(q32, k, assign, device)
        wide = np.flatnonzero((ids[:, -1] >= 0) & (dist[:, -1] < t2))  # its k-th is within thr: maybe more
        rows = [ids[b][(dist[b] < t2) | (np.arange(k) == 0)] for b in range(len(q32))]  # within thr, + nearest
        if wide.size:
            self.index.nprobe = width
            lims, _, found = self.index.range_search_preassigned(q32[wide], t2, assign[wide], None)
            for j, b in enumerate(wide):
                rows[b] = np.union1d(found[lims[j] : lims[j + 1]], ids[b, :1])
        L = max(1, max(len(r) for r in rows))
        out = np.full((len(rows), L), -1, dtype=np.int64)
        for b, r in enumerate(rows):
            out[b, : len(r)] = r
        return out, cells

    def _knn(self, q32, k, assign, device):
        """k nearest among each query's assigned cells: faiss-gpu where the call is on CUDA and it fits its limits
        (k, cells <= 2048), else faiss-cpu. Either way the cells scanned are exactly `assign`."""
        gpu = self._gpu_index(device)
        if gpu is not None and assign.shape[1] <= GPU_MAX:
            try:
                gpu.nprobe = assign.shape[1]
                return gpu.search_preassigned(q32, k, assign, None)
            except (AttributeError, TypeError, RuntimeError) as err:  # a faiss-gpu build without preassigned search
                warnings.warn(f"faiss-gpu preassigned search unavailable ({err}); searching on the CPU.")
                self._gpu = False
        self.index.nprobe = assign.shape[1]
        return self.index.search_preassigned(q32, k, assign, None)

    def _gpu_index(self, device):
        import faiss

        dev = self.device or device
        if self._gpu is False or dev is None or torch.device(dev).type != "cuda" or faiss.get_num_gpus() == 0:
            return None
        if self._gpu is None:  # once: a copy of the lists on the GPU, the CPU index stays for range searches
            res = faiss.StandardGpuResources()
            self._gpu = (res, faiss.index_cpu_to_gpu(res, torch.device(dev).index or 0, self.index))
        return self._gpu[1]

    def _verify(self, x: torch.Tensor, ids: np.ndarray, radius: float, overcomp: float) -> Correction:
        """Exact distances and pushes to the candidates, from differences (x - z) in x's work dtype."""
        B, L = ids.shape
        valid = ids >= 0
        z = np.zeros((B * L, x.shape[1]), dtype=np.float32)
        if valid.any():
            z[valid.reshape(-1)] = self.index.reconstruct_batch(ids[valid])
        diff = x[:, None, :] - torch.from_numpy(z).to(x.device, x.dtype).reshape(B, L, -1)  # x0_b - z_k, exact
        d = diff.norm(dim=-1).masked_fill(~torch.from_numpy(valid).to(x.device), math.inf)
        inside = (d < radius) & (d > 0)  # a center at x0 itself gives no direction
        w = torch.where(inside, radius / d.clamp_min(torch.finfo(d.dtype).tiny) - 1.0, torch.zeros_like(d))
        delta = overcomp * (w[..., None] * diff).sum(1)
        return Correction(delta, inside.sum(1), d.min(1).values)


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


def cell_radii(index) -> tuple[np.ndarray, float]:
    """R_l = max over cell l of ||y - c_l|| (exact differences, float64), rounded up by SLACK (0 for empty cells),
    and the largest item norm (for the half-space bound's rounding allowance)."""
    import faiss

    inv, d = index.invlists, index.d
    radii, top = np.zeros(index.nlist), 0.0
    for l in range(index.nlist):
        n = inv.list_size(l)
        if n:
            codes = faiss.rev_swig_ptr(inv.get_codes(l), n * d * 4)
            y = np.frombuffer(codes, dtype=np.float32, count=n * d).reshape(n, d).astype(np.float64)
            radii[l] = np.sqrt(((y - index.quantizer.reconstruct(l).astype(np.float64)) ** 2).sum(1)).max()
            top = max(top, float(np.sqrt((y**2).sum(1)).max()))
    return radii * (1 + SLACK), top


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
