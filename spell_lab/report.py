"""A W&B report that reproduces the paper's figures from a project's runs (wandb-workspaces), for online users.

    python -m spell_lab.report --project spell_lab [--entity ME] [--group sparsity-<run-name>]

The experiments log offline by default; after `wandb sync RUN_DIR/wandb/offline-run-*` the runs are in the project
and this builds one report over them: Figure 5a/b (relative magnitude and active share over t, one line per setup),
Figure 9b (stopped for good), the shields by source (each also against the step's noise level sigma/alpha, log
scale), the summary numbers (the active share at the paper's noise levels beside the model's own t), the gallery,
and Figure 3 (metrics against the radius) from radius runs. `build_report` is pure (no network); only `main` saves, and only with a
W&B login, since a report lives on the W&B server.
"""

from __future__ import annotations

import netrc
import os
import sys

from . import cli

SPARSITY_LINES = {  # panel title -> (x, y keys): the run store's curves as logged by analysis.sparsity
    "Fig. 5a: median relative magnitude of the correction (active trajectories)": ("curve/t", ["curve/rel_median_active"]),
    "Fig. 5b: share of trajectories SPELL corrects": ("curve/t", ["curve/active_share"]),
    "Fig. 9b: ever-active trajectories stopped for good": ("curve/t", ["curve/stopped_share"]),
    "Active shields by source": ("curve/t", ["curve/active_batch_mean", "curve/active_memory_mean",
                                             "curve/active_protected_mean"]),
}
# the same curves against each step's noise level (log x): where the paper's and every model's steps are comparable
SPARSITY_NOISE_LINES = {f"{title}, against σ/α": ("curve/sigma_alpha", y) for title, (_, y) in SPARSITY_LINES.items()}
SPARSITY_BARS = {"Share active at the paper's t = 0.8 and 0.6 noise levels, sigma/alpha 5.11 and 2.28 (paper: 40% / 21%)":
                 ["active_at_paper_0_8", "active_at_paper_0_6"],
                 "Share active at this model's t = 0.8 and 0.6": ["active_at_0_8", "active_at_0_6"],
                 "Share of trajectories SPELL changed": ["share_changed"]}
RADIUS_LINES = {  # Figure 3, from the radius runs (one row per radius, x = radius)
    "Fig. 3: precision, recall, density, coverage against the radius": ("curve/radius", [
        "curve/precision", "curve/recall", "curve/density", "curve/coverage"]),
    "Fig. 3: Vendi against the radius": ("curve/radius", ["curve/vendi", "curve/vendi_raw"]),
    "Repellency duration against the radius": ("curve/radius", ["curve/mean_active_share", "curve/share_changed"]),
}


def build_report(project: str, entity: str = "", group: str | None = None):
    """The report specification: one panel grid of sparsity runs grouped by setup, one of radius runs."""
    import wandb_workspaces.reports.v2 as wr

    def runset(name, job_type):
        filters = f"JobType = '{job_type}'" + (f" and Group = '{group}'" if group else "")
        return wr.Runset(entity=entity, project=project, name=name, filters=filters, groupby=["config.setup"])

    sparsity = wr.PanelGrid(
        runsets=[runset("sparsity runs", "sparsity-analysis")],
        panels=[wr.LinePlot(title=t, x=x, y=y, smoothing_factor=0.0) for t, (x, y) in SPARSITY_LINES.items()]
        + [wr.LinePlot(title=t, x=x, y=y, smoothing_factor=0.0, log_x=True) for t, (x, y) in SPARSITY_NOISE_LINES.items()]
        + [wr.BarPlot(title=t, metrics=m) for t, m in SPARSITY_BARS.items()]
        + [wr.MediaBrowser(title="Fig. 6: gallery", media_keys=["figure/gallery"])],
    )
    radius = wr.PanelGrid(
        runsets=[runset("radius runs", "radius-analysis")],
        panels=[wr.LinePlot(title=t, x=x, y=y, smoothing_factor=0.0) for t, (x, y) in RADIUS_LINES.items()],
    )
    return wr.Report(
        project=project, entity=entity, title="SPELL: sparsity and radius (spell_lab)",
        description="Sparse repellency measured step by step; panels follow the paper's figures.",
        blocks=[wr.H1("Sparsity (Section 4.4, Fig. 5, App. F)"), sparsity,
                wr.H1("Radius (Section 4.3, Fig. 3)"), radius],
    )


def has_login() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("://")[-1].split("/")[0]
    try:
        return netrc.netrc().authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False
    except OSError as err:  # e.g. a ~/.netrc this user cannot read: one line, not a traceback
        raise ValueError(f"cannot read {err.filename or '~/.netrc'} ({err.strerror}); make it readable "
                         "(chmod 600) or set WANDB_API_KEY, then run this again. Nothing was sent.") from None


def main(argv=None) -> int:
    p = cli.parser("python -m spell_lab.report", __doc__.split("\n\n")[0])
    p.add_argument("--project", type=str, default="spell_lab", help="W&B project holding the synced runs")
    p.add_argument("--entity", type=str, default="", help="W&B entity (default: your default entity)")
    p.add_argument("--group", type=str | None, default=None, help="only the runs of this W&B group, e.g. sparsity-<run-name>")
    args = p.parse_args(argv)
    if not has_login():
        print("error: a W&B report lives on the W&B server and needs a login: run `wandb login` (or set "
              "WANDB_API_KEY), sync the offline runs with `wandb sync RUN_DIR/wandb/offline-run-*`, then run this "
              "again. Nothing was sent.", file=sys.stderr)
        return 2
    os.environ["WANDB_MODE"] = "online"  # the user asked for the server: this command exists for it
    report = build_report(args.project, args.entity, args.group)
    report.save()
    print(f"report: {report.url}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
