"""One experiment skeleton: what every generating experiment shares, in one place.

An experiment is one `Experiment` entry: its name (the command `python -m spell_lab.experiments.NAME`, the run
directory `runs/NAME/...` and its analysis entry in `spell_lab.analysis.driver`), the shared flags it takes and
its own flags as plain data, and `generate(cfg, size) -> Generated`: its checks, plan and launch(es) through
`common.launch` (run directory, resume, --fresh, devices, progress). `run(entry, argv)` does the rest the same way
for every experiment: the parser and its one-line errors, W&B's mode, the size, one handoff launch around the
generation (rank 0's decisions reach the DDP ranks through `spell_lab.run.handoff`, in the folder the run
directory goes into), the analysis (the driver's `analyse_run`: figures, tables, W&B) on rank 0 only, and the
summary screen that ends with where everything landed.
"""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable, Sequence

from ..run import handoff
from .common import (GENERATION, Timer, base_parser, print_summary, reports, run_cli, run_lines, runs_folder,
                     set_wandb_mode, size_of, wandb_line)


@dataclass
class Generated:
    """What `generate` made: the run directory the analysis reads, each launch's (RunResult, seconds), and the
    experiment's own summary lines given the analysis' result. `summary`: (title, lines, table) of an experiment
    that analysed as it generated (calibrate --select: the radius sweep needs the CFG tuning's F first), printed as
    it is instead of the driver's analysis."""
    run_dir: Path | None
    launches: list
    lines: Callable[[dict], list[tuple[str, str]]] = lambda out: []
    summary: tuple | None = None


@dataclass(frozen=True)
class Experiment:
    name: str
    doc: str  # the module docstring: its first paragraph is the command's description
    title: str  # the summary screen's title
    generate: Callable  # (cfg, size) -> Generated
    flags: Sequence[str] = GENERATION  # the shared flags it takes (common.FLAGS)
    own_flags: dict = field(default_factory=dict)  # its own flags: {"--radius": dict(type=float, default=..., help=...)}


def parser(entry: Experiment):
    p = base_parser(entry.name, entry.doc.split("\n\n")[0], entry.flags)
    for flag, kwargs in entry.own_flags.items():
        names = (flag,) if isinstance(flag, str) else tuple(flag)
        p.add_argument(*names, **kwargs)
    return p


def run(entry: Experiment, argv=None) -> int:
    """Parse, generate, and on rank 0 analyse and print the summary."""
    from ..analysis import driver

    cfg = parser(entry).parse_args(argv)
    set_wandb_mode(cfg.wandb)
    with handoff.launch(runs_folder(entry.name, cfg)):  # rank 0's decisions reach the DDP ranks through it
        gen = entry.generate(cfg, size_of(cfg))
    if gen.launches and not reports(gen.launches[-1][0]):
        return 0  # a DDP rank: rank 0 analyses and reports
    if gen.summary is not None:
        print_summary(*gen.summary)
        return 0
    importlib.import_module(f"spell_lab.analysis.{entry.name}")  # registers its analysis entry
    analysis = driver.ANALYSES[entry.name]
    with Timer() as t:
        out = driver.analyse_run(analysis, gen.run_dir, wandb_mode=cfg.wandb, project=cfg.wandb_project)
    first = run_lines(*gen.launches[0]) if len(gen.launches) == 1 else [("run directory", str(gen.run_dir))]
    lines = first + gen.lines(out) + [
        ("analysis", f"{t.seconds:.1f} s"),
        ("figures", f"{out['figures_dir']}  ({', '.join(out['figures'])})"),
        ("W&B", wandb_line(out["wandb_dirs"], cfg.wandb)),
    ]
    print_summary(entry.title, lines, analysis.format_table(out["table"]))
    return 0


def command(entry: Experiment):
    """(main, the `python -m` entry point) of an experiment."""
    main = partial(run, entry)
    return main, lambda: sys.exit(run_cli(main))
