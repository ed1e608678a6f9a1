"""The W&B edge shared by the experiments: one W&B run per setup, all in one group, offline by default.

Nothing here reaches the network unless mode="online" is asked for explicitly: the package sets
WANDB_MODE=offline at import, runs are written under the run directory (`dir=run_dir`) and no login happens.
Upload an offline run later with `wandb sync RUN_DIR/wandb/offline-run-*`.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .noise import levels_at_steps

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
    samples: pd.DataFrame | None = None  # one row per sample; an `image` column of uint8 arrays becomes wandb.Image
    tags: tuple[str, ...] = ()


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
    """A store group's attributes as a W&B config: the JSON `config` attribute unpacked, the others beside it, and
    the method's parameters at the top level (runs filter by radius, overcomp, intra_batch, memory, ...)."""
    out = {k: plain(v) for k, v in attrs.items() if k not in ("config", "method", "setting")}
    for key in ("setting", "method"):
        try:
            value = json.loads(attrs[key]) if isinstance(attrs.get(key), str) else None
        except json.JSONDecodeError:
            value = None
        if isinstance(value, dict):
            out[key] = plain(value)
    method = out.get("method") or {}
    out.update({k: v for k, v in method.items() if k != "name"})
    if method:
        out["method_name"] = method.get("name")
    for k in ("intra_batch", "memory", "rounds", "protected"):  # stores made before the method attribute
        if k in out.get("setting", {}) and k not in out:
            out[k] = out["setting"][k]
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


def sample_rows(ds) -> pd.DataFrame:
    """One row per sample of a store group (W&B's per-sample table): seed, condition, round, intervened, first and
    last active t and the noise level sigma/alpha there (NaN: never active), final nearest distance, and the image
    where the store has one."""
    t = ds["t"].values.astype(float)
    at = lambda step: np.where(step >= 0, t[np.maximum(step, 0)], np.nan)  # noqa: E731
    first, last = ds["first_active_step"].values, ds["last_active_step"].values
    rows = pd.DataFrame({
        "seed": ds["seed"].values, "condition": ds["condition"].values, "round": ds["round"].values,
        "intervened": ds["intervened"].values.astype(bool),
        "first_active_t": at(first), "last_active_t": at(last),
        "first_active_sigma_alpha": levels_at_steps(ds, first), "last_active_sigma_alpha": levels_at_steps(ds, last),
        "final_nearest_distance": ds["final_nearest_distance"].values.astype(float),
    })
    if "image" in ds:
        rows["image"] = list(ds["image"].transpose("sample", ...).values)
    return rows


def store_key(run_dir: Path) -> str:
    """What identifies a store across moves and re-renders: its fingerprint and creation time."""
    path = Path(run_dir) / "store.zarr"
    if not path.exists():
        return str(Path(run_dir).resolve())
    import zarr

    attrs = zarr.open_group(str(path), mode="r").attrs
    return f"{attrs.get('fingerprint')}|{attrs.get('created')}"


def run_id(key: str, group: str, name: str) -> str:
    """A stable W&B run id: re-rendering a run updates the same W&B runs instead of adding new ones."""
    return hashlib.sha1(f"{key}|{group}|{name}".encode()).hexdigest()[:16]


def _samples_table(df: pd.DataFrame):
    import wandb

    cols = [str(c) for c in df.columns]
    rows = [[wandb.Image(v) if c == "image" else plain(v) for c, v in zip(cols, row)] for row in df.itertuples(index=False)]
    return wandb.Table(columns=cols, data=rows)


def log_runs(runs: list[RunLog], *, project: str, group: str, run_dir, mode: str = "offline",
             job_type: str | None = None, key: str | None = None) -> list[Path]:
    """Log each RunLog as its own W&B run in `group`; returns the run directories (what `wandb sync` takes).
    Run ids are stable (`key`: what identifies the store, by default its directory), so logging the same run again
    resumes the same W&B runs; an offline copy it supersedes is removed, so `wandb sync` uploads each run once.
    mode="disabled" logs nothing and returns []."""
    if mode not in MODES:
        raise ValueError(f"wandb mode must be one of {MODES}, got {mode!r}.")
    if mode == "disabled":
        return []
    import wandb

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    key = key or store_key(run_dir)
    dirs = []
    for r in runs:
        rid = run_id(key, group, r.name)
        for old in (run_dir / "wandb").glob(f"offline-run-*-{rid}"):
            shutil.rmtree(old)  # superseded by the copy logged now
        run = wandb.init(project=project, group=group, name=r.name, job_type=job_type, config=plain(r.config),
                         tags=list(r.tags), id=rid, resume="allow", dir=str(run_dir), mode=mode,
                         settings=wandb.Settings(console="off", silent=True))
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
            if r.samples is not None and len(r.samples):
                run.log({"samples": _samples_table(r.samples)})
            run.log({f"figure/{metric_name(k)}": wandb.Image(str(v) if isinstance(v, Path) else v)
                     for k, v in r.images.items()})
            run.summary.update({metric_name(k): plain(v) for k, v in r.summary.items()})
            dirs.append(Path(run.dir).parent)  # run.dir is <run>/files; the run folder is what `wandb sync` takes
        finally:
            run.finish()
    return dirs
