"""The built-in `digits` model's own analysis entry: classifier accuracy on generated digits, distances, grids.

    python -m spell_lab.experiments.digits [--guidance 1,1.5,2,3] [--per-class 100] [--steps N] [--out analysis/digits]

Per CFG weight: one sample per entry of 100 per class (seeds 0..999), no SPELL; the classifier's accuracy on them,
the within-class median distance (`spell_lab.calibration.median_within`: every within-class pair, classes pooled,
the radius calibration's statistic) and each class's own median, and the median distance to the nearest training
digit. Writes metrics.json and the grids (the default weight, no guidance, real digits) into --out.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path

import torch

from .. import cli
from ..calibration import median_within
from ..models.digits import CLASSIFIER_FILE, DigitsDenoiser, class_split, load_classifier, load_data, load_digits
from ..models.digits import read_weights


def within_class(x: torch.Tensor, labels: torch.Tensor) -> dict:
    """The pooled within-class median pairwise distance, and each class's own median (classes 0..9)."""
    return {"pooled": median_within(x, labels),
            "per_class": [median_within(x[labels == c], labels[labels == c]) for c in range(10)]}


def time_per_sample(model: DigitsDenoiser, batch: int, repeats: int = 20) -> float:
    """Seconds per sample of one denoiser evaluation (median over repeats)."""
    x, cond = torch.randn(batch, *model.sample_shape), torch.arange(batch) % 10
    times = []
    with torch.no_grad():
        model(x, torch.tensor(0.5), cond)
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(x, torch.tensor(0.5), cond)
            times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2] / batch


def save_grid(images: torch.Tensor, rows: int, path: Path) -> None:
    """uint8 (N, H, W, 3) -> one PNG, `rows` rows, 2-pixel grey gutters."""
    import matplotlib.image

    n, h, w, _ = images.shape
    cols, pad = n // rows, 2
    grid = torch.full((rows * (h + pad) + pad, cols * (w + pad) + pad, 3), 128, dtype=torch.uint8)
    for k in range(n):
        r, c = divmod(k, cols)
        grid[pad + r * (h + pad):pad + r * (h + pad) + h, pad + c * (w + pad):pad + c * (w + pad) + w] = images[k]
    path.parent.mkdir(parents=True, exist_ok=True)
    matplotlib.image.imsave(path, grid.numpy())


def nearest_distances(x: torch.Tensor, real: torch.Tensor, exclude_self: bool = False) -> torch.Tensor:
    """L2 distance of each x to its nearest real digit (excluding itself when x is the real set)."""
    d = torch.cdist(x.flatten(1).double(), real.flatten(1).double())
    if exclude_self:
        d.fill_diagonal_(math.inf)
    return d.min(1).values


def measure(model, clf, cond: torch.Tensor, guidance: float, steps: int, real) -> tuple[dict, torch.Tensor]:
    """Generate one sample per entry of `cond` (seeds 0..N-1) and measure it: accuracy, spread, closeness to data."""
    from ..samplers import generate

    t0 = time.perf_counter()
    x = generate(model, cond, list(range(len(cond))), sampler=model.default_sampler, steps=steps, guidance=guidance).x0
    with torch.no_grad():
        pred = clf(x).argmax(1)
    return {
        "accuracy": float((pred == cond).float().mean()),
        "per_class_accuracy": [float((pred[cond == c] == c).float().mean()) for c in range(10)],
        "within_class_median": within_class(x, cond),
        "nearest_training_distance_median": float(nearest_distances(x, real).median()),
        "seconds": time.perf_counter() - t0,
    }, x


def first_per_class(x: torch.Tensor, labels: torch.Tensor, n: int = 10) -> torch.Tensor:
    return torch.cat([x[labels == c][:n] for c in range(10)])


def grid_name(guidance: float, model: DigitsDenoiser) -> str:
    return "grid.png" if guidance == model.default_guidance else f"grid_w{guidance:g}.png"


def parse_weights(text: str) -> list[float]:
    try:
        weights = [float(g) for g in text.split(",")]
    except ValueError:
        raise ValueError(f"--guidance takes comma-separated numbers, e.g. 1,3 (got {text!r}).") from None
    if not all(math.isfinite(w) and w >= 0 for w in weights):
        raise ValueError(f"--guidance weights must be finite and >= 0 (got {text!r}); 1 is no guidance.")
    return weights


def evaluate(args) -> dict:
    """Real-data reference figures, then one measurement per guidance weight; grids at the default weight and w = 1."""
    torch.set_num_threads(args.threads)
    model, clf = load_digits(), load_classifier()
    steps, out_dir = args.steps or model.default_steps, Path(args.out)
    v, labels = load_data()
    real = model.space.encode(v)
    meta = read_weights(CLASSIFIER_FILE)[1]
    _, heldout = class_split(labels, meta.get("holdout", 0.2), meta["seed"])
    with torch.no_grad():
        real_acc = float((clf(real[heldout]).argmax(1) == labels[heldout]).float().mean())
    report = {
        "command": "python -m spell_lab.experiments.digits " + " ".join(sys.argv[1:]),
        "sampler": model.default_sampler, "steps": steps, "per_class": args.per_class, "scale": model.cfg.scale,
        "default_guidance": model.default_guidance, "params": sum(p.numel() for p in model.net.parameters()),
        "ms_per_sample": {b: 1e3 * time_per_sample(model, b) for b in (32, 256)}, "load_average": os.getloadavg(),
        "real": {"n": len(real), "within_class_median": within_class(real, labels),
                 "nearest_other_distance_median": float(nearest_distances(real, real, exclude_self=True).median()),
                 "classifier_heldout_accuracy": real_acc, "heldout_n": len(heldout)},
        "guidance": {},
    }
    cond = torch.arange(10).repeat_interleave(args.per_class)
    for w in parse_weights(args.guidance):
        report["guidance"][str(w)], x = measure(model, clf, cond, w, steps, real)
        print(f"guidance {w:g}: accuracy {report['guidance'][str(w)]['accuracy']:.3f}, within-class median "
              f"{report['guidance'][str(w)]['within_class_median']['pooled']:.1f} "
              f"(real {report['real']['within_class_median']['pooled']:.1f})", flush=True)
        if w in (1.0, model.default_guidance):  # the default weight, and no guidance for comparison
            save_grid(model.space.to_images(first_per_class(x, cond)), 10, out_dir / grid_name(w, model))
    save_grid(model.space.to_images(first_per_class(real, labels)), 10, out_dir / "grid_real.png")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "metrics.json").write_text(json.dumps(report, indent=1))
    print(f"wrote {out_dir / 'metrics.json'}")
    return report


def evaluation_parser(module: str, doc: str, *, guidance: str, out: str, threads: int):
    """The flags a built-in model's evaluation command shares (this one, experiments.fashion)."""
    e = cli.parser(f"python -m {module}", doc.split("\n")[0])
    e.add_argument("--per-class", type=int, default=100)
    e.add_argument("--guidance", type=str, default=guidance, help="comma-separated CFG weights (1 = no guidance)")
    e.add_argument("--steps", type=int | None, default=None, help="sampler steps (default: the model's)")
    e.add_argument("--out", type=str, default=out)
    e.add_argument("--threads", type=int, default=threads)
    return e


def parser():
    return evaluation_parser("spell_lab.experiments.digits", __doc__, guidance="1,1.5,2,3", out="analysis/digits",
                             threads=2)


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    if args.per_class < 2:
        raise ValueError(f"--per-class must be >= 2 for a within-class distance (got {args.per_class}).")
    parse_weights(args.guidance)
    cli.check_writable_dir(args.out)  # before minutes of sampling
    evaluate(args)
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
