"""The run store (docs/design.md section 5): `store.zarr` (zarr v3), one group per setting, readable with xarray.

The whole layout is created up front from the run's plan; each work unit then writes its own sample region
(chunks along `sample` are one unit wide, so ranks never share a chunk), its arrays' checksums
(`integrity`) and finally sets `unit_complete[unit]`. Float arrays are NaN-filled and counts -1-filled, so an
unwritten unit is visible; `open_run` reads only stores whose complete units still match their checksums.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import subprocess
from pathlib import Path

import numpy as np
import xarray as xr
import zarr

from .. import __version__, schema
from ..methods import recorded_fields
from ..plan import Setting
from .integrity import (REPAIR, StoreDamagedError, damage, damage_error, group_names, open_child,  # noqa: F401
                        open_root, unit_digests, write_digests)


class StoreMismatchError(ValueError):
    """The store on disk was written by a different configuration."""


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent, timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def fingerprint(content: dict) -> str:
    """Hash of everything that determines the store's values (not where it lives, nor how many devices)."""
    return hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()[:16]


def x0_dims(sample_shape) -> list[str]:
    names = {1: ["feature"], 3: ["channel", "y", "x"]}.get(len(sample_shape))
    return names or [f"x0_dim{i}" for i in range(len(sample_shape))]


def create_store(
    path: Path,
    *,
    experiment: str,
    settings: list[Setting],
    times: list[float],
    alphas: list[float],
    sigmas: list[float],
    sample_shape,
    image_shape,
    content: dict,
    config: dict,
    reference: str | None = None,
) -> None:
    """Create the whole layout: every group, array, coordinate and attribute, before the first sample. The root
    records the groups' order (`group_order`) and the group the analyses compare against (`reference_group`:
    the same seeds without the intervention; None where the experiment has none)."""
    root = zarr.open_group(str(path), mode="w-", zarr_format=3)
    now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    root.attrs.update(
        experiment=experiment, fingerprint=fingerprint(content), content=json.dumps(content, default=str),
        config=json.dumps(config, default=str), version=__version__, git_commit=git_commit(), created=now,
        group_order=[s.name for s in settings], reference_group=reference,
    )
    n = len(times)
    for s in settings:
        spell_attrs = {k: s.method[k] for k in schema.SPELL_ATTRS if k in s.method}  # radius, overcomp for SPELL
        g = root.create_group(
            s.name,
            attributes=dict(
                config=json.dumps(config, default=str), setting=json.dumps(s.to_dict()), setup=s.name,
                method=json.dumps(s.method), **spell_attrs, model=content["model"],
                sampler=content["sampler"], steps=content["steps"], guidance=content["guidance"], version=__version__,
                git_commit=git_commit(), created=now, conditions=list(s.conditions),
                condition_names=content.get("condition_names"), measure_from_round=s.measure_from_round,
                rounds=list(s.rounds), note=s.note,
            ),
        )
        N, U = s.samples, s.unit_size
        arr = lambda name, shape, chunks, dtype, fill, dims: g.create_array(  # noqa: E731
            name, shape=shape, chunks=chunks, dtype=dtype, fill_value=fill, dimension_names=dims
        )
        arr("step", (n,), (n,), "int32", -1, ["step"])[:] = np.arange(n, dtype=np.int32)
        for name, values in (("t", times), ("sigma", sigmas), ("alpha", alphas)):
            arr(name, (n,), (n,), "float64", math.nan, ["step"])[:] = np.asarray(values, dtype=np.float64)
        optional = [f for f in schema.optional_step_fields() if f.name in recorded_fields(s.method)]
        for f in schema.step_fields() + tuple(optional):  # optional fields only where the method records them
            arr(f.name, (N, n), (U, n), f.dtype, f.fill, list(f.dims)).attrs["description"] = f.doc
        for f in schema.sample_fields():
            arr(f.name, (N,), (U,), f.dtype, f.fill, list(f.dims)).attrs["description"] = f.doc  # the store says it
        arr("x0", (N, *sample_shape), (U, *sample_shape), "float32", math.nan, ["sample", *x0_dims(sample_shape)])
        if image_shape is not None:
            arr("image", (N, *image_shape), (U, *image_shape), "uint8", 0, ["sample", "height", "width", "rgb"])
        arr("unit_complete", (len(s.conditions),), (1,), "bool", False, ["unit"])


def check_store(path: Path, content: dict) -> None:
    """Raise StoreMismatchError, touching nothing, when the store at `path` was made from other content."""
    root = open_root(Path(path))
    if root.attrs.get("experiment") != content.get("experiment"):
        raise StoreMismatchError(
            f"{path} holds a store of experiment {root.attrs.get('experiment')!r}, not {content.get('experiment')!r}. "
            "It was left untouched. Choose another --out directory."
        )
    if root.attrs.get("fingerprint") != fingerprint(content):
        theirs = json.loads(root.attrs.get("content", "{}"))
        diff = sorted(k for k in set(theirs) | set(content) if json.dumps(theirs.get(k), default=str) != json.dumps(content.get(k), default=str))
        raise StoreMismatchError(
            f"the store {path} was written by a different configuration (differs in: {', '.join(diff) or 'fingerprint'}). "
            "It was left untouched. Pass --fresh to start a new run beside it, or --out to choose another directory."
        )


def completed_units(path: Path, setting_name: str) -> np.ndarray:
    return zarr.open_group(str(path), mode="r")[setting_name]["unit_complete"][:]


def usable_units(path: Path, setting_names: list[str]) -> tuple[set[tuple[str, int]], list]:
    """For a resume: the (group, unit) pairs complete and undamaged, and the damage found. Each damaged unit is
    marked incomplete in the store, so the run regenerates it (a read-only store is refused here in one line)."""
    found = damage(path, setting_names)
    if found:
        root = zarr.open_group(str(path), mode="r+")
        for d in found:
            if d.unit < 0:
                raise damage_error(path, [d], "It cannot be repaired in place; run the command again with --fresh.")
            root[d.group]["unit_complete"][d.unit] = False
    done = {(name, i) for name in setting_names for i, ok in enumerate(completed_units(path, name)) if ok}
    return done, found


def write_units(root: zarr.Group, setting_name: str, units: list[tuple[int, int, dict]]) -> None:
    """Write finished work units, each (unit index, first sample, fields), then mark them complete (the marks come
    last: crash-safe). Runs of consecutive units go out as one region per array: fewer, larger writes."""
    g = root[setting_name]
    units = sorted(units, key=lambda u: u[0])
    runs = [[units[0]]] if units else []
    for u in units[1:]:
        prev = runs[-1][-1]
        if u[0] == prev[0] + 1 and u[1] == prev[1] + len(prev[2]["seed"]):
            runs[-1].append(u)
        else:
            runs.append([u])
    for run in runs:
        start, stop = run[0][1], run[-1][1] + len(run[-1][2]["seed"])
        for name in run[0][2]:
            if name in g:
                g[name][start:stop] = np.concatenate([u[2][name] for u in run])
    write_digests(g, unit_digests(g, units))  # after the data, before the marks: a marked unit has its checksums
    for run in runs:
        g["unit_complete"][run[0][0] : run[-1][0] + 1] = True


def store_path(run: str | Path) -> Path:
    p = Path(run)
    if p.name != "store.zarr":
        p = p / "store.zarr"
    if not p.exists():
        raise FileNotFoundError(f"no run store at {p}: give a run directory (runs/<experiment>/<run-name>) or its store.zarr.")
    return p


def open_run(run: str | Path, *, verify: bool = True) -> dict[str, xr.Dataset]:
    """Every setting of a run as a lazily loaded xarray.Dataset, by group name. verify: first read every complete
    unit back against its checksums and raise StoreDamagedError naming the first damaged one."""
    path = store_path(run)
    root = open_root(path)
    if verify and (found := damage(path)):
        raise damage_error(path, found, REPAIR)
    out = {}
    for name in group_names(root, path):
        open_child(root, path, name)
        ds = xr.open_zarr(str(path), group=name, zarr_format=3, consolidated=False, mask_and_scale=False)
        out[name] = ds.set_coords([c for c in ("t", "sigma", "alpha") if c in ds])
    return out


def run_attrs(run: str | Path) -> dict:
    return dict(open_root(store_path(run)).attrs)

