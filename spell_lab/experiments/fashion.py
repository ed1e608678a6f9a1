"""The built-in `fashion` model's own analysis entry: classifier accuracy, FD and spread of generated images against
held-out ones per CFG weight, and image grids.

    python -m spell_lab.experiments.fashion [--guidance 1,1.5,2,3,4] [--per-class 100] [--data DIR] [--out analysis/fashion]

Per CFG weight: `per-class` samples of each class (seeds 0..N-1, DDIM 50 steps, no SPELL). The shipped classifier's
accuracy on the decoded images (overall and per class), the Fréchet distance of their features to the held-out
images' (all classes pooled, and the mean of the per-class FDs), precision and recall (k = 5, pooled), and the
within-class median distance in the diffusion space (the radius calibration's statistic). Held-out images: the whole
test set when the dataset is installed (or --data names it), else the shipped stratified part; the report says which.
Writes metrics.json and the grids (10 per class: one per weight, the real images, their VAE reconstructions).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from .. import cli
from ..models import fashion as fm
from .digits import evaluation_parser, first_per_class, parse_weights, save_grid, within_class


def _accuracy(pred: torch.Tensor, labels: torch.Tensor) -> dict:
    return {"accuracy": float((pred == labels).float().mean()),
            "per_class_accuracy": [float((pred[labels == c] == c).float().mean()) for c in range(fm.NUM_CLASSES)]}


def _quality(feats: torch.Tensor, labels: torch.Tensor, real_feats: torch.Tensor, real_labels: torch.Tensor) -> dict:
    from ..metrics import frechet_distance, prdc

    per_class = [frechet_distance(real_feats[real_labels == c], feats[labels == c]) for c in range(fm.NUM_CLASSES)]
    p = prdc(real_feats, feats, k=5)
    return {"fd_pooled": float(frechet_distance(real_feats, feats)), "fd_per_class_mean": float(np.mean(per_class)),
            "fd_per_class": [float(v) for v in per_class], "precision": float(p["precision"]),
            "recall": float(p["recall"])}


def evaluate(args) -> dict:
    from ..models.fashion_data import heldout
    from ..samplers import generate

    torch.set_num_threads(args.threads)
    net = fm.latent_classifier()
    model, out_dir = net.model, Path(args.out)
    steps = args.steps or model.default_steps
    images, labels, which = heldout(args.data)
    real_images, real_labels = fm.pad_images(images), torch.from_numpy(labels)
    with torch.no_grad():
        real_x = torch.cat([model.encode(real_images[i:i + 500]) for i in range(0, len(real_images), 500)])
        real_pred = torch.cat([net.classifier(real_images[i:i + 500]).argmax(1) for i in range(0, len(labels), 500)])
        recon_pred = torch.cat([net(real_x[i:i + 500]).argmax(1) for i in range(0, len(labels), 500)])
        real_feats = torch.cat([net.features(real_x[i:i + 500]) for i in range(0, len(labels), 500)])
    info = fm.read_info()
    report = {
        "command": "python -m spell_lab.experiments.fashion " + " ".join(sys.argv[1:]),
        "heldout": which, "sampler": model.default_sampler, "steps": steps, "per_class": args.per_class,
        "scaling_factor": model.scaling_factor, "default_guidance": model.default_guidance,
        "params": {"transformer": sum(p.numel() for p in model.transformer.parameters()),
                   "vae": sum(p.numel() for p in model.vae.parameters()),
                   "classifier": sum(p.numel() for p in net.classifier.parameters())},
        "training": info.get("training", {}), "load_average": os.getloadavg(),
        "real": {"n": len(labels), "classifier": _accuracy(real_pred, real_labels),
                 "classifier_on_vae_reconstructions": _accuracy(recon_pred, real_labels),
                 "within_class_median": within_class(real_x, real_labels)},
        "guidance": {},
    }
    print(f"held-out: {which}; classifier accuracy {report['real']['classifier']['accuracy']:.4f} (real), "
          f"{report['real']['classifier_on_vae_reconstructions']['accuracy']:.4f} (VAE reconstructions)", flush=True)
    cond = torch.arange(fm.NUM_CLASSES).repeat_interleave(args.per_class)
    for w in parse_weights(args.guidance):
        t0 = time.perf_counter()
        x = generate(model, cond, list(range(len(cond))), steps=steps, guidance=w, record=False).x0
        with torch.no_grad():
            pred = torch.cat([net(x[i:i + 500]).argmax(1) for i in range(0, len(x), 500)])
            feats = torch.cat([net.features(x[i:i + 500]) for i in range(0, len(x), 500)])
        row = _accuracy(pred, cond) | _quality(feats, cond, real_feats, real_labels) | {
            "within_class_median": within_class(x, cond), "seconds": time.perf_counter() - t0}
        report["guidance"][str(w)] = row
        print(f"guidance {w:g}: accuracy {row['accuracy']:.3f} (lowest class {min(row['per_class_accuracy']):.3f}), "
              f"FD {row['fd_pooled']:.2f}, precision {row['precision']:.3f}, recall {row['recall']:.3f}, "
              f"within-class median {row['within_class_median']['pooled']:.1f} "
              f"(real {report['real']['within_class_median']['pooled']:.1f})", flush=True)
        save_grid(model.to_images(first_per_class(x, cond)), fm.NUM_CLASSES, out_dir / f"grid_w{w:g}.png")
    save_grid(model.to_images(first_per_class(real_x, real_labels)), fm.NUM_CLASSES, out_dir / "grid_real_vae.png")
    real_uint8 = fm.to_uint8(first_per_class(real_images, real_labels))
    save_grid(real_uint8, fm.NUM_CLASSES, out_dir / "grid_real.png")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "metrics.json").write_text(json.dumps(report, indent=1))
    print(f"wrote {out_dir / 'metrics.json'} and the grids")
    return report


def parser():
    e = evaluation_parser("spell_lab.experiments.fashion", __doc__, guidance="1,1.5,2,3,4", out="analysis/fashion",
                          threads=1)
    e.add_argument("--data", type=str | None, default=None, help="directory of the Fashion-MNIST IDX files (default: Debian's)")
    return e


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    if args.per_class < 6:
        raise ValueError(f"--per-class must be >= 6 for per-class precision/recall (got {args.per_class}).")
    if args.threads < 1 or (args.steps is not None and args.steps < 1):
        raise ValueError("--threads and --steps must be >= 1.")
    cli.check_writable_dir(args.out)  # before minutes of sampling
    evaluate(args)
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
