"""One analysis driver: an experiment's analysis is one `Analysis` entry (which groups, its statistics, its figures,
its files, its W&B runs), and what every analysis shares is defined once here:

    load_run(entry, run_dir)        the run's groups, checked, unwritten units dropped, measured samples only
                                    (`load.measured`, applied here once; `.every` keeps every round)
    latest_run(entry)               the newest run directory under runs/<experiment>
    analyse_run(entry, run_dir)     statistics -> figures (PNG + PDF) -> files (CSV, Markdown) -> W&B, no model run
    main(entry, argv)               `python -m spell_lab.analysis.EXPERIMENT RUN_DIR`: the re-render command

An experiment's analysis is two modules: `analysis/<experiment>.py`, its statistics (pure functions) and its entry,
and `analysis/<experiment>_figures.py`, what is drawn from them (figures, the W&B runs that carry them), which the
entry names with `lazy` (imported when drawn: the statistics never import their figures). The group order and the
reference group are the run's (the store's root attributes, `load.run_layout`), never declared here again.
"""

from __future__ import annotations

import importlib
import warnings
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable

from .. import cli
from . import load, plots


def _none(*args, **kwargs):
    return []


def lazy(module: str, name: str) -> Callable:
    """`module.name`, imported on the first call: how an entry names its figures module's functions."""
    def call(*args, **kwargs):
        return getattr(importlib.import_module(module), name)(*args, **kwargs)

    call.__name__ = call.__qualname__ = name
    return call


@dataclass(frozen=True)
class Analysis:
    experiment: str
    select: Callable[[dict], list[str]]  # the group names it analyses, in their order, from a store's groups
    statistics: Callable[..., dict]  # (datasets, run_dir, **options) -> {"table": ..., anything figures/files use}
    figures: Callable[[dict, dict], dict]  # (datasets, result) -> {file stem: matplotlib Figure}
    files: Callable[[dict], dict]  # result -> {file name: text}, written beside the figures
    wandb_runs: Callable[[dict, dict, dict], list]  # (datasets, result, {figure: png path}) -> [wandb_log.RunLog]
    format_table: Callable  # result["table"] -> the text the re-render command prints
    none_found: str = "has no groups of this experiment"  # load's message when `select` finds none
    keep: tuple[str, ...] = ()  # large variables loaded too (x0 for metrics)
    stores: Callable[[Path], list[Path]] | None = None  # several stores under one run directory (one per model)
    summary_lines: Callable[[dict], list[str]] = _none  # extra lines the re-render command prints
    flags: Callable | None = None  # (parser) -> None: the re-render command's own flags
    options: Callable | None = None  # (args, datasets) -> analyse_run keywords, checked before anything is written
    extra: dict = field(default_factory=dict)


ANALYSES: dict[str, Analysis] = {}


def register(entry: Analysis) -> Analysis:
    ANALYSES[entry.experiment] = entry
    return entry


def store_dirs(entry: Analysis, run_dir) -> list[Path]:
    run_dir = Path(run_dir)
    if run_dir.name == "store.zarr":
        run_dir = run_dir.parent
    return entry.stores(run_dir) if entry.stores is not None else [run_dir]


def load_run(entry: Analysis, run_dir) -> load.Groups:
    """The run's groups that `entry.select` names, checked and loaded, each its measured samples (`load.measured`,
    applied here and nowhere else; `.every` has every round); several stores: keyed `<store dir>/<group>`."""
    return load.measured_groups(_load_groups(entry, run_dir))


def _load_groups(entry: Analysis, run_dir) -> load.Groups:
    dirs = store_dirs(entry, run_dir)
    if entry.stores is None:
        return load.load_run(dirs[0], experiment=entry.experiment, select=entry.select, keep=entry.keep,
                             none_found=entry.none_found)
    out = load.Groups()
    for d in dirs:
        groups = load.load_run(d, experiment=entry.experiment, select=entry.select, keep=entry.keep,
                               none_found=entry.none_found)
        out.update({f"{d.name}/{n}": ds for n, ds in groups.items()})
        out.units_missing += groups.units_missing
        out.units_total += groups.units_total
    return out


def latest_run(entry: Analysis, root: str | None = None) -> Path:
    """The most recently modified run directory under root (default runs/<experiment>; relative paths are also tried
    from the parent of cwd, so notebooks/ finds ../runs)."""
    root = root or f"runs/{entry.experiment}"
    pattern = "store.zarr" if entry.stores is None else "*/store.zarr"
    for base in (Path(root), Path("..") / root):
        runs = sorted((p for p in base.glob("*") if p.is_dir() and any(p.glob(pattern))),
                      key=lambda p: p.stat().st_mtime)
        if runs:
            return runs[-1].resolve()
    raise FileNotFoundError(f"no run under {root}; run `python -m spell_lab.experiments.{entry.experiment}` first "
                            f"or set SPELL_RUN_DIR to a run directory.")


def analyse_run(entry: Analysis, run_dir, *, wandb_mode: str = "offline", project: str = "spell_lab",
                group: str | None = None, out_dir=None, datasets: dict | None = None, **options) -> dict:
    """The analysis of a run: its statistics, the figures (RUN_DIR/figures, PNG and PDF), its files and W&B
    (offline under RUN_DIR by default); no model runs. Returns the statistics' result with "figures",
    "figures_dir" and "wandb_dirs"."""
    from .wandb_log import log_runs, store_key

    run_dir = Path(run_dir)
    datasets = load_run(entry, run_dir) if datasets is None else datasets
    result = entry.statistics(datasets, run_dir, **options)
    out_dir = Path(out_dir) if out_dir is not None else run_dir / "figures"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        figures = {name: plots.save(fig, out_dir, name) for name, fig in entry.figures(datasets, result).items()}
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, text in entry.files(result).items():
        paths[name] = out_dir / name
        paths[name].write_text(text)
    images = {k: (v["png"] if isinstance(v, dict) else v) for k, v in figures.items()}
    runs = [] if wandb_mode == "disabled" else entry.wandb_runs(datasets, result, images)  # disabled: none built
    key = "+".join(store_key(d) for d in store_dirs(entry, run_dir))
    wandb_dirs = log_runs(runs, project=project, group=group or f"{entry.experiment}-{run_dir.name}", run_dir=run_dir,
                          mode=wandb_mode, job_type=f"{entry.experiment}-analysis", key=key)
    return result | {"figures": figures, "figures_dir": out_dir, "files": paths, "wandb_dirs": wandb_dirs}


def main(entry: Analysis, argv=None) -> int:
    """`python -m spell_lab.analysis.EXPERIMENT RUN_DIR`: figures, tables and W&B again from a store, no model run;
    a user error is one line and exit code 2 (spell_lab.cli)."""
    experiment = entry.experiment
    p = cli.parser(f"python -m spell_lab.analysis.{experiment}",
                   f"Re-render the {experiment} figures and table of a run from its store (no model is run).")
    p.add_argument("run_dir", type=str, help=f"run directory, e.g. runs/{experiment}/<run-name>")
    p.add_argument("--wandb", choices=("offline", "disabled", "online"), default="offline",
                   help="W&B logging: offline into RUN_DIR/wandb (default), disabled, or online (uploads)")
    p.add_argument("--project", type=str, default="spell_lab", help="W&B project (default: spell_lab)")
    p.add_argument("--group", type=str | None, default=None, help=f"W&B group (default: {experiment}-<run-name>)")
    p.add_argument("--out", type=str | None, default=None, help="figure directory (default: RUN_DIR/figures)")
    if entry.flags is not None:
        entry.flags(p)

    def run(argv) -> int:
        args = p.parse_args(argv)
        run_dir = Path(args.run_dir).parent if Path(args.run_dir).name == "store.zarr" else Path(args.run_dir)
        cli.check_writable_dir(args.out if args.out is not None else run_dir / "figures")  # read-only: refused now
        datasets = load_run(entry, Path(args.run_dir))
        extra = entry.options(args, datasets) if entry.options is not None else {}
        res = analyse_run(entry, Path(args.run_dir), wandb_mode=args.wandb, project=args.project, group=args.group,
                          out_dir=None if args.out is None else Path(args.out), datasets=datasets, **extra)
        print(entry.format_table(res["table"]))
        for line in entry.summary_lines(res):
            print(line)
        print(f"\nfigures: {res['figures_dir']}  ({', '.join(res['figures'])}; PNG and PDF)")
        for d in res["wandb_dirs"]:
            print(f"wandb: {d}" + ("   (upload: wandb sync DIR)" if args.wandb == "offline" else ""))
        partial_line = load.missing_line(datasets)
        if partial_line:
            print(f"\n{partial_line}")
        return 0

    return cli.run(run, argv)


def bind(entry: Analysis):
    """(load_run, latest_run, analyse_run, main) of one entry, for its module to export."""
    return (partial(load_run, entry), partial(latest_run, entry), partial(analyse_run, entry), partial(main, entry))
