"""The diversity benchmark (paper Section 4.2, Table 1): each model without and with SPELL, same seeds.

    python -m spell_lab.experiments.diversity

For every model, `seed_sets` disjoint seed sets; in each, every condition generated twice on the same seeds: group
`without-s<k>` (radius 0: the plain sampler bit for bit) and `spell-s<k>` (the model's selected radius). Both use
the Table 1 protocol: rounds of `batch` per condition, each round repelled within the batch and from every earlier
round of its condition (up to `per_condition` images per condition). One store per model, RUN_DIR/<model>/, then one
combined table: per-condition metrics against held-out real data averaged over conditions, mean ± std over seed
sets, and the relative change, as CSV, Markdown, W&B and the summary screen (spell_lab.analysis.diversity).
"""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path

from ..methods import spell_method
from ..models.registry import default_name, entry, require_reference, selected_radius
from ..plan import Setting
from . import skeleton
from .common import GENERATION, conditions_for, config_dict, launch, load_model_for, run_dir_for, sampling_for
from .skeleton import Experiment, Generated

SIZE_CONDITIONS = {"quick": 2, "default": None, "full": None}  # None: every condition of the model
SIZE_PER_CONDITION = {"quick": 8, "default": 64, "full": 128}  # the paper: up to 128 images per class/prompt
SIZE_BATCH = {"quick": 4, "default": 8, "full": 8}  # the paper's Latent Diffusion batch (Appendix D)
SEED_STRIDE = 100_000  # seed set k: seeds seed + (k + 1) x 100,000 + i, apart from the selection's (0..) and
# the calibration's (1,000,000+) seeds
K = 5  # precision/recall neighbours: every condition needs >= K + 1 samples


def seed_of(seed: int, seed_set: int) -> int:
    return seed + (seed_set + 1) * SEED_STRIDE


def radius_for(model: str, given: dict | None) -> float:
    """--radius's value for the model, else its selected radius (its registry entry); refused where there is none."""
    given = given or {}
    r = float(given[model]) if model in given else selected_radius(model)
    if not (math.isfinite(r) and r > 0):
        raise ValueError(f"--radius for {model} must be > 0 (got {r}); the without-SPELL arm is radius 0 already.")
    return r


def selected_of(model: str) -> dict:
    """The model's selected radius and its source, as the run's config records them."""
    e = entry(model)
    return dict(radius=e.selected_radius, source=e.radius_source)


def diversity_settings(radius: float, overcomp: float, per_condition: int, batch: int, seed_sets: int, conditions,
                       seed: int) -> list[Setting]:
    """Per seed set k: `without-s<k>` (radius 0) and `spell-s<k>`, same rounds, conditions and seeds."""
    if not (math.isfinite(overcomp) and overcomp > 0):
        raise ValueError(f"--overcomp must be > 0 (got {overcomp}); 1 is the exact correction.")
    if seed_sets < 1:
        raise ValueError(f"--seed_sets must be >= 1 (got {seed_sets}); the paper reports 3.")
    if per_condition < K + 1:
        raise ValueError(f"--per_condition must be >= {K + 1}: per-condition precision/recall use k = {K} "
                         f"neighbours (got {per_condition}).")
    if batch < 1 or per_condition % batch:
        raise ValueError(f"--per_condition ({per_condition}) must be a multiple of --batch ({batch}).")
    if per_condition * len(conditions) > SEED_STRIDE:
        raise ValueError(f"a seed set holds at most {SEED_STRIDE} samples (got {per_condition} x {len(conditions)}); "
                         f"lower --per_condition.")
    rounds, conds = (batch,) * (per_condition // batch), tuple(conditions)
    note = f"rounds of {batch}, intra-batch and earlier rounds"
    out = []
    for k in range(seed_sets):
        s = seed_of(seed, k)
        out.append(Setting(f"without-s{k}", spell_method(0.0, 1.0, intra_batch=True, memory=True), rounds=rounds,
                           conditions=conds, seed=s, note="without SPELL (radius 0), " + note))
        out.append(Setting(f"spell-s{k}", spell_method(radius, overcomp, intra_batch=True, memory=True), rounds=rounds,
                           conditions=conds, seed=s, note=f"SPELL r = {radius:g}, lambda = {overcomp:g}, " + note))
    return out


def check(cfg, size: str):
    """Every flag checked before a model loads or anything is written: (models, radii, per_condition, batch)."""
    models = list(dict.fromkeys(cfg.models))
    for m in models:
        require_reference(m, "the diversity benchmark")
    unknown = sorted(set(cfg.radius or {}) - set(models))
    if unknown:
        raise ValueError(f"--radius names {unknown}, which --models does not run ({' '.join(models)}).")
    if len(models) > 1 and cfg.devices not in (None, 1):
        raise ValueError("--devices > 1 runs one model per command (one DDP launch); pass one model to --models.")
    radii = {m: radius_for(m, cfg.radius) for m in models}
    per_condition = cfg.per_condition or SIZE_PER_CONDITION[size]
    batch = cfg.batch or SIZE_BATCH[size]
    diversity_settings(1.0, cfg.overcomp, per_condition, batch, cfg.seed_sets, [0], cfg.seed)
    return models, radii, per_condition, batch


def run_root(cfg, name: str) -> Path:
    """The run directory; --fresh: a new one beside an existing run (DDP ranks reuse rank 0's choice)."""
    from ..run import handoff
    from ..run.launch import run_dirs

    def choose() -> str:
        return str(next(d for d in run_dirs(run_dir_for("diversity", cfg, name))
                        if not (cfg.fresh and d.exists() and any(d.glob("*/store.zarr")))))

    return Path(handoff.rank_zero("diversity_root", choose))


def generate(cfg, size: str) -> Generated:
    models, radii, per_condition, batch = check(cfg, size)
    root = run_root(cfg, f"{'-'.join(models)}-{size}")
    launches, lines = [], []
    for name in models:
        sub = cfg.clone()
        sub.model, sub.out, sub.fresh = name, str(root / name), False  # the root is fresh already
        sub.devices = cfg.devices if len(models) == 1 else 1  # several models: one launch each, one process
        model, spec = load_model_for(sub)
        conditions = conditions_for(model, SIZE_CONDITIONS[size], cfg.classes)
        settings = diversity_settings(radii[name], cfg.overcomp, per_condition, batch, cfg.seed_sets, conditions,
                                      cfg.seed)
        config = config_dict(cfg) | {"model": name, "size": size, "radius": radii[name],
                                     "selected": selected_of(name), "per_condition": per_condition, "batch": batch}
        result, seconds = launch("diversity", sub, settings=settings, model=model, spec=spec,
                                 sampling=sampling_for(sub, model, size), name=name, config=config,
                                 condition_names=getattr(model, "condition_names", None))
        launches.append((result, seconds))
        s, done = settings[0], (f", {result.units_done_before} already done" if result.units_done_before else "")
        lines.append((name, f"{result.units_total} units{done}, {seconds:.1f} s; {len(settings) // 2} seed sets x "
                            f"{len(s.conditions)} conditions x {s.unit_size} images (rounds of {s.rounds[0]}), "
                            f"r = {settings[1].radius:g}, lambda = {settings[1].overcomp:g}"))
    return Generated(root, launches, lambda out: [*lines,
                                                  ("tables", ", ".join(str(p) for p in out["files"].values()))])


EXPERIMENT = Experiment(
    name="diversity", doc=__doc__, generate=generate,
    title="SPELL diversity benchmark (Table 1: mean ± std over seed sets, per-condition metrics averaged)",
    flags=[f for f in GENERATION if f not in ("model", "protected", "prompts")]  # built-in models: real data needed
    + ["per_condition", "batch"],
    own_flags={
        "--models": dict(type=str, nargs="+", default=[default_name()],
                         help="built-in models, one store each, e.g. --models digits gmm (gmm needs --radius)"),
        "--radius": dict(type=dict[str, float] | None, default=None,
                         help="radius per model instead of its selected one, e.g. --radius '{gmm: 1.0}'"),
        "--overcomp": dict(type=float, default=1.6, help="overcompensation lambda (the paper's LD Table 1: 1.6)"),
        "--seed_sets": dict(type=int, default=3, help="disjoint seed sets (the table's mean ± std is over them)"),
    })
main, command = skeleton.command(EXPERIMENT)
parser = partial(skeleton.parser, EXPERIMENT)

if __name__ == "__main__":
    command()
