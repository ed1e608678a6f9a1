"""`python -m spell_lab.analysis.EXPERIMENT RUN_DIR`: an experiment's figures, table and W&B again from its store,
without running a model (the command-line edge every analysis module shares; parsing and errors: spell_lab.cli)."""

from __future__ import annotations

from pathlib import Path

from .. import cli
from .load import missing_line


def rerender_main(argv, *, experiment: str, load_run, analyse_run, format_table, extra_lines=lambda res: [],
                  add_arguments=None, options=None) -> int:
    """`python -m spell_lab.analysis.EXPERIMENT RUN_DIR`: figures, table and W&B again from a store, no model run.
    An analysis's own flags: `add_arguments(parser)` declares them, `options(args, datasets)` turns them into extra
    keyword arguments of analyse_run, checked before anything is written (a ValueError: one line, exit code 2)."""
    p = cli.parser(f"python -m spell_lab.analysis.{experiment}",
                   f"Re-render the {experiment} figures and table of a run from its store (no model is run).")
    p.add_argument("run_dir", type=str, help=f"run directory, e.g. runs/{experiment}/<run-name>")
    p.add_argument("--wandb", choices=("offline", "disabled", "online"), default="offline",
                   help="W&B logging: offline into RUN_DIR/wandb (default), disabled, or online (uploads)")
    p.add_argument("--project", type=str, default="spell_lab", help="W&B project (default: spell_lab)")
    p.add_argument("--group", type=str | None, default=None, help=f"W&B group (default: {experiment}-<run-name>)")
    p.add_argument("--out", type=str | None, default=None, help="figure directory (default: RUN_DIR/figures)")
    if add_arguments is not None:
        add_arguments(p)

    def main(argv) -> int:
        args = p.parse_args(argv)
        datasets = load_run(Path(args.run_dir))
        extra = options(args, datasets) if options is not None else {}
        res = analyse_run(Path(args.run_dir), wandb_mode=args.wandb, project=args.project, group=args.group,
                          out_dir=None if args.out is None else Path(args.out), datasets=datasets, **extra)
        print(format_table(res["table"]))
        for line in extra_lines(res):
            print(line)
        print(f"\nfigures: {res['figures_dir']}  ({', '.join(res['figures'])}; PNG and PDF)")
        for d in res["wandb_dirs"]:
            print(f"wandb: {d}" + ("   (upload: wandb sync DIR)" if args.wandb == "offline" else ""))
        partial = missing_line(datasets)
        if partial:
            print(f"\n{partial}")
        return 0

    return cli.run(main, argv)
