"""What every experiment entry point shares: the common flags, model loading, run directory and the summary screen."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from jsonargparse import ActionConfigFile, ArgumentParser

SIZES = ("quick", "default", "full")


def base_parser(experiment: str, description: str) -> ArgumentParser:
    p = ArgumentParser(prog=f"python -m spell_lab.experiments.{experiment}", description=description, env_prefix="SPELL_LAB")
    p.add_argument("--config", action=ActionConfigFile, help=f"a YAML config, e.g. experiments/{experiment}.yaml")
    p.add_argument("--model", type=str, default="digits", help="gmm, digits, or a diffusers hub id / local directory")
    p.add_argument("--sampler", type=str | None, default=None, help="ddim, ddpm, euler, heun, flow_euler (default: the model's)")
    p.add_argument("--steps", type=int | None, default=None, help="sampling steps (default: the model's)")
    p.add_argument("--guidance", type=float | None, default=None, help="classifier-free guidance weight (default: the model's)")
    p.add_argument("--classes", type=list[int] | None, default=None, help="conditions to generate (default: by size)")
    p.add_argument("--prompts", type=str | None, default=None, help="a text file of prompts, one a line (diffusers models)")
    p.add_argument("--protected", type=str | None, default=None, help="a protected set (.npy/.pt/.safetensors) every SPELL setting also repels from")
    p.add_argument("--seed", type=int, default=0, help="seed of the first sample; sample i uses seed + i")
    p.add_argument("--out", type=str | None, default=None, help=f"run directory (default runs/{experiment}/<run-name>)")
    p.add_argument("--run_name", type=str | None, default=None, help="name of the run directory under runs/")
    p.add_argument("--fresh", action="store_true", help="start a new run beside an existing one instead of resuming")
    p.add_argument("--quick", action="store_true", help="smoke-test size (about a minute on a CPU)")
    p.add_argument("--full", action="store_true", help="paper size")
    p.add_argument("--devices", type=int, default=1, help="processes/devices (Lightning DDP shards work units)")
    p.add_argument("--accelerator", type=str, default="auto", help="cpu, gpu, auto (Lightning)")
    p.add_argument("--num_nodes", type=int, default=1)
    p.add_argument("--wandb", type=str, default="offline", choices=["offline", "online", "disabled"])
    p.add_argument("--wandb_project", type=str, default="spell_lab")
    p.add_argument("--no_progress", action="store_true", help="hide the progress bar")
    return p


def size_of(cfg) -> str:
    if cfg.quick and cfg.full:
        raise SystemExit("error: --quick and --full exclude each other; pick one.")
    return "quick" if cfg.quick else "full" if cfg.full else "default"


def set_wandb_mode(mode: str) -> None:
    """W&B stays offline unless the user opts in; the env var (not only `mode=`) keeps telemetry off the network."""
    os.environ["WANDB_MODE"] = mode
    os.environ.setdefault("WANDB_SILENT", "true")


def load_model_for(cfg, device="cpu"):
    """A built-in model by name; anything else is a diffusers pipeline id or directory, loaded offline."""
    from ..models import BUILTIN, load_model

    if cfg.model in BUILTIN:
        return load_model(cfg.model, device=device), {"name": cfg.model}
    from ..diffusers.model import load_pipeline_model  # heavy import only when a pipeline is asked for

    model = load_pipeline_model(cfg.model, prompts_file=cfg.prompts, sampler=cfg.sampler)
    return model, {"name": cfg.model, "prompts": model.prompts}


def run_dir_for(experiment: str, cfg, default_name: str) -> Path:
    if cfg.out:
        return Path(cfg.out)
    return Path("runs") / experiment / (cfg.run_name or default_name)


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


def run_cli(main, argv=None) -> int:
    """Run an entry point; a user error prints one clear line (no traceback) and exits 2."""
    from ..store import StoreMismatchError

    try:
        return main(argv)
    except (StoreMismatchError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


class Timer:
    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start
