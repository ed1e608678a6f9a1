"""SPELL correction cost, side by side with a ~1M-parameter UNet forward, and the chunked correction's peak memory.

    python benchmarks/bench_correction.py

Prints ratios measured in one run (issue: the correction for B = 8 against 64 memory items plus intra-batch,
D = 4096, should cost < 3% of one UNet forward at batch 8; K = 100,000 centers at D = 1024 should stay < 1 GB extra).
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time

import torch


def best_of(fn, repeats=20):
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def correction_vs_unet():
    from diffusers import UNet2DModel

    from spell_lab.repellency import IntraBatch, Memory, Spell

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=32, in_channels=4, out_channels=4, block_out_channels=(32, 64, 64),
                       layers_per_block=1, down_block_types=("DownBlock2D",) * 3, up_block_types=("UpBlock2D",) * 3,
                       norm_num_groups=8).eval()
    params = sum(p.numel() for p in unet.parameters())
    x = torch.randn(8, 4, 32, 32)  # D = 4096
    t = torch.full((8,), 500)
    spell = Spell(20.0, 1.0, [IntraBatch(), Memory(torch.randn(64, 4, 32, 32), torch.zeros(64, dtype=torch.long))])
    cond = torch.zeros(8, dtype=torch.long)
    with torch.no_grad():
        t_unet = best_of(lambda: unet(x, t))
        t_spell = best_of(lambda: spell(x, cond), repeats=100)
    return dict(unet_params=params, unet_forward_ms=1e3 * t_unet, correction_ms=1e3 * t_spell, ratio=t_spell / t_unet)


def _peak_child():
    from spell_lab.repellency import correction

    x, z = torch.randn(8, 1024), torch.randn(100_000, 1024)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.perf_counter()
    c = correction(x, z, 45.0)
    seconds = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps(dict(extra_peak_mb=(after - before) / 1024, seconds=seconds, inputs_mb=z.numel() * 4 / 2**20,
                          active_mean=float(c.active.float().mean()))))


def chunked_memory():
    out = subprocess.run([sys.executable, __file__, "--peak-child"], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    if "--peak-child" in sys.argv:
        _peak_child()
        sys.exit(0)
    for threads in (2, 1):  # 1 is what the run layer uses per CPU process; 2 is torch's default on this machine
        torch.set_num_threads(threads)
        a = correction_vs_unet()
        print(f"[{threads} thread(s)] UNet ({a['unet_params'] / 1e6:.2f}M params) forward, batch 8, D=4096: "
              f"{a['unet_forward_ms']:.2f} ms; SPELL correction, B=8, K=64 memory + intra-batch: "
              f"{a['correction_ms']:.3f} ms; ratio {a['ratio'] * 100:.2f}%  (target < 3%)")
    m = chunked_memory()
    print(f"chunked correction, K=100,000, D=1024: extra peak memory {m['extra_peak_mb']:.0f} MB "
          f"(inputs {m['inputs_mb']:.0f} MB, target < 1024 MB), {m['seconds']:.2f} s")
