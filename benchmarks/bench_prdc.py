"""spell_lab.metrics.prdc against the `prdc` package (0.2) on the same features: time ratio, identical results, peak memory.

    python benchmarks/bench_prdc.py                       # 10,000 x 512 real and fake, k = 5
    python benchmarks/bench_prdc.py --n 50000 --d 2048 --no-reference   # scale: ours only (the package needs 30 GB)

Each implementation runs in its own subprocess (the same seeded float32 Gaussian features), alternating
ours / package `--rounds` times, so machine load hits both alike; the ratio is of the median wall times. The CPU
seconds (user + system) are printed too: on a shared machine they show the work, which the wall time blurs. Peak
memory is the subprocess's peak resident set size (ru_maxrss) minus its size once the features exist.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import numpy as np


def features(n: int, d: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    real = rng.standard_normal((n, d), dtype=np.float32)
    fake = 1.05 * rng.standard_normal((n, d), dtype=np.float32) + 0.05  # a slightly wider, shifted "model"
    return real, fake


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def cpu_s() -> float:
    u = resource.getrusage(resource.RUSAGE_SELF)
    return u.ru_utime + u.ru_stime


def worker(impl: str, n: int, d: int, k: int, seed: int) -> dict:
    real, fake = features(n, d, seed)
    if impl == "ours":
        from spell_lab.metrics import prdc

        fn = lambda: prdc(real, fake, k=k)  # noqa: E731
    else:
        import contextlib
        import io

        from prdc import compute_prdc

        def fn():
            with contextlib.redirect_stdout(io.StringIO()):  # it prints the sample counts
                return {key: float(v) for key, v in compute_prdc(real, fake, k).items()}

    base, cpu = rss_mb(), cpu_s()
    t = time.perf_counter()
    out = fn()
    return dict(seconds=time.perf_counter() - t, cpu=cpu_s() - cpu, result=out, peak_mb=rss_mb() - base, base_mb=base)


def run(impl: str, args) -> dict:
    cmd = [sys.executable, __file__, "--worker", impl, "--n", str(args.n), "--d", str(args.d), "--k", str(args.k),
           "--seed", str(args.seed)]
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=10_000, help="real and fake samples each")
    p.add_argument("--d", type=int, default=512, help="feature width")
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rounds", type=int, default=3, help="alternating runs of each implementation")
    p.add_argument("--no-reference", action="store_true", help="time ours only (for sizes the package cannot hold)")
    p.add_argument("--worker", choices=["ours", "package"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.n, args.d, args.k, args.seed)))
        return

    impls = ["ours"] if args.no_reference else ["ours", "package"]
    runs = {impl: [] for impl in impls}
    print(f"prdc on {args.n} x {args.d} real and fake float32 features, k={args.k}; {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}")
    for r in range(args.rounds):
        for impl in impls:
            runs[impl].append(run(impl, args))
            x = runs[impl][-1]
            print(f"  round {r + 1} {impl:8s} {x['seconds']:7.2f} s wall {x['cpu']:7.2f} s CPU  peak +{x['peak_mb']:.0f} MB"
                  f"  (load {os.getloadavg()[0]:.1f})")
    med = {impl: statistics.median(x["seconds"] for x in v) for impl, v in runs.items()}
    cpu = {impl: statistics.median(x["cpu"] for x in v) for impl, v in runs.items()}
    peak = {impl: max(x["peak_mb"] for x in v) for impl, v in runs.items()}
    ours = runs["ours"][0]["result"]
    print(f"ours     median {med['ours']:.2f} s ({cpu['ours']:.2f} s CPU), peak memory +{peak['ours']:.0f} MB: {ours}")
    if "package" in runs:
        ref = runs["package"][0]["result"]
        diff = max(abs(ours[key] - ref[key]) for key in ref)
        print(f"package  median {med['package']:.2f} s ({cpu['package']:.2f} s CPU), peak memory +{peak['package']:.0f} MB: {ref}")
        print(f"ratio {med['package'] / med['ours']:.1f}x faster (wall), {cpu['package'] / cpu['ours']:.1f}x less CPU; "
              f"max |difference| {diff:.1e} ({'identical' if diff == 0 else 'DIFFERENT'})")


if __name__ == "__main__":
    main()
