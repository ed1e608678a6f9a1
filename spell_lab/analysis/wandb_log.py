"""The W&B edge shared by the experiments: one W&B run per setup, all in one group, offline by default.

Nothing here reaches the network unless mode="online" is asked for explicitly: the package sets
WANDB_MODE=offline at import, runs are written under the run directory (`dir=run_dir`) and no login happens.
Upload an offline run later with `wandb sync RUN_DIR/wandb/offline-run-*`.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

MODES = ("offline", "disabled", "online")


@dataclass
class RunLog:
    """What one W&B run receives.

    curves: one row per x value (e.g. per sampler step), logged row by row so W&B draws a line per column and
    overlays the runs of a group; `x` names the column used as the x axis. series: title -> columns drawn
    together as one `wandb.plot.line_series` chart against `x`."""

    name: str
    config: dict = field(default_factory=dict)
    summary: dict = field(default_factory=dict)
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    images: dict = field(default_factory=dict)  # key -> PNG path or matplotlib Figure
    curves: pd.DataFrame | None = None
    x: str = "t"
    series: dict[str, list[str]] = field(default_factory=dict)


def plain(value):
    """JSON-friendly python value for W&B config and summaries (numpy scalars, NaN -> None, nested containers)."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, np.ndarray):
        return plain(value.tolist())
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def metric_name(key: str) -> str:
    """W&B sorts and filters only names of letters, digits and _ ("/" makes sections): active_at_0.8 -> active_at_0_8."""
    return re.sub(r"[^A-Za-z0-9_/]+", "_", str(key)).strip("_")


def config_from_attrs(attrs: dict) -> dict:
    """A store group's attributes as a W&B config: the JSON `config` attribute unpacked, the others beside it."""
    out = {k: plain(v) for k, v in attrs.items() if k != "config"}
    raw = attrs.get("config")
    if isinstance(raw, str):
        try:
            out["config"] = json.loads(raw)
        except json.JSONDecodeError:
            out["config"] = raw  # keep it visible rather than drop it
    elif raw is not None:
        out["config"] = plain(raw)
    return out


def _table(df: pd.DataFrame):
    import wandb

    df = df.reset_index() if df.index.name else df  # a named index (e.g. "setup") becomes a column
    rows = [[plain(v) for v in row] for row in df.itertuples(index=False)]
    return wandb.Table(columns=[str(c) for c in df.columns], data=rows)


def log_runs(runs: list[RunLog], *, project: str, group: str, run_dir, mode: str = "offline",
             job_type: str | None = None) -> list[Path]:
    """Log each RunLog as its own W&B run in `group`; returns the run directories (what `wandb sync` takes).
    mode="disabled" logs nothing and returns []."""
    if mode not in MODES:
        raise ValueError(f"wandb mode must be one of {MODES}, got {mode!r}.")
    if mode == "disabled":
        return []
    import wandb

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    dirs = []
    for r in runs:
        run = wandb.init(project=project, group=group, name=r.name, job_type=job_type, config=plain(r.config),
                         dir=str(run_dir), mode=mode, settings=wandb.Settings(console="off", silent=True))
        try:
            if r.curves is not None and len(r.curves):
                x = f"curve/{metric_name(r.x)}"
                run.define_metric(x)
                run.define_metric("curve/*", step_metric=x)  # charts against t, not W&B's step
                for _, row in r.curves.iterrows():
                    run.log({f"curve/{metric_name(k)}": plain(v) for k, v in row.items()})
                xs = r.curves[r.x].to_numpy(float)
                for title, cols in r.series.items():
                    ys = [r.curves[c].to_numpy(float) for c in cols]
                    ok = [np.isfinite(xs) & np.isfinite(y) for y in ys]  # undefined points are left out, not zeroed
                    run.log({f"series/{metric_name(title)}": wandb.plot.line_series(
                        xs=[xs[m].tolist() for m in ok], ys=[y[m].tolist() for y, m in zip(ys, ok)],
                        keys=list(cols), title=title, xname=r.x)})
            run.log({f"table/{metric_name(k)}": _table(v) for k, v in r.tables.items()})
            run.log({f"figure/{metric_name(k)}": wandb.Image(str(v) if isinstance(v, Path) else v)
                     for k, v in r.images.items()})
            run.summary.update({metric_name(k): plain(v) for k, v in r.summary.items()})
            dirs.append(Path(run.dir).parent)  # run.dir is <run>/files; the run folder is what `wandb sync` takes
        finally:
            run.finish()
    return dirs
