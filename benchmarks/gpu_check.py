"""The CUDA paths in one short run, for a session that is lent a GPU (prints what goes into benchmarks/README.md).

    python benchmarks/gpu_check.py                 # on CUDA where there is one, else the same checks on the CPU

1. Host syncs in the sampler loop: every method (plain, SPELL intra-batch + memory, PG, interval guidance, CADS) on
   the digits model under `torch.cuda.set_sync_debug_mode("warn")`, at two step counts. Setup and the final
   `records` transfer may sync; the loop must not, so the sync count may not grow with the steps.
2. bf16 and fp16 on a tiny Stable Diffusion pipeline (random weights, no download) with SPELL intra-batch: outputs
   finite, distance to the float32 run.
3. The protected-set search: `FaissProtected(exact=True)` on device tensors (faiss-gpu k-NN where faiss has GPUs)
   against the exhaustive `ExactProtected` on the CPU: the same active counts, delta to 1e-5, nearest below r.
4. The benchmark figures: bench_correction and bench_methods at a short size (their own output).

On a machine without CUDA, check 1 has no sync counter and says so; the rest runs on the CPU, so the script itself is
exercised here. Nothing downloads.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
METHODS = {
    "plain": None,
    "spell intra+memory": {"name": "spell", "radius": 25.0, "overcomp": 1.6, "intra_batch": True, "memory": True},
    "pg": {"name": "pg", "strength": 2.0},
    "interval": {"name": "interval", "sigma_hi": 5.0},
    "cads": {"name": "cads", "noise_scale": 0.5},
}


def syncs_during(fn) -> int:
    """Synchronising CUDA calls `fn` makes (0 counted off CUDA)."""
    if not torch.cuda.is_available():
        fn()
        return 0
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fn()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def check_sampler_syncs(device) -> bool:
    from spell_lab.methods import resolve
    from spell_lab.models import load_model
    from spell_lab.samplers import generate

    model = load_model("digits", device=device)
    cond = torch.tensor([3] * 4 + [5] * 4, device=device)
    ok = True
    print(f"\n1. host syncs per generation (digits, batch 8, {device}); the count must not grow with the steps")
    for label, method in METHODS.items():
        counts = []
        for steps in (5, 10):
            hooks = None if method is None else resolve(method)
            out = {}
            counts.append(syncs_during(lambda: out.setdefault("g", generate(model, cond, list(range(8)), steps=steps,
                                                                             method=hooks, device=device))))
            if hooks is not None:
                hooks.end_round(out["g"].x0, cond)
        grows = counts[1] > counts[0]
        ok &= not grows
        note = "" if torch.cuda.is_available() else "  (no CUDA: not counted)"
        print(f"   {label:<20} syncs at 5 / 10 steps: {counts[0]} / {counts[1]}  {'GROWS' if grows else 'ok'}{note}")
    return ok


def check_half_precision(device) -> bool:
    sys.path.insert(0, str(ROOT / "tests"))
    from diffusers import DDIMScheduler
    from test_diffusers import tiny_sd  # the tests' tiny pipeline with random weights

    from diffusers.utils import logging as diffusers_logging

    from spell_lab.diffusers.pipelines import generate_pipeline

    diffusers_logging.set_verbosity_error()  # the tiny configs' deprecation notes are not what this check reports
    warnings.filterwarnings("ignore", category=FutureWarning)

    print(f"\n2. tiny Stable Diffusion with SPELL intra-batch (r = 2) in reduced precision ({device})")
    pipe, prompts = tiny_sd(DDIMScheduler())
    ref = None
    ok = True
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        if dtype == torch.float16 and torch.device(device).type == "cpu":
            print("   float16: skipped on the CPU (half convolutions are a CUDA path)")
            continue
        p = pipe.to(device, dtype)
        kw = {k: v.to(device, dtype) for k, v in prompts.items()}
        start = time.perf_counter()
        gen = generate_pipeline(p, None, [0, 1], steps=6, guidance=2.0, spell_kwargs={"radius": 2.0},
                                decode=False, output_type="latent", **kw)
        seconds = time.perf_counter() - start
        x = gen.x0.float().cpu()
        ref = x if ref is None else ref
        finite = bool(torch.isfinite(x).all())
        ok &= finite
        print(f"   {str(dtype):<15} finite {finite}, max |x - x_float32| {float((x - ref).abs().max()):.3g}, "
              f"{seconds:.2f} s")
    return ok


def check_faiss(device) -> bool:
    from spell_lab.protect import FaissProtected
    from spell_lab.repellency import ExactProtected

    print(f"\n3. FaissProtected(exact=True) on {device} tensors against the exhaustive search on the CPU")
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(40, 64, generator=g) * 6
    items = centers[torch.randint(40, (8000,), generator=g)] + torch.randn(8000, 64, generator=g)
    queries = items[torch.randint(8000, (32,), generator=g)] + 0.3 * torch.randn(32, 64, generator=g)
    exact, index = ExactProtected(items), FaissProtected(items, exact=True, device=device)
    ok = True
    for radius in (2.5, 6.0, 12.0):  # near-duplicates only, then shields reaching into the clusters
        a = exact(queries, radius, 1.0, None)
        b = index(queries.to(device), radius, 1.0, None)
        same_active = torch.equal(a.active, b.active.cpu())
        rel = float((a.delta - b.delta.cpu()).norm() / a.delta.norm().clamp_min(1e-12))
        below = a.nearest < radius
        nearest = bool(torch.allclose(a.nearest[below], b.nearest.cpu()[below], rtol=1e-5))
        ok &= same_active and rel < 1e-5 and nearest
        print(f"   r = {radius}: active equal {same_active}, delta rel. error {rel:.2e}, nearest below r equal {nearest}, "
              f"cells / query {float(b.cells_probed.float().mean()):.1f}")
    return ok


def run_benchmarks() -> None:
    print("\n4. benchmark figures (short)")
    for cmd in (["benchmarks/bench_correction.py"], ["benchmarks/bench_methods.py", "--repeats", "3"]):
        print(f"   $ python {' '.join(cmd)}", flush=True)
        subprocess.run([sys.executable, *cmd], cwd=ROOT, check=False)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--no-benchmarks", action="store_true", help="skip step 4")
    args = p.parse_args(argv)
    name = torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA"
    print(f"gpu_check on {args.device} ({name}), torch {torch.__version__}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    results = {"sampler syncs": check_sampler_syncs(args.device), "half precision": check_half_precision(args.device),
               "faiss": check_faiss(args.device)}
    if not args.no_benchmarks:
        run_benchmarks()
    print("\nsummary: " + ", ".join(f"{k} {'ok' if v else 'FAILED'}" for k, v in results.items()))
    return 0 if all(results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
