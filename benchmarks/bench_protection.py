"""Shield search at scale (issue #15, paper Table 2 / App. G): exhaustive exact search against the faiss IVF index,
exact (ball-bounded, with and without the candidate cache) and approximate (1, 2, 3, 5, 10 probes), side by side.

    python benchmarks/bench_protection.py [--n 1200000] [--batch 32] [--radius 25] [--cache-margin 2] [--every 1]
        [--nlist L] [--half-spaces H]

The protected set: the digits model's training images in its diffusion space (D = 48 x 48 = 2304), grown to N items
by clustered noise around them in the 8x8 pixel space (deterministic; item i is image i mod 1797), written as a .npy
in a temp dir and memory-mapped. Queries: the x0_hat of every denoiser evaluation of one real digits trajectory
batch (`generate`, DDIM, the model's default steps and guidance), fed to each search in order, as a run does.
Misses are (query, shield) pairs the exhaustive search finds and the index does not.
"""

from __future__ import annotations

import argparse
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


def trajectory(model, batch: int) -> list[torch.Tensor]:
    """x0_hat (batch, 1, 48, 48) at every denoiser evaluation of one generation, in order."""
    seen = []

    def record(x0, cond, **context):
        seen.append(x0.clone())
        return SpellStep.unchanged(x0)

    cond = torch.arange(batch) % model.num_classes
    generate(model, cond, list(range(batch)), method=Hooks(interventions=(record,)), record=False)
    return seen


def run(source, queries, radius):
    """Every query batch in order through one source: seconds per batch, active counts, cells probed per query."""
    active, cells = [], []
    start = time.perf_counter()
    for x in queries:
        c = source(x, radius, 1.0, None)
        active.append(c.active)
        cells.append(c.cells_probed if c.cells_probed is not None else torch.full_like(c.active, -1))
    return (time.perf_counter() - start) / len(queries), torch.stack(active), torch.stack(cells).float()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1_200_000, help="protected items (11 GB of float32 at 1.2M)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--radius", type=float, default=25.0)
    ap.add_argument("--noise", type=float, default=0.15, help="pixel noise (8x8, [0, 1] range) growing the set")
    ap.add_argument("--cache-margin", type=float, default=2.0)
    ap.add_argument("--every", type=int, default=1, help="use every k-th evaluation (the cache then sees k steps' moves)")
    ap.add_argument("--nlist", type=int, default=None, help="IVF cells (default round(sqrt(N)))")
    ap.add_argument("--half-spaces", type=int, default=protect.HALF_SPACES, help="Voronoi half-spaces per query")
    ap.add_argument("--dir", default=None, help="where to write the set (default: a temp dir, removed after)")
    args = ap.parse_args()
    torch.set_num_threads(1)  # as the run layer does on CPU (2 threads on small ops were 10-50x slower under load)
    model = load_model("digits")
    tmp = Path(args.dir or tempfile.mkdtemp(prefix="bench_protection_"))
    try:
        t = time.perf_counter()
        items = write_set(model, args.n, args.noise, tmp / "set.npy")
        print(f"set: {args.n:,} items x {int(np.prod(items.shape[1:]))} float32 ({items.nbytes / 2**30:.1f} GiB, "
              f"memory-mapped), written in {time.perf_counter() - t:.0f} s")
        queries = trajectory(model, args.batch)[:: args.every]
        print(f"queries: {len(queries)} evaluations (every {args.every}) x {args.batch} samples of one digits trajectory; "
              f"r = {args.radius}, noise {args.noise}, cache margin {args.cache_margin}")
        t = time.perf_counter()
        protect.HALF_SPACES = args.half_spaces
        ivf = FaissProtected(tmp / "set.npy", nlist=args.nlist)
        build = time.perf_counter() - t
        print(f"IVF build (train, add, cell radii): {build:.0f} s, nlist {ivf.index.nlist}; peak RSS {rss_gb():.1f} GiB")
        searches = {"exhaustive": ExactProtected(load_reference_set(tmp / "set.npy"))}  # the run layer's memory map
        searches["exact IVF + cache"] = ivf.with_search(exact=True, cache_margin=args.cache_margin)
        searches["exact IVF"] = ivf.with_search(exact=True)
        for p in (1, 2, 3, 5, 10):
            searches[f"IVF {p} probe{'s' if p > 1 else ''}"] = ivf.with_search(nprobe=p)
        rows = {}
        for name, source in searches.items():
            seconds, active, cells = run(source, queries, args.radius)
            rows[name] = (seconds, active, cells, rss_gb())
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
          "peak RSS so far |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, (s, active, cells, rss) in rows.items():
        missed = (truth - active).clamp_min(0)
        c = "-" if (cells < 0).all() else f"{float(cells.mean()):.1f}"
        print(f"| {name} | {s:.4f} | {s / ex:.4f} | {s / ivf2:.2f} | {int(missed.sum())} | {int((missed > 0).sum())} | "
              f"{c} | {rss:.1f} GiB |")
    print(f"\nIVF build (shared by every IVF row): {build:.0f} s; exhaustive has no build")


if __name__ == "__main__":
    main()
