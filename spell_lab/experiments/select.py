"""The paper's Appendix D selection, run by `python -m spell_lab.experiments.calibrate --select` (its entry: calibrate.py).

1. CFG tuning: the guidance weights of the grid, each generated without SPELL on the same seeds, scored by
   F = 2PC / (P + C) of precision and coverage (per-condition metrics against held-out real data on the metric
   features, averaged over conditions, as the radius experiment does); the F-best weight is selected.
2. Radius selection at that weight: the calibration (median within-condition distance, 16 radii from 0 to 2x it),
   then every radius with the `mixed` protocol on the same seeds (the radius experiment's settings); the F-best
   radius is selected.

Run directory: `cfg-w<w>/` (one store per weight), `radius/` (the sweep's store, readable by
`python -m spell_lab.analysis.radius`), selection.json, cfg_table.csv, radius_table.csv, f_vs_guidance.png,
f_vs_radius.png.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from ..calibration import (best_guidance, best_radius, f_gap_standard_error, f_standard_error, grid_steps, with_f,
                           within_one_se)
from .common import Timer, calibration_of, config_dict, run_dir_for, sampling_for
from .skeleton import Generated
from .radius import SIZE_GRID, radius_settings

GUIDANCE_GRID = {"quick": (1.0, 3.0), "default": (1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0),
                 "full": (1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 5.0, 6.0)}
TUNING_PROTOCOL = "intra"  # no SPELL at radius 0: the protocol only sets the batching (one batch per condition)
SWEEP_PROTOCOL = "mixed"  # the radius experiment's default: 2 at a time, intra-batch and earlier rounds
TABLE_METRICS = ("precision", "recall", "density", "coverage", "vendi", "fd")
REFERENCE_RADIUS = 25.0  # the paper's Latent Diffusion radius (Appendix D), drawn on the radius figure


def check_weights(weights) -> list[float]:
    weights = [float(w) for w in weights]
    if not weights or not all(math.isfinite(w) and w >= 0 for w in weights):
        raise ValueError(f"--guidance_grid needs finite weights >= 0, e.g. --guidance_grid 1 2 3 (got {weights}).")
    return sorted(set(weights))


def measured_table(run_dir, reference) -> pd.DataFrame:
    """The radius experiment's metric table (means over conditions) of one run directory, with `f_se`: the
    jackknife standard error of each row's F over conditions (`calibration.f_standard_error`), and `f_gap_se`: the
    paired one of its gap to the F-best row (`calibration.f_gap_standard_error`)."""
    from ..analysis.radius import load_run, metric_tables

    real_x, real_cond, features = reference
    table, per = metric_tables(load_run(run_dir), real_x, real_cond, features)
    p, c = (per.pivot(index="group", columns="condition", values=m).loc[table.index] for m in ("precision", "coverage"))
    return table.assign(f_se=f_standard_error(p.to_numpy(), c.to_numpy()),
                        f_gap_se=f_gap_standard_error(p.to_numpy(), c.to_numpy()))


def tune_guidance(gen, weights, conditions, per_condition, seed, reference, root: Path) -> pd.DataFrame:
    """Stage 1: one row per weight (no SPELL, same seeds), with F."""
    rows = []
    settings = radius_settings([0.0], TUNING_PROTOCOL, per_condition, None, 1.0, conditions, seed)
    for w in weights:
        result = gen(settings, w, root / f"cfg-w{w:g}", {"stage": "cfg tuning"})
        row = measured_table(result.run_dir, reference).iloc[0]
        rows.append({"guidance": w, **{m: float(row[m]) for m in (*TABLE_METRICS, "f_se")}})
    return with_f(pd.DataFrame(rows))


def sweep_radius(gen, cal, guidance, conditions, per_condition, seed, reference, root: Path) -> pd.DataFrame:
    """Stage 2: the calibrated grid at `guidance`, mixed protocol, same seeds at every radius, with F."""
    radii = [float(f"{r:.4g}") for r in cal["grid"]]  # as the radius experiment rounds its grid
    settings = radius_settings(radii, SWEEP_PROTOCOL, per_condition, None, 1.0, conditions, seed)
    result = gen(settings, guidance, root / "radius", {"stage": "radius sweep", "calibration": cal})
    table = measured_table(result.run_dir, reference)
    cols = ["radius", "radius_over_median", *TABLE_METRICS, "share_changed", "f_se", "f_gap_se"]
    return with_f(table[[c for c in cols if c in table]].reset_index())


def select(cfg, model, spec, size: str, conditions, per_condition: int) -> Generated:
    """Both stages, the figures and selection.json in the run directory; the summary screen for the skeleton."""
    from ..analysis import selection as fig
    from ..models.registry import reference_data, require_reference
    from ..run.launch import run_generation

    require_reference(cfg.model, "--select")
    if cfg.guidance is not None:
        raise ValueError("--select tunes the guidance itself; give the weights to try with --guidance_grid, "
                         "not --guidance.")
    if cfg.devices not in (None, 1) or cfg.num_nodes != 1:
        raise ValueError("--select runs in one process; drop --devices / --num_nodes.")
    weights = check_weights(cfg.guidance_grid or GUIDANCE_GRID[size])
    grid_size = cfg.grid_size or SIZE_GRID[size]
    sampling = sampling_for(cfg, model, size)
    sampler, steps = sampling.sampler, sampling.steps
    root = run_dir_for("calibrate", cfg, f"{Path(cfg.model).name}-select-{size}")
    *reference, reference_desc = reference_data(cfg.model, conditions,  # matched counts: coverage means something
                                                per_condition=cfg.reference_per_condition or per_condition)
    config = config_dict(cfg) | {"size": size}

    def gen(settings, guidance, out, extra):
        return run_generation(experiment="calibrate", settings=settings, model=model, model_spec=spec,
                              sampler=sampler, steps=steps, guidance=guidance, out=out, config=config | extra,
                              fresh=cfg.fresh, devices=1, progress=not cfg.no_progress)

    with Timer() as t_cfg:
        cfg_table = tune_guidance(gen, weights, conditions, per_condition, cfg.seed, reference, root)
    w_best, f_w = best_guidance(cfg_table)
    cal_cfg = cfg.clone()
    cal_cfg.guidance = w_best
    cal = calibration_of(cal_cfg, model, size, conditions, per_condition, grid_size)  # as the radius experiment
    print(f"calibration at w = {w_best:g}: median {cal['median']:.4g}; grid "
          + "  ".join(f"{r:.4g}" for r in cal["grid"]), flush=True)
    with Timer() as t_r:
        r_table = sweep_radius(gen, cal, w_best, conditions, per_condition, cfg.seed, reference, root)
    r_best, f_r = best_radius(r_table)
    step = cal["grid"][1] - cal["grid"][0]
    plateau = within_one_se(r_table, "radius")  # the argmax's resolution at this sample size
    out = dict(model=cfg.model, size=size, sampler=sampler, steps=steps, conditions=[int(c) for c in conditions],
               per_condition=per_condition, reference=reference_desc, default_guidance=model.default_guidance,
               selected_guidance=w_best, f_guidance=f_w, calibration=cal, selected_radius=r_best, f_radius=f_r,
               selected_over_median=r_best / cal["median"], grid_step=step,
               steps_from_reference=grid_steps(cal["grid"], r_best, REFERENCE_RADIUS),
               f_radius_se=float(r_table.loc[r_table["radius"] == r_best, "f_se"].iloc[0]), within_one_se=plateau,
               cfg_table=cfg_table.to_dict("records"), radius_table=r_table.to_dict("records"),
               seconds={"cfg_tuning": round(t_cfg.seconds, 1), "calibration": cal["seconds"],
                        "radius_sweep": round(t_r.seconds, 1)})
    root.mkdir(parents=True, exist_ok=True)
    (root / "selection.json").write_text(json.dumps(out, indent=1))
    cfg_table.to_csv(root / "cfg_table.csv", index=False)
    r_table.to_csv(root / "radius_table.csv", index=False)
    figs = [fig.save_figure(fig.plot_f_vs_guidance(cfg_table, w_best, model.default_guidance), root, "f_vs_guidance"),
            fig.save_figure(fig.plot_f_vs_radius(r_table, r_best, cal["median"], REFERENCE_RADIUS), root,
                            "f_vs_radius")]
    default_note = "is" if w_best == model.default_guidance else "is NOT"
    lines = [
        ("model", f"{cfg.model} ({sampler}, {steps} steps), conditions {out['conditions']}, {per_condition} each"),
        ("real data", reference_desc),
        ("CFG tuning", f"weights {weights}, no SPELL: F-best w = {w_best:g} (F {f_w:.3f}); the model's default "
                       f"w = {model.default_guidance:g} {default_note} the F-best"),
        ("calibration", f"at w = {w_best:g}: median {cal['median']:.4g}, grid step {step:.4g}"),
        ("selected radius", f"{r_best:.4g} = {r_best / cal['median']:.3f}x median (F {f_r:.3f}); "
                            f"{out['steps_from_reference']:.2f} grid steps from {REFERENCE_RADIUS:g}"),
        ("F within 1 SE", f"radii {plateau[0]:.4g} to {plateau[-1]:.4g} ({len(plateau)} of {len(r_table)}) lie within "
                          f"one paired jackknife SE over conditions (f_gap_se) of the best's F ({f_r:.3f}): the "
                          "argmax cannot tell them apart at this size"),
        ("time", f"CFG tuning {t_cfg.seconds:.0f} s, calibration {cal['seconds']:.0f} s, sweep {t_r.seconds:.0f} s"),
        ("written", f"{root}/  (selection.json, cfg_table.csv, radius_table.csv, {', '.join(p.name for p in figs)})"),
    ]
    tables = ("CFG tuning (no SPELL):\n" + fig.format_f_table(cfg_table, "guidance", w_best)
              + f"\n\nradius sweep at w = {w_best:g} ({SWEEP_PROTOCOL} protocol):\n"
              + fig.format_f_table(r_table, "radius", r_best, extra=("radius_over_median",)))
    return Generated(root, [], summary=("SPELL selection (paper Appendix D): CFG weight, then radius, by "
                                        "F(precision, coverage)", lines, tables))
