"""Radius calibration (paper Appendix D): the scale of a model's diffusion space, and the radius grid to sweep.

    python -m spell_lab.experiments.calibrate --model digits
    python -m spell_lab.experiments.calibrate --select [--quick]    # the selection: CFG weight, then radius, by F


Generates one batch without SPELL (`per_condition` samples of each condition), takes the median L2 distance between final outputs of the same
condition (every pair, all conditions pooled) and prints the paper's 16-radius grid from 0 to 2x that median.
The calibration seeds are a range of their own (seed + 1,000,000 + i), apart from the seeds the radius sweep uses.
With --select it runs the paper's whole Appendix D procedure (spell_lab/experiments/select.py): the CFG weight
tuned by F(precision, coverage) without SPELL, then the radius grid calibrated and swept at that weight with the
`mixed` protocol, and prints the F of every weight and radius and the selected ones.
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

from .. import cli
from ..calibration import GRID_SIZE, SIZE_CONDITIONS, SIZE_PER_CONDITION, format_grid
from . import skeleton
from .common import GENERATION, calibration_of, conditions_for, load_model_for
from .skeleton import Experiment, Generated

TITLE = "SPELL radius calibration (paper Appendix D)"


def generate(cfg, size: str) -> Generated:
    """The calibration (one batch without SPELL, printed; calibration.json under --out), or with --select the
    Appendix D selection (`select.select`), which analyses as it generates."""
    if cfg.grid_size is not None and cfg.grid_size < 2:
        raise ValueError(f"--grid_size must be >= 2 (got {cfg.grid_size}).")
    if cfg.reference_per_condition is not None and cfg.reference_per_condition < 1:
        raise ValueError(f"--reference_per_condition must be >= 1 (got {cfg.reference_per_condition}).")
    if cfg.reference_per_condition is not None and not cfg.select:
        raise ValueError("--reference_per_condition is for --select (its metrics); add --select or drop it.")
    if cfg.guidance_grid is not None and not cfg.select:
        raise ValueError("--guidance_grid is for --select (the CFG tuning); add --select or drop it.")
    if cfg.out:
        cli.check_writable_dir(cfg.out)  # before the calibration run, not after it
    model, spec = load_model_for(cfg)
    conditions = conditions_for(model, SIZE_CONDITIONS[size], cfg.classes)
    if cfg.select:
        from .select import select

        return select(cfg, model, spec, size, conditions, cfg.per_condition or SIZE_PER_CONDITION[size])
    cal = calibration_of(cfg, model, size, conditions, cfg.per_condition, cfg.grid_size or GRID_SIZE)
    lines = [
        ("model", f"{cfg.model} ({cal['sampler']}, {cal['steps']} steps, guidance {cal['guidance']:g})"),
        ("samples", f"{cal['per_condition']} per condition x conditions {cal['conditions']}, seeds from "
                    f"{cal['first_seed']}, no SPELL"),
        ("median distance", f"{cal['median']:.4g}  (within-condition pairs of final outputs, L2)"),
        (f"grid ({len(cal['grid'])} radii)", format_grid(cal["grid"])),
        ("time", f"{cal['seconds']:.1f} s"),
    ]
    path = Path(cfg.out) if cfg.out else None
    if path is not None:
        path.mkdir(parents=True, exist_ok=True)
        (path / "calibration.json").write_text(json.dumps(cal | {"model": cfg.model}, indent=1))
        lines.append(("written", str(path / "calibration.json")))
    return Generated(path, [], summary=(TITLE, lines))


EXPERIMENT = Experiment(
    name="calibrate", doc=__doc__, generate=generate, title=TITLE,
    flags=[f for f in GENERATION if f != "protected"],
    own_flags={
        "--per_condition": dict(type=int | None, default=None,
                                help="samples per condition in the batch (default by size: quick 8, default 16, full 32)"),
        "--grid_size": dict(type=int | None, default=None,
                            help=f"radii in the grid (default: the paper's {GRID_SIZE}; --select --quick: 4)"),
        "--select": dict(action="store_true",
                         help="the Appendix D selection: tune CFG by F(P, C), then sweep the grid at that weight (mixed)"),
        "--reference_per_condition": dict(type=int | None, default=None,
                                          help="with --select: held-out real items per condition for precision/"
                                          "coverage (default: as many as are generated per condition, so that "
                                          "coverage compares like with like)"),
        "--guidance_grid": dict(type=float, nargs="+", default=None,
                                help="with --select: CFG weights to tune over, e.g. --guidance_grid 1 2 3 (default by size)"),
    })
main, command = skeleton.command(EXPERIMENT)
parser = partial(skeleton.parser, EXPERIMENT)

if __name__ == "__main__":
    command()
