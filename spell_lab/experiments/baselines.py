"""SPELL against the other training-free diversity methods (paper Section 4.3, Figure 4; Appendix I).

    python -m spell_lab.experiments.baselines

Every method sweeps one parameter over a grid that includes its neutral point (the plain sampler, bit for bit),
over the same denoiser, sampler and seeds: rounds of 8 per condition, so Particle Guidance has a batch to act on
and SPELL repels within the batch and from earlier rounds (the paper's protocol). One store group per (method,
value), `<sweep>-<i>`, with the `method` attribute; then per-condition precision, recall, density, coverage, Vendi
and condition fidelity against held-out real data, the three Pareto fronts of Figure 4, the CFG sweep with and
without SPELL (Appendix I), `fronts.csv` with each method's dominated hypervolume per front, W&B and a summary.
"""

from __future__ import annotations

import copy
import math
from functools import partial
from pathlib import Path

from ..methods import method_params
from ..models.registry import require_reference
from ..plan import Setting
from . import skeleton
from .common import GENERATION, conditions_for, config_dict, launch, load_model_for, sampling_for
from .skeleton import Experiment, Generated

# Each sweep as plain data: the method's fixed parameters, the parameter it varies and the grid. A grid value is a
# number, null (the run's guidance weight: the neutral point of `weight` sweeps) or a dict of parameters (a point
# the one parameter cannot express, e.g. CADS switched off). The neutral point is listed first.
# Measured on the default run: analysis/baselines/README.md.
SWEEPS = {
    "cfg": dict(label="CFG", method={"name": "cfg"}, vary="weight", values=[None, 1.0, 1.5, 3.0, 4.0, 6.0]),
    "interval": dict(label="Interval guidance", method={"name": "interval"}, vary="sigma_hi",
                     values=[math.inf, 20.0, 5.0, 2.0, 1.0]),  # w = 1 above sigma_hi (the first 12..38 of 50 steps)
    "pg": dict(label="Particle guidance", method={"name": "pg"}, vary="strength", values=[0.0, 1.0, 2.0, 4.0, 8.0]),
    "cads": dict(label="CADS", method={"name": "cads"}, vary="noise_scale",
                 values=[{"tau1": 1.0, "tau2": 1.0}, 0.25, 0.5, 1.0, 2.0]),
    "spell": dict(label="SPELL", method={"name": "spell", "overcomp": 1.0, "intra_batch": True, "memory": True},
                  vary="radius", values=[0.0, 10.0, 18.0, 26.11, 35.0, 45.0]),
    "spell_cfg": dict(label="SPELL + CFG", vary="weight", values=[None, 1.0, 1.5, 3.0, 4.0, 6.0], neutral=False,
                      method={"name": "spell", "radius": 25.0, "overcomp": 1.6, "intra_batch": True, "memory": True}),
}  # spell_cfg (Appendix I: the CFG sweep under the main command's SPELL) has no neutral point: SPELL is always on
GRIDS = {name: list(s["values"]) for name, s in SWEEPS.items()}
QUICK_GRID = 2  # quick size: the first (neutral) and the last (strongest) value of each grid
SIZE_ROUNDS = {"quick": (4, 4), "default": (8,) * 4, "full": (8,) * 8}
SIZE_CONDITIONS = {"quick": 2, "default": 5, "full": None}  # evenly spaced; None: every condition


def group_name(sweep: str, i: int) -> str:
    return f"{sweep}-{i}"


def point(sweep: str, value, run_weight: float, table: dict = SWEEPS) -> dict:
    """The method as plain data at one grid value (null: the run's weight); table: the sweeps it is one of."""
    spec = table[sweep]
    method = copy.deepcopy(spec["method"])
    if isinstance(value, dict):
        method.update(value)
    else:
        method[spec["vary"]] = float(run_weight if value is None else value)
    return method_params(method)  # unknown parameters refused here, before anything runs


def baseline_settings(sweeps, grids: dict, size: str, conditions, seed: int, run_weight: float,
                      table: dict = SWEEPS) -> list[Setting]:
    """One setting per (sweep, grid value), all on the same seeds and rounds; table: the sweeps to draw from (the
    semantic experiment adds its SPELL variants)."""
    if not sweeps:
        raise ValueError(f"--sweeps names no sweep; choose from {', '.join(table)}.")
    unknown = sorted(set(sweeps) - set(table)) + sorted(set(grids) - set(table))
    if unknown:
        raise ValueError(f"unknown sweep(s) {unknown}; choose from {', '.join(table)}.")
    settings = []
    for sweep in sweeps:
        values = grids.get(sweep, table[sweep]["values"])
        if not isinstance(values, list) or not values:
            raise ValueError(f"the grid of {sweep!r} must be a non-empty list of values (got {values!r}).")
        if size == "quick":
            values = values[:1] + values[-1:] if len(values) > 1 else values
        for i, v in enumerate(values):
            number = isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isnan(v)
            if not (v is None or isinstance(v, dict) or number):  # the method checks its range
                raise ValueError(f"grid value {v!r} of {sweep!r} is not a number, null or a dict of parameters.")
            settings.append(Setting(group_name(sweep, i), point(sweep, v, run_weight, table), rounds=SIZE_ROUNDS[size],
                                    conditions=tuple(conditions), seed=seed, note=table[sweep]["label"]))
    return settings


def sweep_counts(settings, sweeps) -> str:
    """The summary's groups line: how many groups each sweep has."""
    return f"{len(settings)}: " + ", ".join(f"{k} ({sum(x.name.startswith(k + '-') for x in settings)})" for k in sweeps)


def generate(cfg, size: str) -> Generated:
    grids = {**GRIDS, **(cfg.grids or {})}
    require_reference(cfg.model, "the baselines comparison")  # before any sampling: the metrics need real data
    baseline_settings(cfg.sweeps, grids, size, [0], cfg.seed, 1.0)  # flags checked before the model loads
    model, spec = load_model_for(cfg)
    conditions = conditions_for(model, SIZE_CONDITIONS[size], cfg.classes)
    sampling = sampling_for(cfg, model, size)
    settings = baseline_settings(cfg.sweeps, grids, size, conditions, cfg.seed, sampling.guidance)
    name = f"{Path(cfg.model).name}-{len(cfg.sweeps)}methods-{size}"
    config = config_dict(cfg) | {"size": size, "sweeps": {s: {k: v for k, v in SWEEPS[s].items() if k != "values"}
                                                          | {"values": grids[s]} for s in cfg.sweeps}}
    result, seconds = launch("baselines", cfg, settings=settings, model=model, spec=spec, sampling=sampling,
                             name=name, config=config)
    s = settings[0]
    return Generated(result.run_dir, [(result, seconds)], lambda out: [
        ("groups", sweep_counts(settings, cfg.sweeps)),
        ("protocol", f"rounds {list(s.rounds)} per condition, conditions {list(s.conditions)}, same seeds everywhere"),
        ("neutral points", out["neutral"]),
        ("real data", out["reference"]),
        ("fronts", f"{out['figures_dir'] / 'fronts.csv'} (hypervolume: {out['figures_dir'] / 'hypervolume.csv'})"),
    ])


EXPERIMENT = Experiment(
    name="baselines", doc=__doc__, generate=generate,
    title="Training-free diversity methods: dominated hypervolume per front (higher is better)",
    flags=[f for f in GENERATION if f not in ("protected", "prompts")],  # built-in models, no protected set
    own_flags={
        "--sweeps": dict(type=str, nargs="+", default=list(SWEEPS),
                         help=f"the methods to sweep, e.g. --sweeps cfg spell (default: {' '.join(SWEEPS)})"),
        "--grids": dict(type=dict, default=copy.deepcopy(GRIDS),
                        help='grid values per sweep, e.g. \'{"pg": [0, 1, 2]}\' (number, null = the run\'s weight, or a '
                             'dict of parameters); a sweep not named keeps its built-in grid'),
    })
main, command = skeleton.command(EXPERIMENT)
parser = partial(skeleton.parser, EXPERIMENT)

if __name__ == "__main__":
    command()
