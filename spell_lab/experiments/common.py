"""What every experiment entry point shares: the common flags, model loading, run directory and the summary screen."""

from __future__ import annotations

import json
import math
import os
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from jsonargparse import ArgumentParser

from .. import cli

from ..models.registry import default_name, names

SIZES = ("quick", "default", "full")


QUICK_STEPS = 12  # sampler steps of the smoke-test size

# The flags the entry points share, by name; each command takes only those it uses (an unused flag is refused by
# the parser, never silently dropped).
FLAGS = {
    "model": (("--model",), dict(type=str, default=default_name(), help=f"a built-in model ({', '.join(names())}) or a diffusers hub id / local directory")),
    "sampler": (("--sampler",), dict(type=str | None, default=None, help="ddim, ddpm, euler, heun, flow_euler (default: the model's)")),
    "steps": (("--steps",), dict(type=int | None, default=None, help="sampling steps (default: the model's)")),
    "guidance": (("--guidance",), dict(type=float | None, default=None, help="classifier-free guidance weight (default: the model's)")),
    "classes": (("--classes",), dict(type=int, nargs="+", default=None, help="conditions to generate, e.g. --classes 3 5 (default: by size)")),
    "prompts": (("--prompts",), dict(type=str | None, default=None, help="a text file of prompts, one a line (diffusers models)")),
    "protected": (("--protected",), dict(type=str | None, default=None, help="a protected set (.npy/.pt/.safetensors) every SPELL setting also repels from")),
    "seed": (("--seed",), dict(type=int, default=0, help="seed of the first sample; sample i uses seed + i")),
    "out": (("--out",), dict(type=str | None, default=None, help="run directory (default runs/EXPERIMENT/<run-name>)")),
    "run_name": (("--run_name",), dict(type=str | None, default=None, help="name of the run directory under runs/")),
    "fresh": (("--fresh",), dict(action="store_true", help="start a new run beside an existing one instead of resuming")),
    "quick": (("--quick",), dict(action="store_true", help="smoke-test size (about a minute on a CPU)")),
    "full": (("--full",), dict(action="store_true", help="paper size")),
    "devices": (("--devices",), dict(type=int | None, default=None, help="processes/devices; Lightning DDP shards the work units (default: every CPU core on a machine without GPU, every GPU otherwise)")),
    "accelerator": (("--accelerator",), dict(type=str, default="auto", help="cpu, gpu, auto (Lightning)")),
    "num_nodes": (("--num_nodes",), dict(type=int, default=1, help="nodes (Lightning)")),
    "wandb": (("--wandb",), dict(default="offline", choices=["offline", "online", "disabled"], help="W&B logging: offline into the run directory, online (uploads), disabled")),
    "wandb_project": (("--wandb_project",), dict(type=str, default="spell_lab", help="W&B project")),
    "no_progress": (("--no_progress",), dict(action="store_true", help="hide the progress bar")),
}
GENERATION = tuple(FLAGS)  # a command that generates into a run store takes every shared flag
# Flags several metric experiments share (each takes those it names; defaults by size are its own plain data).
FLAGS |= {
    "per_condition": (("--per_condition",), dict(type=int | None, default=None, help="samples per condition and setting (default: by size, see the experiment's SIZES)")),
    "batch": (("--batch",), dict(type=int | None, default=None, help="batch size of each round (default: the experiment's)")),
    "calibration_per_condition": (("--calibration_per_condition",), dict(type=int | None, default=None, help="calibration samples per condition (default: as --per_condition)")),
}


def base_parser(experiment: str, description: str, flags=GENERATION) -> ArgumentParser:
    """The parser with `--config` and the shared `flags` this command uses (names of FLAGS)."""
    preset = Path(__file__).resolve().parents[2] / "experiments" / f"{experiment}.yaml"
    p = cli.parser(f"python -m spell_lab.experiments.{experiment}", description, config_help="a YAML file of these "
                   "flags" + (f", e.g. experiments/{experiment}.yaml" if preset.exists() else ""))
    for name in flags:
        args, kwargs = FLAGS[name]
        if name == "out":
            kwargs = dict(kwargs, help=kwargs["help"].replace("EXPERIMENT", experiment))
        p.add_argument(*args, **kwargs)
    return p


def check_choices(flag: str, given, known, one: str, some: str) -> None:
    """A list flag's names (`--setups`, `--searches`): at least one, each known; `one`/`some`: "setup"/"setup(s)"."""
    if not given:
        raise ValueError(f"{flag} names no {one}; choose from {', '.join(known)}.")
    unknown = [g for g in given if g not in known]
    if unknown:
        raise ValueError(f"unknown {some} {unknown}; choose from {', '.join(known)}.")


def check_spell_knobs(radius: float, overcomp: float, radius_note: str) -> None:
    """--radius > 0 (`radius_note`: why, after "(got r)") and --overcomp > 0, both finite."""
    if not (math.isfinite(radius) and radius > 0):
        raise ValueError(f"--radius must be > 0{radius_note.format(radius=radius)}")
    if not (math.isfinite(overcomp) and overcomp > 0):
        raise ValueError(f"--overcomp must be > 0 (got {overcomp}); 1 is the exact correction.")


def size_of(cfg) -> str:
    if getattr(cfg, "quick", False) and getattr(cfg, "full", False):
        raise ValueError("--quick and --full exclude each other; pick one.")
    return "quick" if getattr(cfg, "quick", False) else "full" if getattr(cfg, "full", False) else "default"


@dataclass(frozen=True)
class Sampling:
    sampler: str
    steps: int
    guidance: float


def sampling_for(cfg, model, size: str) -> Sampling:
    """The flags' sampler, steps and guidance, else the model's defaults (quick: at most QUICK_STEPS steps)."""
    steps = cfg.steps if cfg.steps is not None else (
        min(QUICK_STEPS, model.default_steps) if size == "quick" else model.default_steps)
    if steps < 1:
        raise ValueError(f"--steps must be >= 1 (got {steps}).")
    guidance = model.default_guidance if cfg.guidance is None else cfg.guidance
    return Sampling(cfg.sampler or model.default_sampler, int(steps), guidance)


def conditions_for(model, n: int | None, classes=None, *, spaced: bool = True) -> list[int]:
    """The conditions to generate: `classes` as given (checked against the model), else n of the model's
    conditions, evenly spaced (spaced=False: the first n); n None: every one."""
    everything = list(range(model.num_classes)) or [0]
    if classes:
        bad = sorted({int(c) for c in classes} - set(everything))
        if bad:
            raise ValueError(f"conditions {bad} do not exist; the model has conditions "
                             f"{everything[0]}..{everything[-1]}.")
        return [int(c) for c in classes]
    if n is None:
        return everything
    return everything[:: max(1, len(everything) // n)][:n] if spaced else everything[:n]


def calibration_of(cfg, model, size: str, conditions, per_condition: int | None = None, grid_size: int | None = None):
    """The calibration run (spell_lab.calibration.run_calibration) at the flags' seed and sampling."""
    from ..calibration import GRID_SIZE, SIZE_PER_CONDITION, run_calibration

    sampling = sampling_for(cfg, model, size)
    return run_calibration(model, conditions, per_condition or SIZE_PER_CONDITION[size], seed=cfg.seed,
                           sampler=sampling.sampler, steps=sampling.steps, guidance=sampling.guidance,
                           grid_size=grid_size or GRID_SIZE)


def set_wandb_mode(mode: str) -> None:
    """W&B stays offline unless the user opts in; the env var (not only `mode=`) keeps telemetry off the network."""
    os.environ["WANDB_MODE"] = mode
    os.environ.setdefault("WANDB_SILENT", "true")


def load_model_for(cfg, device="cpu"):
    """A built-in model by name; anything else is a diffusers pipeline id or directory, loaded offline."""
    from ..models import is_builtin, load_model

    prompts = getattr(cfg, "prompts", None)
    if prompts is not None and not Path(prompts).is_file():
        raise FileNotFoundError(f"--prompts {prompts} does not exist (or is not a file); give a text file of prompts, "
                                "one a line.")
    if is_builtin(cfg.model):
        if prompts is not None:
            raise ValueError(f"--prompts is for diffusers models; the built-in model {cfg.model!r} is conditioned on "
                             "classes: drop --prompts (choose classes with --classes).")
        return load_model(cfg.model, device=device), {"name": cfg.model}
    from ..diffusers.model import load_pipeline_model  # heavy import only when a pipeline is asked for

    model = load_pipeline_model(cfg.model, prompts_file=cfg.prompts, sampler=cfg.sampler)
    return model, {"name": cfg.model, "prompts": model.prompts}


def run_dir_for(experiment: str, cfg, default_name: str) -> Path:
    if cfg.out:
        return Path(cfg.out)
    return Path("runs") / experiment / (cfg.run_name or default_name)


def runs_folder(experiment: str, cfg) -> Path:
    """Where the run directory goes (the parent of --out, else runs/<experiment>): known before rank 0 decides the
    run directory itself, so the DDP ranks' handoff (`spell_lab.run.handoff`) lives there."""
    return Path(cfg.out).parent if cfg.out else Path("runs") / experiment


def config_dict(cfg) -> dict:
    d = cfg.as_dict() if hasattr(cfg, "as_dict") else dict(vars(cfg))
    d.pop("config", None)
    return json.loads(json.dumps(d, default=str))


def print_summary(title: str, lines: list[tuple[str, str]], table=None) -> None:
    print(f"\n=== {title} ===", file=sys.stdout)
    if table is not None:
        print(table if isinstance(table, str) else table.to_string(float_format=lambda v: f"{v:.3f}"))
        print()
    width = max(len(k) for k, _ in lines)
    for k, v in lines:
        print(f"{k:<{width}}  {v}")


def wandb_line(dirs, mode: str) -> str:
    """Where the W&B runs landed, in one line."""
    if not dirs:
        return f"disabled (--wandb {mode})"
    where = Path(dirs[0]).parent
    upload = f"; upload: wandb sync {where}/offline-run-*" if mode == "offline" else ""
    return f"{len(dirs)} {mode} run(s) in {where}{upload}"


def launch(experiment: str, cfg, *, settings, model, spec: dict, sampling: Sampling, name: str, config: dict,
           condition_names=None, reference: str | None = None):
    """Generate `settings` into the run directory the flags name (resume, --fresh, devices, progress):
    (RunResult, seconds of generation)."""
    from ..run.launch import run_generation

    with Timer() as timer:
        result = run_generation(
            experiment=experiment, settings=settings, model=model, model_spec=spec, sampler=sampling.sampler,
            steps=sampling.steps, guidance=sampling.guidance, out=run_dir_for(experiment, cfg, name), config=config,
            fresh=cfg.fresh, devices=cfg.devices, accelerator=cfg.accelerator, num_nodes=cfg.num_nodes,
            progress=not cfg.no_progress, condition_names=condition_names, reference=reference,
        )
    return result, timer.seconds


def reports(result) -> bool:
    """Only rank 0 of a distributed run analyses, logs and prints the summary."""
    from ..run.launch import is_child_rank

    return result.is_global_zero and not is_child_rank()


def run_lines(result, seconds: float) -> list[tuple[str, str]]:
    """The summary lines every generating command starts with."""
    done = result.units_done_before
    return [
        ("run directory", str(result.run_dir)),
        ("store", str(result.store)),
        ("units", f"{result.units_total} ({done} already done, resumed)" if done else str(result.units_total)),
        ("generation time", f"{seconds:.1f} s ({result.processes} process{'es' if result.processes > 1 else ''})"),
    ]


def run_cli(main, argv=None) -> int:
    """Run an entry point (spell_lab.cli.run: a user error is one line and exit code 2); an interrupted run prints
    the command that resumes it and exits 130."""
    from ..run.launch import RunInterrupted

    def interrupted(stop) -> int:
        args = sys.argv[1:] if argv is None else list(argv)
        again = " ".join(["python", "-m", f"spell_lab.experiments.{stop.experiment}", *map(shlex.quote, args)])
        print(f"\n{stop}. Run the same command again to resume where it stopped:\n    {again}", file=sys.stderr)
        return 130

    return cli.run(main, argv, {RunInterrupted: interrupted})


class Timer:
    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start
