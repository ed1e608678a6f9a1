"""Beyond the paper (issue #25): latent SPELL vs semantic SPELL (shields in the model's feature space) vs scheduled
SPELL (a sigma-shaped radius schedule), on Table 1's protocol, beside the Figure 4 baselines.

    python -m spell_lab.experiments.semantic --model fashion

A calibration batch without SPELL (its own seeds, as Appendix D) gives the median within-condition distance in the
diffusion space and in the feature space; each variant then sweeps its radius over the same fractions of its own
median (`FRACTIONS`), and the analysis picks each variant's radius by Appendix D's F(precision, coverage). Every group
runs Table 1's / Figure 4's protocol on the same seeds (rounds of 8 per condition, intra-batch and earlier rounds),
one store group per (variant or baseline, grid value), `<sweep>-<i>`. The analysis reports, per variant at its
selected radius: precision, recall, density, coverage, Vendi, FD, fidelity, the feature-space share of near-duplicate
pairs, the active share at the paper's noise levels, the relative magnitude, the feature-shield residual and the
sampling time per denoiser evaluation; and every point on Figure 4's fronts beside the baselines.
"""

from __future__ import annotations

import copy
from functools import partial
from pathlib import Path

import torch

from ..calibration import CALIBRATION_SEED_OFFSET, SIZE_PER_CONDITION, calibration_batch, median_within
from ..models.registry import feature_map, require_reference
from ..run import handoff
from . import skeleton
from .baselines import SIZE_CONDITIONS, SWEEPS, baseline_settings, sweep_counts
from .common import GENERATION, conditions_for, config_dict, launch, load_model_for, sampling_for
from .skeleton import Experiment, Generated

SHIELDS = {"name": "spell", "overcomp": 1.0, "intra_batch": True, "memory": True}  # Table 1 / Figure 4's SPELL
VARIANTS = {  # each varies its radius over FRACTIONS of the median distance in its own space
    "latent": dict(label="latent SPELL", method=SHIELDS, space="diffusion"),
    "semantic": dict(label="semantic SPELL", method=SHIELDS | {"space": "features"}, space="features"),
    "scheduled": dict(label="scheduled SPELL", method=SHIELDS | {"radius_schedule": "sigma"}, space="diffusion"),
}
# radius 0 (the plain sampler) is the latent sweep's first point; digits' selected 26.11 is 0.8x its median
FRACTIONS = {"quick": (0.8,), "default": (0.4, 0.8, 1.2), "full": (0.2, 0.4, 0.6, 0.8, 1.0, 1.2, 1.6)}
DEFAULT_BASELINES = ["cfg", "pg"]


def medians(model, conditions, per_condition: int, *, seed: int, sampling) -> dict:
    """Median within-condition distance of outputs made without SPELL, in the diffusion and the feature space."""
    x0, cond = calibration_batch(model, conditions, per_condition, seed=seed, sampler=sampling.sampler,
                                 steps=sampling.steps, guidance=sampling.guidance)
    phi = feature_map(model.name)
    with torch.no_grad():
        f = phi(x0).float()
    # 4 significant digits: the radii are part of the run's fingerprint, so a resume must not trip on the last bit
    return {"diffusion": float(f"{median_within(x0, cond):.4g}"), "features": float(f"{median_within(f, cond):.4g}"),
            "per_condition": per_condition, "first_seed": seed + CALIBRATION_SEED_OFFSET}


def sweep_table(scale: dict, size: str, baselines) -> tuple[dict, dict]:
    """(sweeps, grids): the variants with their radii (fractions of their space's median) and the baselines."""
    table = {name: SWEEPS[name] for name in baselines}
    for name, v in VARIANTS.items():
        radii = [float(f"{f * scale[v['space']]:.4g}") for f in FRACTIONS[size]]
        table[name] = dict(label=v["label"], method=copy.deepcopy(v["method"]), vary="radius",
                           values=([0.0] if name == "latent" else []) + radii, neutral=name == "latent",
                           space=v["space"])
    return table, {name: list(spec["values"]) for name, spec in table.items()}


BASELINES = ("cfg", "interval", "pg", "cads")


def check_flags(cfg) -> None:
    unknown = sorted(set(cfg.baselines) - set(BASELINES))
    if unknown:
        raise ValueError(f"--baselines {unknown} is not a baseline; choose from {', '.join(BASELINES)} (or none).")


def generate(cfg, size: str) -> Generated:
    check_flags(cfg)
    require_reference(cfg.model, "the semantic comparison")  # the metrics need held-out real data
    feature_map(cfg.model)  # a model without a feature map is refused before anything runs
    model, spec = load_model_for(cfg)
    conditions = conditions_for(model, SIZE_CONDITIONS[size], cfg.classes)
    sampling = sampling_for(cfg, model, size)
    per_condition = SIZE_PER_CONDITION[size]

    def calibrate() -> dict:  # rank 0 only: the DDP ranks it launches get the same radii, bit for bit
        scale = medians(model, conditions, per_condition, seed=cfg.seed, sampling=sampling)
        print(f"calibration: median within-condition distance {scale['diffusion']:.4g} (diffusion space), "
              f"{scale['features']:.4g} (features)", flush=True)
        return scale

    scale = handoff.rank_zero("semantic_calibration", calibrate)
    table, grids = sweep_table(scale, size, cfg.baselines)
    sweeps = list(VARIANTS) + list(cfg.baselines)
    settings = baseline_settings(sweeps, grids, size, conditions, cfg.seed, sampling.guidance, table)
    name = f"{Path(cfg.model).name}-semantic-{size}"
    config = config_dict(cfg) | {"size": size, "calibration": scale,
                                 "sweeps": {s: {k: v for k, v in table[s].items()} for s in sweeps}}
    result, seconds = launch("semantic", cfg, settings=settings, model=model, spec=spec, sampling=sampling,
                             name=name, config=config, reference=settings[0].name)  # latent-0: radius 0
    s = settings[0]
    return Generated(result.run_dir, [(result, seconds)], lambda out: [
        ("groups", sweep_counts(settings, sweeps)),
        ("protocol", f"rounds {list(s.rounds)} per condition, conditions {list(s.conditions)}, same seeds everywhere"),
        ("calibration", f"median {scale['diffusion']:.4g} (diffusion), {scale['features']:.4g} (features)"),
        ("real data", out["reference"]),
    ])


EXPERIMENT = Experiment(
    name="semantic", doc=__doc__, generate=generate,
    title="Latent vs semantic vs scheduled SPELL, each at its F(P, C)-selected radius",
    flags=[f for f in GENERATION if f not in ("protected", "prompts")],  # built-in models with a feature map
    own_flags={
        "--baselines": dict(type=str, nargs="*", default=list(DEFAULT_BASELINES),
                            help="baseline sweeps beside the variants on the fronts (default: cfg pg; none: "
                                 "--baselines with no name)"),
    })
main, command = skeleton.command(EXPERIMENT)
parser = partial(skeleton.parser, EXPERIMENT)

if __name__ == "__main__":
    command()
