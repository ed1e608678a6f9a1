"""The protection benchmark (paper Section 4.6, Table 2; Appendix G) on a built-in model's own training set.

    python -m spell_lab.experiments.protection [--model fashion|digits] [--data DIR]

The protected set is the model's training items in its diffusion space (the registry's `training_set`: digits' 1797
images; fashion's 60,000 Fashion-MNIST training images encoded by its VAE, cached, read from --data or Debian's
dataset-fashion-mnist), optionally grown to --set_size items by deterministic image-space augmentations; the run
directory keeps the set it used as `protected.npy`. The same seeds are
generated without SPELL (`baseline`) and with SPELL repelling from the set under each search (`--searches`), one
store group each; the table, the leak-rate-against-time figure, the Figure 7 gallery and W&B follow.

The radius rule (unless --radius is given): generate a calibration batch without SPELL on seeds of its own
(seed + 1,000,000 + i), measure each output's distance to its nearest protected item (exhaustive, float64), and
take the --too_close quantile of those distances (default 7.6%, the share of MDTv2's outputs Table 2 finds too close
to ImageNet without SPELL): a radius at which the baseline leaves about that share of outputs inside a shield.
"""

from __future__ import annotations

import os
import tempfile
from functools import partial
from pathlib import Path

import numpy as np

from ..methods import spell_method
from ..models import load_model
from ..models.registry import require_training_set, training_set
from ..plan import Setting
from ..protect import protected_spec
from . import skeleton
from .common import (GENERATION, Timer, check_choices, check_spell_knobs, conditions_for, config_dict, launch,
                     run_dir_for, sampling_for)
from .skeleton import Experiment, Generated

EXPERIMENT = "protection"
MAX_ITER = 8  # overlap-aware correction: corrections per evaluation at most
CACHE_MARGIN = 0.5  # the candidate cache's margin m, as a multiple of the radius
# Searches as plain data: the protected-set index (spell_lab.protect) and extra SPELL parameters (`method`).
SEARCHES = {
    "exact": dict(index="exact", note="exhaustive exact search"),
    "ivf_exact": dict(index="faiss", exact=True, nprobe=1, note="exact search over the bound index"),
    "ivf_exact_cache": dict(index="faiss", exact=True, nprobe=1, cache=True, note="exact search over the bound index + cache"),
    **{f"ivf{k}": dict(index="faiss", exact=False, nprobe=k, note=f"IVFFlat, {k} probe{'s' if k > 1 else ''}")
       for k in (1, 2, 3, 5, 10)},
    "overlap": dict(index="exact", method=dict(overlap="iterate", max_iter=MAX_ITER),
                    note=f"exhaustive exact, overlap-aware correction (<= {MAX_ITER} iterations)"),
}
BASELINE = "baseline"
SIZE_SEARCHES = {"quick": ("exact", "ivf_exact", "ivf_exact_cache", "ivf1", "overlap"), "default": tuple(SEARCHES),
                 "full": tuple(SEARCHES)}
SIZE_CONDITIONS = {"quick": 2, "default": 10, "full": 10}
SIZE_PER_CONDITION = {"quick": 6, "default": 12, "full": 64}  # >= 6: per-condition precision/recall use k = 5
SIZE_SET = {"quick": None, "default": None, "full": 100_000}  # None: the training images only
TOO_CLOSE = {"quick": 0.3, "default": 0.076, "full": 0.076}  # the radius rule's target share (see the docstring)
K = 5


def search_spec(name: str, path, radius: float) -> tuple[dict, dict]:
    """(protected-set spec, extra method parameters) of one search."""
    spec = dict(SEARCHES[name])
    spec.pop("note")
    extra = spec.pop("method", {})
    index = spec.pop("index")
    if index == "faiss":
        margin = float(f"{CACHE_MARGIN * radius:.4g}") if spec.pop("cache", False) else None
        spec = dict(exact=spec["exact"], nprobe=spec["nprobe"], nlist=None, cache_margin=margin)
    return protected_spec(path, index, **spec), extra


def build_settings(searches, path, radius, overcomp, conditions, per_condition, batch, seed) -> list[Setting]:
    """`baseline` (no SPELL, no protected set: the plain sampler's time) and one SPELL setting per search, all on the
    same seeds and rounds."""
    check_choices("--searches", searches, SEARCHES, "search", "search(es)")
    check_spell_knobs(radius, overcomp, " (got {radius}); the baseline group is the run without SPELL.")
    if per_condition < K + 1:
        raise ValueError(f"--per_condition must be >= {K + 1}: per-condition precision/recall use k = {K} neighbours "
                         f"(got {per_condition}).")
    b = batch or per_condition
    if b < 1 or per_condition % b:
        raise ValueError(f"--per_condition ({per_condition}) must be a multiple of --batch ({b}).")
    common = dict(rounds=(b,) * (per_condition // b), conditions=tuple(conditions), seed=seed)
    settings = [Setting(BASELINE, spell_method(0.0), **common, note="no SPELL; judged against the set afterwards")]
    for name in searches:
        spec, extra = search_spec(name, path, radius)
        settings.append(Setting(name, {**spell_method(radius, overcomp), **extra}, spec, **common,
                                note=SEARCHES[name]["note"]))
    return settings


def protected_items(name: str, model, set_size: int | None, seed: int, data_dir=None) -> np.ndarray:
    """The model's training items in its diffusion space, grown to set_size by augmentation: (N, *shape) float32."""
    return training_set(name, model, set_size, seed, data_dir)


def calibrate_radius(model, items, conditions, per_condition, sampling, seed, share) -> dict:
    """The radius rule (module docstring): the `share` quantile of the calibration outputs' nearest-item distances."""
    import torch

    from ..analysis.protection import nearest_items
    from ..calibration import CALIBRATION_SEED_OFFSET, calibration_batch

    threads = torch.get_num_threads()
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(1)  # as the run itself (run_generation): 2 threads on a loaded CPU ran 7x slower here
    with Timer() as timer:
        x0, _ = calibration_batch(model, conditions, per_condition, seed=seed, sampler=sampling.sampler,
                                  steps=sampling.steps, guidance=sampling.guidance)
        dist, _ = nearest_items(x0, torch.from_numpy(items))
    torch.set_num_threads(threads)
    radius = float(f"{float(np.quantile(dist, share)):.4g}")  # 4 digits: the radius is part of the fingerprint
    return dict(radius=radius, rule=f"{share:.3g} quantile of the calibration outputs' nearest-item distance",
                share=share, samples=len(dist), first_seed=seed + CALIBRATION_SEED_OFFSET,
                median_nearest=float(np.median(dist)), seconds=round(timer.seconds, 2))


SET_COPIES = 3  # the items, the encoder's output batch list and the index's own copy are in memory at once


def available_memory() -> int | None:
    """Bytes the machine can still give (MemAvailable), None where unknown."""
    try:
        with open("/proc/meminfo") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        return None


def check_memory(set_size: int, dims: int) -> None:
    """Refuse a protected set that cannot fit, from an estimate, before spending minutes building part of it."""
    need, have = SET_COPIES * 4 * dims * set_size, available_memory()
    if have is not None and need > have:
        raise ValueError(f"--set_size {set_size} needs about {need / 2**30:.1f} GiB ({set_size} items x {dims} "
                         f"dimensions x 4 bytes x {SET_COPIES} copies); this machine has {have / 2**30:.1f} GiB "
                         "available. Choose a smaller --set_size.")


def set_path(cfg, name: str, items: np.ndarray) -> Path:
    """RUN_DIR/protected.npy for this run: the run directory the flags name (with --fresh, the next free one beside
    it), written once; a directory that holds a run made from another set is refused, left untouched."""
    from ..run import handoff
    from ..run.launch import run_dirs

    chosen = handoff.received("run_dir")
    if chosen is not None:
        return Path(chosen) / "protected.npy"  # a DDP rank: rank 0 chose the directory and wrote the set
    out = run_dir_for(EXPERIMENT, cfg, name)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; give a directory for the run (it is created if missing).")
    for candidate in run_dirs(out):
        if not ((candidate / "store.zarr").exists() or (candidate / "protected.npy").exists()):
            break
        path = candidate / "protected.npy"
        same = path.exists() and _same(path, items)
        if same and not cfg.fresh:
            return path  # resume: the store's fingerprint (the set's digest included) decides the rest
        if not cfg.fresh:
            raise ValueError(f"{candidate} holds a run made from another protected set (or none); it was left "
                             "untouched. Pass --fresh to start a new run beside it, or --out to choose another directory.")
    candidate.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=candidate, prefix=".protected-", suffix=".npy", delete=False) as f:
        np.save(f, items)  # a name of its own: two commands into one directory never write the same file
    Path(f.name).replace(candidate / "protected.npy")
    return candidate / "protected.npy"


def _same(path: Path, items: np.ndarray) -> bool:
    held = np.load(path, mmap_mode="r")
    return held.shape == items.shape and bool(np.array_equal(held, items))


def generate(cfg, size: str) -> Generated:
    searches = [s.strip() for s in cfg.searches.split(",") if s.strip()] if cfg.searches else list(SIZE_SEARCHES[size])
    per_condition = cfg.per_condition or SIZE_PER_CONDITION[size]
    share = TOO_CLOSE[size] if cfg.too_close is None else cfg.too_close
    if not 0 < share < 1:
        raise ValueError(f"--too_close must be a share between 0 and 1 (got {share}).")
    if cfg.set_size is not None and cfg.set_size < 1:
        raise ValueError(f"--set_size must be at least the model's training items (got {cfg.set_size}).")
    if (cfg.calibration_per_condition or 2) < 2:
        raise ValueError("--calibration_per_condition must be >= 2.")
    radius = 1.0 if cfg.radius is None else cfg.radius
    build_settings(searches, "protected.npy", radius, cfg.overcomp, [0], per_condition, cfg.batch, 0)  # before
    require_training_set(cfg.model)
    model, spec = load_model(cfg.model), {"name": cfg.model}  # anything is built or written: every check that can refuse
    check_memory(cfg.set_size or SIZE_SET[size] or 0, int(np.prod(model.sample_shape)))
    conditions = conditions_for(model, SIZE_CONDITIONS[size], cfg.classes)
    sampling = sampling_for(cfg, model, size)
    items = protected_items(cfg.model, model, cfg.set_size or SIZE_SET[size], cfg.augment_seed, cfg.data)
    protection = _radius(cfg, model, items, conditions, cfg.calibration_per_condition or per_condition, sampling, share)
    name = f"{cfg.model}-n{len(items)}-r{protection['radius']:g}-{size}"
    path = set_path(cfg, name, items)  # the first thing written
    settings = build_settings(searches, path, protection["radius"], cfg.overcomp, conditions, per_condition,
                              cfg.batch, cfg.seed)
    cfg.out, cfg.fresh = str(path.parent), False  # the directory set_path chose (with --fresh: the new one)
    config = config_dict(cfg) | {"protection": protection | {"set_size": len(items)}, "size": size}
    result, seconds = launch(EXPERIMENT, cfg, settings=settings, model=model, spec=spec, sampling=sampling,
                             name=name, config=config, reference=BASELINE)
    s = settings[0]
    return Generated(result.run_dir, [(result, seconds)], lambda out: [
        ("protected set", f"{len(items)} items ({result.run_dir / 'protected.npy'})"),
        ("radius", f"{protection['radius']:g} ({protection['rule']})"),
        ("plan", f"rounds {list(s.rounds)} per condition, conditions {list(s.conditions)}, same seeds per search"),
        ("judged", "too close = within r of a protected item, exhaustive float64 search of the stored outputs"),
        ("real data", out["reference"]),
    ])


def _radius(cfg, model, items, conditions, per_condition, sampling, share) -> dict:
    from ..run import handoff

    if cfg.radius is not None:
        return dict(radius=float(cfg.radius), rule="given (--radius)")

    def rule() -> dict:  # rank 0 only: the DDP ranks it launches get the same radius, bit for bit
        cal = calibrate_radius(model, items, conditions, per_condition, sampling, cfg.seed, share)
        print(f"radius rule: r = {cal['radius']:g}, the {share:.3g} quantile of {cal['samples']} calibration outputs' "
              f"nearest protected distance (median {cal['median_nearest']:.4g}; {cal['seconds']:.1f} s)", flush=True)
        return cal

    return handoff.rank_zero("protection_radius", rule)


ENTRY = Experiment(
    name=EXPERIMENT, doc=__doc__, title="SPELL protection benchmark (Table 2)", generate=generate,
    flags=[f for f in GENERATION if f not in ("protected", "prompts")]  # a built-in model: its own training set
    + ["per_condition", "batch", "calibration_per_condition"],
    own_flags={
        "--searches": dict(type=str | None, default=None,
                           help=f"comma-separated subset of {','.join(SEARCHES)} (default by size: quick "
                                f"{','.join(SIZE_SEARCHES['quick'])}; otherwise all)"),
        "--radius": dict(type=float | None, default=None, help="shield radius (default: the radius rule)"),
        "--too_close": dict(type=float | None, default=None,
                            help="the radius rule's target: the share of calibration outputs without SPELL inside a "
                                 "shield (default 0.076, the paper's 7.6%%; quick 0.3)"),
        "--overcomp": dict(type=float, default=1.1,
                           help="overcompensation lambda (1.1: outputs put on a shield's sphere clear it despite rounding)"),
        ("--set_size", "--set-size"): dict(type=int | None, default=None, help="protected items: the model's training "
                                           "items grown by augmentation (default: the training items alone; full "
                                           "100000)"),
        "--data": dict(type=str | None, default=None, help="directory of the Fashion-MNIST IDX files (fashion; "
                                                           "default: Debian's dataset-fashion-mnist)"),
        "--augment_seed": dict(type=int, default=0, help="seed of the augmentations"),
    })
main, command = skeleton.command(ENTRY)
parser = partial(skeleton.parser, ENTRY)

if __name__ == "__main__":
    command()
