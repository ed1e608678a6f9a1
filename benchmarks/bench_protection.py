"""Shield search at scale (issue #15, paper Table 2 / App. G): exhaustive exact search against the faiss index,
exact (the bound index, with and without the candidate cache, with and without the dense case's scan of every list)
and approximate IVF (1, 2, 3, 5, 10 probes), side by
side.

    python benchmarks/bench_protection.py [--model digits|fashion] [--n 1200000] [--batch 32] [--trajectories 1]
        [--radius 25] [--cache-margin 2] [--every 1] [--nlist L] [--bound-dims 32] [--more-bound-dims 16]
        [--more-cache-margins 5 10] [--mmap-index]

The protected set, written as a .npy in a temp dir and memory-mapped:
- digits: the model's training images in its diffusion space (D = 48 x 48 = 2304), grown to N items by clustered
  noise around them in the 8x8 pixel space (deterministic; item i is image i mod 1797);
- fashion: the 60,000 training images' latents (D = 4 x 8 x 8 = 256, full rank), grown to N by the deterministic
  image-space augmentations of `spell_lab.models.fashion_training_set` (the protection experiment's set), read from
  its cache of unscaled latents (encoded on a miss: about 30 min per 1.2M images on one core), times the scaling factor.
Queries: the x0_hat of every denoiser evaluation of --trajectories real trajectory batches of the model (`generate`,
its default sampler, steps and guidance), fed to each search in order, as a run does.
Misses are (query, shield) pairs the exhaustive search finds and the index does not. --mmap-index saves the built index
and maps its lists from the file (a set about half of RAM: the mapped set and the lists then share the page cache).
"""

from __future__ import annotations

import argparse
import gc
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from spell_lab.methods import Hooks
from spell_lab.models import load_model
from spell_lab.models.digits import load_data
from spell_lab import protect
from spell_lab.protect import FaissProtected
from spell_lab.repellency import ExactProtected, SpellStep
from spell_lab.run.references import load_reference_set
from spell_lab.samplers import generate

CHUNK = 65536


def rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


def write_set(model, n: int, noise: float, path: Path) -> np.ndarray:
    """(n, 1, 48, 48) float32 .npy: training image i mod 1797 plus N(0, noise^2) per 8x8 pixel (none for the first
    1797), encoded into the model's space chunk by chunk; returned memory-mapped."""
    images, _ = load_data()
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, *model.sample_shape))
    rng = np.random.default_rng(0)
    for start in range(0, n, CHUNK):
        idx = np.arange(start, min(n, start + CHUNK))
        v = images[idx % len(images)].numpy() + noise * rng.standard_normal((len(idx), 8, 8), dtype=np.float32)
        v[idx < len(images)] = images[idx[idx < len(images)]].numpy()
        out[idx[0] : idx[-1] + 1] = model.space.encode(torch.from_numpy(v)).numpy()
    out.flush()
    del out
    return np.load(path, mmap_mode="r")


def write_fashion_set(model, n: int, path: Path) -> np.ndarray:
    """(n, 4, 8, 8) float32 .npy: the cached unscaled training latents (grown to n) times the model's scaling factor,
    chunk by chunk; returned memory-mapped."""
    from spell_lab.models.fashion_training_set import unscaled_set

    unscaled = unscaled_set(model.vae, n, seed=0, progress=lambda i, n: print(f"encoded {i:,} / {n:,}", flush=True))
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, *model.sample_shape))
    for start in range(0, n, CHUNK):
        out[start : start + CHUNK] = (torch.from_numpy(np.array(unscaled[start : start + CHUNK]))
                                      * model.scaling_factor).numpy()
    out.flush()
    del out
    return np.load(path, mmap_mode="r")


def trajectory(model, batch: int, trajectories: int = 1) -> list[torch.Tensor]:
    """x0_hat (batch, *sample_shape) at every denoiser evaluation of `trajectories` generations, in order."""
    seen = []

    def record(x0, cond, **context):
        seen.append(x0.clone())
        return SpellStep.unchanged(x0)

    for t in range(trajectories):
        cond = (torch.arange(batch) + t * batch) % model.num_classes
        generate(model, cond, list(range(t * batch, (t + 1) * batch)), method=Hooks(interventions=(record,)),
                 record=False)
    return seen


def run(source, queries, radius):
    """Every query batch in order through one source: seconds per batch, active counts, cells probed per query, and
    centers verified exactly per query (faiss sources)."""
    active, cells = [], []
    start = time.perf_counter()
    for x in queries:
        c = source(x, radius, 1.0, None)
        active.append(c.active)
        cells.append(c.cells_probed if c.cells_probed is not None else torch.full_like(c.active, -1))
    seconds = (time.perf_counter() - start) / len(queries)
    verified = getattr(source, "candidates", None)
    per_query = verified / (len(queries) * len(queries[0])) if verified is not None else None
    return seconds, torch.stack(active), torch.stack(cells).float(), per_query


def with_bound(ivf, items, dims):
    """The exact search of `ivf` over another bound embedding (k = dims), fit on the same k-means training sample."""
    flat = items.reshape(len(items), -1)
    n = min(len(flat), protect.TRAIN_PER_CELL * ivf.index.nlist)
    bound = protect.Bound.fit(flat[np.linspace(0, len(flat) - 1, n).astype(np.int64)], dims)
    for start in range(0, len(flat), CHUNK):
        bound.add(np.ascontiguousarray(flat[start : start + CHUNK], dtype=np.float32))
    other = ivf.with_search(exact=True)
    other.bound = bound
    return other


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", choices=("digits", "fashion"), default="digits", help="whose training set (above)")
    ap.add_argument("--n", type=int, default=1_200_000, help="protected items (digits: 11 GB of float32 at 1.2M)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--trajectories", type=int, default=1, help="trajectory batches whose x0_hat are the queries")
    ap.add_argument("--radius", type=float, default=25.0)
    ap.add_argument("--noise", type=float, default=0.15, help="pixel noise (8x8, [0, 1] range) growing the set")
    ap.add_argument("--cache-margin", type=float, default=2.0)
    ap.add_argument("--every", type=int, default=1, help="use every k-th evaluation (the cache then sees k steps' moves)")
    ap.add_argument("--nlist", type=int, default=None, help="IVF cells (default round(sqrt(N)))")
    ap.add_argument("--bound-dims", type=int, default=protect.BOUND_DIMS, help="k of the bound embedding")
    ap.add_argument("--more-bound-dims", type=int, nargs="*", default=(), help="more exact rows with other k")
    ap.add_argument("--more-cache-margins", type=float, nargs="*", default=(), help="more cached rows, other m")
    ap.add_argument("--mmap-index", action="store_true", help="save the index and map its lists from the file")
    ap.add_argument("--dir", default=None, help="where to write the set (default: a temp dir, removed after)")
    args = ap.parse_args()
    torch.set_num_threads(1)  # as the run layer does on CPU (2 threads on small ops were 10-50x slower under load)
    model = load_model(args.model)
    tmp = Path(args.dir or tempfile.mkdtemp(prefix="bench_protection_"))
    try:
        t = time.perf_counter()
        items = (write_fashion_set(model, args.n, tmp / "set.npy") if args.model == "fashion"
                 else write_set(model, args.n, args.noise, tmp / "set.npy"))
        print(f"set: {args.n:,} items x {int(np.prod(items.shape[1:]))} float32 ({items.nbytes / 2**30:.1f} GiB, "
              f"memory-mapped), written in {time.perf_counter() - t:.0f} s")
        queries = trajectory(model, args.batch, args.trajectories)[:: args.every]
        print(f"queries: {len(queries)} evaluations (every {args.every}) x {args.batch} samples of {args.trajectories} "
              f"{args.model} trajectory batch(es); r = {args.radius}, noise {args.noise if args.model == 'digits' else '-'}, "
              f"cache margin {args.cache_margin}", flush=True)
        t = time.perf_counter()
        ivf = FaissProtected(tmp / "set.npy", nlist=args.nlist, bound_dims=args.bound_dims)
        build = time.perf_counter() - t
        print(f"build (IVF train and add, bound embedding k = {ivf.bound.basis.shape[1]}): {build:.0f} s, nlist "
              f"{ivf.index.nlist}; peak RSS {rss_gb():.1f} GiB")
        if args.mmap_index:
            ivf.save(tmp / "index")
            del ivf
            gc.collect()
            ivf = FaissProtected.load(tmp / "index", mmap=True)
            print(f"index saved and reloaded with its lists memory-mapped ({(tmp / 'index' / 'index.faiss').stat().st_size / 2**30:.1f} GiB file)")
        k = ivf.bound.basis.shape[1]
        searches = {"exhaustive": ExactProtected(load_reference_set(tmp / "set.npy"))}  # the run layer's memory map
        searches[f"exact, bound k={k} + cache"] = ivf.with_search(exact=True, cache_margin=args.cache_margin)
        for m in args.more_cache_margins:
            searches[f"exact, bound k={k} + cache m={m:g}"] = ivf.with_search(exact=True, cache_margin=m)
        searches[f"exact, bound k={k}"] = ivf.with_search(exact=True)
        searches[f"exact, bound k={k}, no list scan"] = ivf.with_search(exact=True)  # SCAN_RATIO 0: always verify
        for dims in args.more_bound_dims:
            searches[f"exact, bound k={dims}"] = with_bound(ivf, items, dims)
        for p in (1, 2, 3, 5, 10):
            searches[f"IVF {p} probe{'s' if p > 1 else ''}"] = ivf.with_search(nprobe=p)
        rows, ratio = {}, protect.SCAN_RATIO
        for name, source in searches.items():
            protect.SCAN_RATIO = 0 if name.endswith("no list scan") else ratio
            rows[name] = (*run(source, queries, args.radius), rss_gb())
        protect.SCAN_RATIO = ratio
        report(rows, build)
    finally:
        if args.dir is None:
            shutil.rmtree(tmp, ignore_errors=True)


def report(rows, build):
    ex, ivf2 = rows["exhaustive"][0], rows["IVF 2 probes"][0]
    truth = rows["exhaustive"][1]
    print(f"\nshields found by exhaustive search: {int(truth.sum()):,} (query, shield) pairs over {truth.numel():,} "
          f"queries, {int((truth > 0).sum()):,} queries with one or more")
    print("| search | s / batch | / exhaustive | / IVF 2 | missed pairs | queries missing one | cells / query | "
          "verified / query | peak RSS so far |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, (s, active, cells, verified, rss) in rows.items():
        missed = (truth - active).clamp_min(0)
        c = "-" if (cells < 0).all() else f"{float(cells.mean()):.2f}"
        v = "-" if verified is None else f"{verified:.1f}"
        print(f"| {name} | {s:.4f} | {s / ex:.4f} | {s / ivf2:.2f} | {int(missed.sum())} | {int((missed > 0).sum())} | "
              f"{c} | {v} | {rss:.1f} GiB |")
    print(f"\nbuild (shared by every faiss row): {build:.0f} s; exhaustive has no build. cells / query: IVF cells "
          "scanned; the exact search scans its flat bound index (1), serves a row from its cache (0) or, where the bound "
          f"leaves more than items x batch / {protect.SCAN_RATIO} candidates, scans every list (nlist)")


if __name__ == "__main__":
    main()
