"""The sparsity experiment (paper Section 4.4, Figure 5; Appendix F, Figures 9-15).

    python -m spell_lab.experiments.sparsity --radius 25 --overcomp 1.6

Generates every setup of Appendix F into one store group each (plus `baseline`: the `iterative` plan at radius 0,
the gallery's "same seeds without SPELL"), renders the figures, logs to W&B and prints the summary table.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

from ..methods import spell_method
from ..plan import Setting
from ..protect import protected_spec
from . import skeleton
from .common import check_choices, check_spell_knobs, conditions_for, config_dict, launch, load_model_for, sampling_for
from .skeleton import Experiment, Generated

# Presets as plain data. rounds = batch size of each round per condition; memory = repel from earlier rounds;
# intra = repel within the batch; measure_from_round = first round whose trajectories the figures show.
SETUPS = {
    "iterative": dict(rounds=(8, 8), memory=True, measure_from_round=1, note="8 per condition, then 8 repelled from them (Fig. 9)"),
    "intra": dict(rounds=(8,), intra_batch=True, note="intra-batch repellency only (Fig. 10)"),
    "mixed": dict(rounds=(2,) * 8, intra_batch=True, memory=True, note="2 at a time, intra-batch and previous rounds (Fig. 11)"),
    "previous64": dict(rounds=(64, 8), memory=True, measure_from_round=1, note="8 repelled from 64 previous (Fig. 12)"),
    "large_radius": dict(rounds=(8, 8), memory=True, measure_from_round=1, radius_scale=2.0, note="iterative, 2x radius (Fig. 13)"),
    "overcomp": dict(rounds=(8, 8), memory=True, measure_from_round=1, use_overcomp=True, note="iterative with overcompensation (Fig. 14)"),
    "main": dict(rounds=(8, 8), intra_batch=True, memory=True, use_overcomp=True, all_conditions=True, note="Fig. 5 protocol"),
    # ours (App. F's open question, #25; not in the default list): lambda(t) = lambda x m(t), m sigma-shaped from
    # 1.25 in noise to 0.625 at the data, so lambda 1.6 runs from 2.0 to 1.0 (no overcompensation on the final steps)
    "overcomp_schedule": dict(rounds=(8, 8), memory=True, measure_from_round=1, use_overcomp=True,
                              overcomp_schedule={"kind": "sigma", "at_noise": 1.25, "at_data": 0.625},
                              note="iterative, lambda(t) sigma-shaped: 1.25 lambda in noise to 0.625 lambda at the data"),
}
DEFAULT_SETUPS = ("iterative", "intra", "mixed", "previous64", "large_radius", "overcomp", "main")  # the paper's
QUICK_ROUNDS = {"iterative": (4, 4), "intra": (4,), "mixed": (2,) * 4, "previous64": (64, 4), "large_radius": (4, 4),
                "overcomp": (4, 4), "main": (4, 4), "overcomp_schedule": (4, 4)}
FULL_ROUNDS = {"main": (8,) * 4}  # Figure 5 used 452 trajectories over 50 prompts
SIZE_CONDITIONS = {"quick": 2, "default": 50, "full": 50}  # at most 50, evenly spaced (every digit)
MAIN_CONDITIONS = {"quick": 4, "default": 50, "full": 50}  # `main` (Fig. 5) uses every condition, up to 50
REFERENCE = "baseline"  # the `iterative` plan at radius 0: the store's reference group


def build_settings(setups, radius, overcomp, size, conditions, all_conditions, seed, protected=None) -> list[Setting]:
    check_choices("--setups", setups, SETUPS, "setup", "setup(s)")
    check_spell_knobs(radius, overcomp, " for the sparsity setups (got {radius}); they measure SPELL acting.")
    settings = []
    for name in setups:
        spec = dict(SETUPS[name])
        rounds = {"quick": QUICK_ROUNDS, "full": FULL_ROUNDS}.get(size, {}).get(name, spec.pop("rounds"))
        spec.pop("rounds", None)
        r = radius * spec.pop("radius_scale", 1.0)
        lam = overcomp if spec.pop("use_overcomp", False) else 1.0
        conds = all_conditions if spec.pop("all_conditions", False) else conditions
        method = spell_method(r, lam, intra_batch=spec.pop("intra_batch", False), memory=spec.pop("memory", False))
        if "overcomp_schedule" in spec:
            method["overcomp_schedule"] = spec.pop("overcomp_schedule")
        settings.append(Setting(name, method, protected, rounds=tuple(rounds), conditions=tuple(conds), seed=seed, **spec))
    ref = next((s for s in settings if s.name in ("iterative", "overcomp")), None)
    if ref is not None:
        settings.append(Setting(REFERENCE, spell_method(0.0, 1.0, memory=True), rounds=ref.rounds,
                                conditions=ref.conditions, seed=seed, measure_from_round=ref.measure_from_round,
                                note="iterative plan without SPELL"))
    return settings


def generate(cfg, size: str) -> Generated:
    setups = [s.strip() for s in cfg.setups.split(",") if s.strip()]
    build_settings(setups, cfg.radius, cfg.overcomp, size, [0], [0], cfg.seed)  # flags checked before the model loads
    model, spec = load_model_for(cfg)
    conditions = conditions_for(model, SIZE_CONDITIONS[size], cfg.classes)
    all_conditions = conditions_for(model, MAIN_CONDITIONS[size], cfg.classes, spaced=size != "quick")
    protected = protected_spec(cfg.protected) if cfg.protected else None
    settings = build_settings(setups, cfg.radius, cfg.overcomp, size, conditions, all_conditions, cfg.seed, protected)
    sampling = sampling_for(cfg, model, size)
    name = f"{Path(cfg.model).name}-r{cfg.radius:g}-l{cfg.overcomp:g}-{size}"
    result, seconds = launch("sparsity", cfg, settings=settings, model=model, spec=spec,
                             sampling=sampling, name=name, config=config_dict(cfg),
                             condition_names=getattr(model, "condition_names", None),
                             reference=REFERENCE if any(s.name == REFERENCE for s in settings) else None)
    return Generated(result.run_dir, [(result, seconds)])


EXPERIMENT = Experiment(
    name="sparsity", doc=__doc__, title="SPELL sparsity summary (per setup)", generate=generate,
    own_flags={
        "--radius": dict(type=float, default=25.0, help="repellency radius r in the diffusion space"),
        "--overcomp": dict(type=float, default=1.6, help="overcompensation lambda of the `overcomp` and `main` setups"),
        "--setups": dict(type=str, default=",".join(DEFAULT_SETUPS),
                         help=f"comma-separated subset of {','.join(SETUPS)} (default: all but overcomp_schedule)"),
    })
main, command = skeleton.command(EXPERIMENT)
parser = partial(skeleton.parser, EXPERIMENT)

if __name__ == "__main__":
    command()
