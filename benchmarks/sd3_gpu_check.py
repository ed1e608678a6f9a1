"""GPU check: Stable Diffusion 3 with and without SPELL, time per image for both, measured side by side.

    python benchmarks/sd3_gpu_check.py                       # SD3 medium from the Hugging Face cache
    python benchmarks/sd3_gpu_check.py --model /models/sd3 --images 4 --steps 28 --no-t5

Runs only where CUDA and the cached model exist; otherwise it prints why and exits 0 (nothing is downloaded).
For each prompt, with the same seeds: the plain pipeline (the baseline), SpellScheduler at radius 0 (SPELL's
bookkeeping only: distances and records; its images must equal the baseline's), then SPELL with intra-batch
repellency at the paper's calibration (Appendix D): the median pairwise distance of the radius-0 run's final latents
within the prompt, times --radius-scale. fp16; timings include the VAE decode and follow a warm-up run, with the GPU
synchronised around each batch.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

PROMPTS = [
    "a photo of a red fox in the snow",
    "an oil painting of a lighthouse at dusk",
    "a bowl of ramen on a wooden table, studio lighting",
]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="stabilityai/stable-diffusion-3-medium-diffusers", help="hub id or directory")
    p.add_argument("--prompts", nargs="+", default=PROMPTS)
    p.add_argument("--images", type=int, default=4, help="images per prompt (one batch)")
    p.add_argument("--steps", type=int, default=28)
    p.add_argument("--guidance", type=float, default=7.0)
    p.add_argument("--size", type=int, default=1024, help="height = width in pixels")
    p.add_argument("--radius-scale", type=float, default=1.0, help="radius = scale x median pairwise distance")
    p.add_argument("--no-t5", action="store_true", help="load without the T5 text encoder (less memory)")
    return p.parse_args(argv)


def synced(fn):
    """Run fn() with the GPU synchronised before and after; returns (result, seconds)."""
    torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    torch.cuda.synchronize()
    return out, time.perf_counter() - start


def main(argv=None) -> int:
    args = parse_args(argv)
    if not torch.cuda.is_available():
        print("sd3_gpu_check: no CUDA device here; nothing to measure (run it on a GPU machine).")
        return 0
    from spell_lab.diffusers import ModelNotAvailable, generate_pipeline, load_pipeline

    extra = dict(text_encoder_3=None, tokenizer_3=None) if args.no_t5 else {}
    try:
        pipe = load_pipeline(args.model, device="cuda", dtype=torch.float16, **extra)
    except ModelNotAvailable as e:
        print(f"sd3_gpu_check: {e}")
        return 0
    pipe.set_progress_bar_config(disable=True)
    n = args.images
    common = dict(steps=args.steps, guidance=args.guidance, height=args.size, width=args.size)
    print(f"{type(pipe).__name__} {args.model} on {torch.cuda.get_device_name()}: {len(args.prompts)} prompts x "
          f"{n} images, {args.steps} steps, guidance {args.guidance}, {args.size}px, fp16")

    generate_pipeline(pipe, [args.prompts[0]] * 2, [0, 1], **{**common, "steps": 2})  # warm-up: kernels, allocator
    totals = {"baseline": 0.0, "radius 0": 0.0, "SPELL": 0.0}
    for i, prompt in enumerate(args.prompts):
        seeds = [1000 * i + j for j in range(n)]
        plain, t_plain = synced(lambda: plain_images(pipe, prompt, seeds, args))
        zero, t_zero = synced(lambda: generate_pipeline(pipe, [prompt] * n, seeds, **common))
        radius = args.radius_scale * float(torch.pdist(zero.x0.flatten(1)).median())
        spell_kwargs = dict(radius=radius, intra_batch=True)
        gen, t_spell = synced(lambda: generate_pipeline(pipe, [prompt] * n, seeds, spell_kwargs=spell_kwargs, **common))
        for key, t in zip(totals, (t_plain, t_zero, t_spell)):
            totals[key] += t
        report(prompt, radius, zero, gen, (zero.images == plain).all(), (t_plain / n, t_zero / n, t_spell / n))
    per_image = {k: v / (n * len(args.prompts)) for k, v in totals.items()}
    print("time per image: " + ", ".join(f"{k} {v:.3f} s" for k, v in per_image.items()) +
          f"; ratio SPELL/baseline {totals['SPELL'] / totals['baseline']:.3f}, "
          f"radius 0/baseline {totals['radius 0'] / totals['baseline']:.3f}")
    return 0


def plain_images(pipe, prompt, seeds, args):
    """The unwrapped pipeline with the same per-sample generators, as uint8 images."""
    gens = [torch.Generator("cpu").manual_seed(s) for s in seeds]
    out = pipe(prompt=[prompt] * len(seeds), num_inference_steps=args.steps, guidance_scale=args.guidance,
               height=args.size, width=args.size, generator=gens, output_type="np")
    return (out.images.clip(0, 1) * 255).round().astype("uint8")


def report(prompt, radius, zero, gen, identical, seconds) -> None:
    r = gen.records
    active = r["active_shields"] > 0
    rel = r["relative_magnitude"][active]
    closest = lambda x: float(torch.pdist(x.flatten(1)).min())  # noqa: E731
    print(f"- {prompt!r}: s/image baseline {seconds[0]:.3f}, radius 0 {seconds[1]:.3f}, SPELL {seconds[2]:.3f}; "
          f"radius-0 images equal the baseline's: {bool(identical)}; radius {radius:.1f}: active at "
          f"{float(active.float().mean()):.1%} of (image, step), {int(active.any(1).sum())}/{active.shape[0]} images "
          f"intervened, median relative magnitude {float(rel.median()) if rel.numel() else float('nan'):.3g}; "
          f"closest pair {closest(zero.x0):.1f} -> {closest(gen.x0):.1f}")


if __name__ == "__main__":
    sys.exit(main())
