"""The radius ablation (paper Section 4.3, Figure 3; radius grid of Appendix D; longer repellency of Appendix F).

    python -m spell_lab.experiments.radius

Calibrates the radius grid (16 radii from 0 to 2x the median within-condition distance of outputs made without
SPELL, on seeds of their own), then generates every radius on the same seeds with the `mixed` protocol (rounds of
2, intra-batch and earlier rounds), one store group per radius (`r00` = radius 0, the baseline), and ends with
per-condition precision, recall, density, coverage, Vendi and Fréchet distance against held-out real data, the
sparsity numbers, the figures, W&B and a summary table.
"""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path

from ..methods import spell_method
from ..models.registry import require_reference
from ..plan import Setting
from ..calibration import SIZE_CONDITIONS, SIZE_PER_CONDITION, format_grid
from ..run import handoff
from . import skeleton
from .common import GENERATION, calibration_of, conditions_for, config_dict, launch, load_model_for, sampling_for
from .skeleton import Experiment, Generated

# Protocols as plain data: which shield sources every radius uses, and the batch size of each round.
PROTOCOLS = {
    "mixed": dict(intra_batch=True, memory=True, batch=2, note="2 at a time, intra-batch and earlier rounds"),
    "intra": dict(intra_batch=True, memory=False, batch=None, note="one batch per condition, intra-batch only"),
    "memory": dict(intra_batch=False, memory=True, batch=2, note="2 at a time, repelled from earlier rounds only"),
}
SIZE_GRID = {"quick": 4, "default": 16, "full": 16}  # radii linspace(0, 2 x median, n)
K = 5  # precision/recall neighbours: every condition needs >= K + 1 samples


def radius_settings(radii, protocol: str, per_condition: int, batch: int | None, overcomp: float, conditions,
                    seed: int) -> list[Setting]:
    """One setting per radius (`r00` = 0, then increasing), same protocol and seeds for all."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown --protocol {protocol!r}; choose from {', '.join(PROTOCOLS)}.")
    bad = [r for r in radii if not (isinstance(r, (int, float)) and math.isfinite(r) and r >= 0)]
    if bad:
        raise ValueError(f"--radii must be finite and >= 0 (got {bad}); 0 is the no-SPELL baseline.")
    if not (math.isfinite(overcomp) and overcomp > 0):
        raise ValueError(f"--overcomp must be > 0 (got {overcomp}); 1 is the exact correction.")
    spec = dict(PROTOCOLS[protocol])
    b = batch or spec.pop("batch") or per_condition
    spec.pop("batch", None)
    if per_condition < K + 1:
        raise ValueError(f"--per_condition must be >= {K + 1}: per-condition precision/recall use k = {K} "
                         f"neighbours (got {per_condition}).")
    if b < 1 or per_condition % b:
        raise ValueError(f"--per_condition ({per_condition}) must be a multiple of the batch size ({b}).")
    radii = sorted({0.0} | {float(r) for r in radii})  # 0 added when missing: the baseline on the same seeds
    rounds = (b,) * (per_condition // b)
    note = spec.pop("note")
    return [Setting(f"r{i:02d}", spell_method(r, overcomp, **spec), rounds=rounds, conditions=tuple(conditions),
                    seed=seed, note=note) for i, r in enumerate(radii)]


def generate(cfg, size: str) -> Generated:
    per_condition = cfg.per_condition or SIZE_PER_CONDITION[size]
    grid_size = cfg.grid_size or SIZE_GRID[size]
    if grid_size < 2:
        raise ValueError(f"--grid_size must be >= 2 (got {grid_size}).")
    radius_settings(cfg.radii or [0.0], cfg.protocol, per_condition, cfg.batch, cfg.overcomp, [0], 0)  # early check
    require_reference(cfg.model, "the radius ablation")  # before any sampling: the metrics need held-out real data
    model, spec = load_model_for(cfg)
    conditions = conditions_for(model, SIZE_CONDITIONS[size], cfg.classes)
    sampling = sampling_for(cfg, model, size)

    def calibrate() -> dict:  # rank 0 only: the DDP ranks it launches get the same grid, bit for bit, no extra batch
        cal = calibration_of(cfg, model, size, conditions, cfg.calibration_per_condition, grid_size)
        print(f"calibration: median within-condition distance {cal['median']:.4g} ({cal['per_condition']} per condition, "
              f"{cal['seconds']:.1f} s); grid {format_grid(cal['grid'])}", flush=True)
        return cal

    cal = handoff.rank_zero("radius_calibration", calibrate)
    # 4 significant digits: the grid is part of the run's fingerprint, so a resume must not trip on the last bit
    radii = cfg.radii if cfg.radii is not None else [float(f"{r:.4g}") for r in cal["grid"]]
    settings = radius_settings(radii, cfg.protocol, per_condition, cfg.batch, cfg.overcomp, conditions, cfg.seed)
    name = f"{Path(cfg.model).name}-{cfg.protocol}-{len(settings)}radii-{size}"
    config = config_dict(cfg) | {"calibration": cal, "size": size}
    result, seconds = launch("radius", cfg, settings=settings, model=model, spec=spec, sampling=sampling, name=name,
                             config=config, reference=settings[0].name)  # r00: radius 0 on the same seeds
    s = settings[0]
    return Generated(result.run_dir, [(result, seconds)], lambda out: [
        ("groups", f"r00..r{len(settings) - 1:02d}, r00 = radius 0"),
        ("protocol", f"{cfg.protocol}: rounds {list(s.rounds)} per condition, conditions {list(s.conditions)}"),
        ("calibration", f"median {cal['median']:.4g}; grid {format_grid(cal['grid'])} ({cal['seconds']:.1f} s)"),
        ("real data", out["reference"]),
    ])


EXPERIMENT = Experiment(
    name="radius", doc=__doc__, generate=generate,
    title="SPELL radius ablation (per-condition metrics, averaged over conditions)",
    flags=[f for f in GENERATION if f not in ("protected", "prompts")]  # built-in models, no protected set
    + ["per_condition", "batch", "calibration_per_condition"],
    own_flags={
        "--radii": dict(type=float, nargs="+", default=None,
                        help="radii to sweep, e.g. --radii 0 10 20 (default: the calibrated grid; 0 is always added)"),
        "--protocol": dict(default="mixed", choices=list(PROTOCOLS), help="shield sources and batching of every radius"),
        "--overcomp": dict(type=float, default=1.0, help="overcompensation lambda (1: the exact correction)"),
        "--grid_size": dict(type=int | None, default=None, help="radii in the calibrated grid (default 16; quick 4)"),
    })
main, command = skeleton.command(EXPERIMENT)
parser = partial(skeleton.parser, EXPERIMENT)

if __name__ == "__main__":
    command()
