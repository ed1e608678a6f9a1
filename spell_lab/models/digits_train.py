"""Training the built-in `digits` model and its classifier (seeded), the shipped weights' command:

    python -m spell_lab.models.digits_train [--steps 5000] [--scale S] [--threads 1] [--out DIR | --into-package]

The weights go to --out (default runs/digits_train/weights); the package's own folder is written only with
--into-package (the shipped weights' command). Both files are trained in a temporary folder beside the target and
moved into place at the end, so a failed or interrupted training leaves the target as it was.
The model and its space are in `spell_lab.models.digits`; nothing here samples.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .. import cli
from .base import NULL_CONDITION
from .digits import (CLASSIFIER_FILE, MODEL_FILE, WEIGHTS_DIR, DigitsClassifier, DigitsConfig, DigitsDenoiser,
                     class_split, load_data, save_weights, upsample_matrix)

def data_scaling(resolution: int) -> tuple[float, float]:
    """Global mean and std of the upsampled dataset (computed in float64): one scalar each, like SD's scale factor."""
    v, _ = load_data()
    A = upsample_matrix(resolution)
    x = v.reshape(-1, 64).double() @ A.T
    return float(x.mean()), float(x.std())


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    for pe, pm in zip(ema.parameters(), model.parameters()):
        pe.lerp_(pm, 1 - decay)


@dataclass
class TrainReport:
    steps: int
    seconds: float
    losses: list[float] = field(default_factory=list)  # mean loss per logging window


def train_denoiser(
    cfg: DigitsConfig, steps: int, batch: int = 256, lr: float = 1e-3, seed: int = 0, log_every: int = 500, log=print
) -> tuple[DigitsDenoiser, DigitsDenoiser, TrainReport]:
    """Train on all 1797 digits: t ~ U(0, 1) on the VP schedule, EDM-weighted loss, label dropout, EMA."""
    torch.manual_seed(seed)
    cfg.mean, cfg.std = data_scaling(cfg.resolution)
    model = DigitsDenoiser(cfg)
    v, labels = load_data()
    w0 = model.space.pixels_to_w(v)
    cfg.sigma_data = float(w0.pow(2).mean().sqrt())
    ema = DigitsDenoiser(cfg)
    ema.load_state_dict(model.state_dict())
    ema.requires_grad_(False).eval()
    opt = torch.optim.AdamW(model.net.parameters(), lr=lr, weight_decay=0.0)
    warmup = min(200, max(steps // 10, 1))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: min(1.0, (i + 1) / warmup) * (0.1 + 0.9 * (1 - i / steps)))
    g = torch.Generator().manual_seed(seed)
    report, window, t0 = TrainReport(steps, 0.0), [], time.perf_counter()
    model.train()
    for step in range(steps):
        idx = torch.randint(len(w0), (batch,), generator=g)
        loss = denoiser_loss(model, w0[idx], labels[idx], cfg.p_uncond, g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step(), sched.step()
        ema_update(ema, model, min(0.999, (1 + step) / (10 + step)))
        window.append(loss.item())
        if (step + 1) % log_every == 0 or step + 1 == steps:
            report.losses.append(sum(window) / len(window))
            log(f"denoiser step {step + 1}/{steps}  loss {report.losses[-1]:.4f}  {time.perf_counter() - t0:.0f}s")
            window = []
    report.seconds = time.perf_counter() - t0
    return model.eval(), ema, report


def denoiser_loss(model: DigitsDenoiser, w0: torch.Tensor, labels: torch.Tensor, p_uncond: float, g) -> torch.Tensor:
    """EDM's loss lambda(s) ||D(w0 + s n) - w0||^2, lambda = 1/c_out^2 (unit-scale target for the network)."""
    B, sd = w0.shape[0], model.cfg.sigma_data
    t = torch.rand(B, generator=g).clamp_min(1e-3)
    alpha, sigma = model.schedule.alpha_sigma(t)
    s = (sigma / alpha).float()
    y = w0 + s[:, None, None, None] * torch.randn(w0.shape, generator=g)
    cond = torch.where(torch.rand(B, generator=g) < p_uncond, torch.full_like(labels, NULL_CONDITION), labels)
    weight = (s**2 + sd**2) / (s * sd) ** 2
    return (weight[:, None, None, None] * (model.denoise_w(y, s, cond) - w0) ** 2).mean()


def train_classifier(
    resolution: int, mean: float, std: float, steps: int, batch: int = 128, seed: int = 0, holdout: float = 0.2,
    log=print,
) -> tuple[DigitsClassifier, dict]:
    """Train on a seeded 80% split with pixel noise augmentation; report the held-out accuracy."""
    torch.manual_seed(seed)
    clf = DigitsClassifier(resolution, mean, std)
    v, labels = load_data()
    train, test = class_split(labels, holdout, seed)
    u = ((v - mean) / std)[:, None]  # the 8x8 standardised image, as `features` sees it
    opt = torch.optim.AdamW(clf.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    g = torch.Generator().manual_seed(seed)
    clf.train()
    for step in range(steps):
        idx = train[torch.randint(len(train), (batch,), generator=g)]
        x = u[idx] + (0.1 / std) * torch.randn(u[idx].shape, generator=g)  # noise of 0.1 in pixel units
        loss = F.cross_entropy(clf.head(clf.features_u(x)), labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step(), sched.step()
        if (step + 1) % 500 == 0:
            log(f"classifier step {step + 1}/{steps}  loss {loss.item():.4f}")
    clf.eval()
    with torch.no_grad():
        acc = (clf.head(clf.features_u(u[test])).argmax(1) == labels[test]).float().mean().item()
    log(f"classifier held-out accuracy {acc:.4f} on {len(test)} digits")
    return clf, {"heldout_accuracy": acc, "heldout_size": len(test), "holdout": holdout, "seed": seed,
                 "steps": steps}


def train_main(args) -> None:
    """Both models into `args.out`; the metadata records the config, the time taken and the machine's load."""

    def log(line):
        print(line, flush=True)

    torch.set_num_threads(args.threads)
    cfg = DigitsConfig(resolution=args.resolution, scale=args.scale)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)  # an unwritable target is refused here, before any training
    work = Path(tempfile.mkdtemp(prefix=".digits_train-", dir=out))
    try:
        _, ema, report = train_denoiser(cfg, args.steps, batch=args.batch, lr=args.lr, seed=args.seed, log=log)
        meta = asdict(cfg) | {"train_steps": args.steps, "train_seconds": round(report.seconds), "seed": args.seed,
                              "final_loss": report.losses[-1], "train_load_average": os.getloadavg()[1]}
        save_weights(ema, work / MODEL_FILE.name, meta)
        clf, clf_report = train_classifier(cfg.resolution, cfg.mean, cfg.std, args.classifier_steps, seed=args.seed,
                                           log=log)
        save_weights(clf, work / CLASSIFIER_FILE.name, {"resolution": cfg.resolution, "mean": cfg.mean,
                                                        "std": cfg.std, "scale": cfg.scale, **clf_report})
        for name in (MODEL_FILE.name, CLASSIFIER_FILE.name):
            os.replace(work / name, out / name)  # same file system: each file is replaced whole
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"wrote {out / MODEL_FILE.name} ({report.seconds:.0f}s, final loss {report.losses[-1]:.4f}) "
          f"and {out / CLASSIFIER_FILE.name} (held-out accuracy {clf_report['heldout_accuracy']:.4f})")


def parser():
    t = cli.parser("python -m spell_lab.models.digits_train", __doc__.split("\n")[0])
    t.add_argument("--steps", type=int, default=5000)
    t.add_argument("--classifier-steps", type=int, default=1000)
    t.add_argument("--batch", type=int, default=128)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--resolution", type=int, default=48)
    t.add_argument("--scale", type=float, default=DigitsConfig.scale, help="global scale of the diffusion space")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--threads", type=int, default=2)
    t.add_argument("--out", type=str | None, default=None, help=f"folder for the weights (default {DEFAULT_OUT})")
    t.add_argument("--into-package", action="store_true", help=f"write the weights into the package ({WEIGHTS_DIR})")
    return t


DEFAULT_OUT = "runs/digits_train/weights"
MIN_RESOLUTION = 8  # the digits are 8x8; the model upsamples them


def main(argv=None) -> int:
    args = parser().parse_args(argv)  # sizes, rates and the scale are checked against spell_lab.cli.RANGES
    if args.out is not None and args.into_package:
        raise ValueError("--out and --into-package exclude each other; pick one.")
    if args.resolution < MIN_RESOLUTION:
        raise ValueError(f"--resolution must be >= {MIN_RESOLUTION}, the digits' own size (got {args.resolution}).")
    args.out = str(WEIGHTS_DIR) if args.into_package else args.out or DEFAULT_OUT
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise ValueError(f"--out {args.out} is a file; give a folder for the weights (it is created if missing).")
    train_main(args)
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(cli.run(main))
