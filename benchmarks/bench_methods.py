"""Each method's overhead per denoiser evaluation against the plain sampler, on the digits model, side by side.

    python benchmarks/bench_methods.py [--batch 8] [--steps 20] [--repeats 7]

Times are this process's CPU time (one thread, as the run layer uses on CPU): on a shared machine other processes'
load inflates wall times, not the CPU time of a single-threaded process.
(a) Whole generations (one condition, `batch` samples, the model's sampler and CFG weight, recording on), every
method interleaved with the plain sampler in each repeat; per method the best CPU time per denoiser evaluation
over the repeats (load only adds time) and its ratio to the plain sampler's. Interval guidance runs w = 1 (half the
network batch) outside its interval, so it can be cheaper than the plain sampler.
(b) Particle guidance's kernel alone (`particle_guidance` on x_t at sigma/alpha = 2, and the intervention the
sampler calls, which keeps the condition groups over a run) against one guided denoiser call at the same batch,
each run straight after a denoiser call as in the sampler (issue target: under 3%).
"""

from __future__ import annotations

import argparse
import time

import torch

from spell_lab.methods import ParticleGuidance, particle_guidance, resolve
from spell_lab.models import load_model
from spell_lab.models.base import guided_x0
from spell_lab.samplers import generate

METHODS = {  # label -> method (plain data); None: the plain sampler
    "plain": None,
    "cfg w=3": {"name": "cfg", "weight": 3.0},
    "interval (0.28, 5.42]": {"name": "interval", "sigma_lo": 0.28, "sigma_hi": 5.42},
    "spell r=25 intra": {"name": "spell", "radius": 25.0, "intra_batch": True},
    "spell r=25 intra, w=3": {"name": "spell", "radius": 25.0, "intra_batch": True, "weight": 3.0},
    "pg strength 1": {"name": "pg", "strength": 1.0},
    "cads (defaults)": {"name": "cads"},
}


def per_evaluation(model, method, cond, seeds, steps) -> float:
    hooks = None if method is None else resolve(method)
    t = time.process_time()
    out = generate(model, cond, seeds, steps=steps, method=hooks)
    return (time.process_time() - t) / out.records["t"].numel()


def after_calls(call, fns: dict, n: int) -> dict:
    """Best CPU time of `call` and of each callable, each run straight after a `call` (as the sampler runs an
    intervention after the denoiser: same cache state), n rounds in turn (load hits all alike; load only adds time)."""
    times = {k: [] for k in ("call", *fns)}
    for _ in range(n + 1):
        for k, fn in fns.items():
            for name, f in (("call", call), (k, fn)):
                t = time.process_time()
                f()
                times[name].append(time.process_time() - t)
    return {k: min(v[2:]) for k, v in times.items()}  # the first round warms up


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    torch.set_num_threads(1)  # as the run layer does on CPU
    model = load_model("digits")
    cond, seeds = torch.full((args.batch,), 3), list(range(args.batch))
    times = {label: [] for label in METHODS}
    with torch.no_grad():
        for label, m in METHODS.items():  # warm-up
            per_evaluation(model, m, cond, seeds, 2)
        for _ in range(args.repeats):  # interleaved: the machine's load hits every method alike
            for label, m in METHODS.items():
                times[label].append(per_evaluation(model, m, cond, seeds, args.steps))
        x = torch.randn(args.batch, *model.sample_shape, generator=torch.Generator().manual_seed(0))
        t = torch.tensor(0.5)
        hook = ParticleGuidance(1.0)  # what the sampler calls: groups computed once per run
        cost = after_calls(lambda: guided_x0(model, x, t, cond, model.default_guidance), {
            "kernel": lambda: particle_guidance(x, cond, 1.0, 2.0),
            "hook": lambda: hook(x, cond, x_t=x, alpha=0.5, sigma=1.0),
        }, 300)
    base = min(times["plain"])
    print(f"digits, sampler {model.default_sampler}, batch {args.batch}, {args.steps} steps, "
          f"CFG w = {model.default_guidance}, recording on, 1 thread, best of {args.repeats}")
    print(f"{'method':24s} {'CPU ms / evaluation':>20s} {'ratio to plain':>15s}")
    for label in METHODS:
        med = min(times[label])
        print(f"{label:24s} {1e3 * med:20.3f} {med / base:15.3f}")
    call = cost["call"]
    print(f"guided denoiser call, CPU time (batch {args.batch}, w = {model.default_guidance}): {1e3 * call:.3f} ms")
    for k, what in (("kernel", "particle_guidance(x_t, cond, ...)"), ("hook", "the pg intervention (x0_hat + change)")):
        print(f"{what}, batch {args.batch}, D = {x[0].numel()}: {1e3 * cost[k]:.3f} ms = "
              f"{100 * cost[k] / call:.2f}% of a denoiser call (target < 3%)")

if __name__ == "__main__":
    main()
