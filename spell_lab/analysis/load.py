"""Loading a run for analysis: the one `load_run` and the one `measured` (applied once, by the analysis driver),
shared by every experiment's analysis.

A store group is checked against the schema (docs/design.md section 5), its small variables are read once, images stay
lazy, and the samples of work units never written (an interrupted run) are left out and counted.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np
import xarray as xr

from .. import schema


def required() -> tuple[str, ...]:
    return ("relative_magnitude",) + schema.count_names()


def check_dataset(ds: xr.Dataset, name: str = "dataset", hint: str = "python -m spell_lab.experiments.sparsity") -> xr.Dataset:
    """Raise early, naming what is missing, if ds is not a store group of the contract."""
    missing = [v for v in required() if v not in ds.variables] + [c for c in ("t",) if c not in ds.coords]
    if missing or "sample" not in ds.dims or "step" not in ds.dims:
        raise ValueError(
            f"group {name!r} is not a run-store group (docs/design.md section 5): missing {missing or 'dims sample/step'}; "
            f"it has {sorted(ds.variables)}. Regenerate it with `{hint}`."
        )
    return ds


def measured(ds: xr.Dataset) -> xr.Dataset:
    """The samples a setting measures: rounds from `measure_from_round` on (earlier ones only fill the memory)."""
    first = int(ds.attrs.get("measure_from_round", 0))
    return ds if first == 0 else ds.isel(sample=(ds["round"] >= first).values)


def measured_groups(groups: "Groups") -> "Groups":
    """The run's groups as every statistic and figure reads them: each group's measured samples (`measured`),
    applied here once (the analysis driver's `load_run`); the groups with every round stay in `.every` (the
    gallery draws the memory-only rounds too)."""
    out = subset(groups, list(groups), {n: measured(ds) for n, ds in groups.items()})
    out.every = every_round(groups)
    return out


def every_round(datasets: dict) -> dict:
    """The groups with every round: `.every` of `measured_groups`' result; any other dict as it is."""
    every = getattr(datasets, "every", None)
    return datasets if every is None else every


def drop_unwritten(ds: xr.Dataset) -> xr.Dataset:
    """Only the samples of complete work units (`unit_complete`); without it, the samples ever written (not all-NaN
    `relative_magnitude`). The group's attrs say how many units are missing (`units_missing` of `units_total`)."""
    if "unit_complete" in ds:
        done = ds["unit_complete"].values.astype(bool)
        keep = np.repeat(done, ds.sizes["sample"] // max(len(done), 1))
        ds = ds.assign_attrs(units_missing=int((~done).sum()), units_total=len(done))
    else:
        keep = ds["relative_magnitude"].notnull().any("step").values
    return ds if bool(keep.all()) else ds.isel(sample=np.flatnonzero(keep))


def missing_line(datasets: dict) -> str | None:
    """One line on an interrupted run's missing units (from `load_run`), or None when every unit is there."""
    missing, total = getattr(datasets, "units_missing", 0), getattr(datasets, "units_total", 0)
    if not missing:
        return None
    return (f"partial run: {missing} of {total} work units are missing (an interrupted run); the figures and tables use "
            f"the {total - missing} complete ones. Re-run the experiment's command to finish it.")


def method_of(ds: xr.Dataset) -> dict:
    """A group's method as plain data; stores written before the `method` attribute were all SPELL."""
    raw = ds.attrs.get("method")
    if raw:
        return json.loads(raw) if isinstance(raw, str) else dict(raw)
    setting = json.loads(ds.attrs.get("setting", "{}"))
    return {"name": "spell", "radius": float(ds.attrs.get("radius", 0.0)), "overcomp": float(ds.attrs.get("overcomp", 1.0)),
            "intra_batch": bool(setting.get("intra_batch", False)), "memory": bool(setting.get("memory", False))}


def model_name(attrs: dict) -> str:
    """The model a group was generated with (its `model` attribute: a spec dict, its JSON, or a name)."""
    model = attrs.get("model")
    model = json.loads(model) if isinstance(model, str) and model.startswith("{") else model
    return str(model.get("name") if isinstance(model, dict) else model)


def load_run(run_dir, *, experiment: str, select: Callable[[dict], list[str]], none_found: str,
             keep: tuple[str, ...] = ()) -> dict[str, xr.Dataset]:
    """The run's groups that `select(datasets)` names, in its order, checked and loaded (`keep`: large variables to
    read too, e.g. x0 for metrics); unwritten samples dropped. `none_found`: the caller's message when select finds
    no group. Clear errors for a missing directory or store."""
    from ..store import open_run

    run_dir = Path(run_dir)
    if run_dir.name == "store.zarr":  # the store itself is accepted too
        run_dir = run_dir.parent
    hint = f"python -m spell_lab.experiments.{experiment}"
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory {run_dir} does not exist; pass a directory made by `{hint}` "
                                f"(runs/{experiment}/<run-name>).")
    if not (run_dir / "store.zarr").exists():
        raise FileNotFoundError(f"{run_dir} holds no store.zarr; is it a run directory? "
                                f"(found: {sorted(p.name for p in run_dir.iterdir())[:10]})")
    datasets = open_run(run_dir)
    names = select(datasets)
    if not names:
        raise ValueError(f"{run_dir / 'store.zarr'} {none_found} (found {sorted(datasets)}).")
    out, missing, total = Groups(), 0, 0
    for name in names:
        ds = check_dataset(datasets[name], name, hint)
        small = {v: ds[v].load() for v in ds.data_vars if v not in ("x0", "image") or v in keep}  # read once
        ds = drop_unwritten(ds.assign(small))
        missing, total = missing + ds.attrs.get("units_missing", 0), total + ds.attrs.get("units_total", 0)
        if ds.sizes["sample"]:
            out[name] = ds  # a group with no complete unit yet has nothing to analyse
    if not out:
        raise ValueError(f"{run_dir / 'store.zarr'} has no complete work unit yet; run `{hint}` (the same command) "
                         "to generate, then analyse.")
    out.units_missing, out.units_total = int(missing), int(total)
    out.order, out.reference = run_layout(run_dir, datasets)
    return out


class Groups(dict):
    """A run's loaded groups by name, with how many work units are missing (an interrupted run) of how many, and
    the run's group order and reference group (`run_layout`)."""

    units_missing = 0
    units_total = 0
    order: list[str] | None = None
    reference: str | None = None
    every: dict | None = None  # measured_groups: the same groups with every round


def subset(datasets: dict, names, values: dict | None = None) -> dict:
    """Some of a run's groups (values: replacements by name), keeping what `load_run` knows about the run (its
    order, reference group, missing units, every-round groups); a plain dict stays a plain dict."""
    values = values or {}
    picked = {n: values.get(n, datasets[n]) for n in names}
    if not isinstance(datasets, Groups):
        return picked
    out = Groups(picked)
    out.units_missing, out.units_total = datasets.units_missing, datasets.units_total
    out.order, out.reference = datasets.order, datasets.reference
    if datasets.every is not None:
        out.every = subset(datasets.every, [n for n in names if n in datasets.every])
    return out


def run_layout(run_dir, datasets: dict) -> tuple[list[str], str | None]:
    """The group order and the reference group the run wrote into the store's root (`group_order`,
    `reference_group`); stores made before those attributes: the settings' order in `content`, and the first group
    that is SPELL at radius 0 (`reference_of`)."""
    from ..store import run_attrs

    attrs = run_attrs(run_dir)
    order = attrs.get("group_order") or [s["name"] for s in json.loads(attrs.get("content", "{}")).get("settings", [])]
    order = [n for n in order if n in datasets] + [n for n in datasets if n not in order]
    if "reference_group" in attrs:
        return order, attrs["reference_group"]
    return order, reference_of({n: datasets[n] for n in order})


def order_of(datasets: dict) -> list[str]:
    """The groups present in the run's order (`Groups.order`); a plain dict: its own order."""
    order = getattr(datasets, "order", None) or []
    return [n for n in order if n in datasets] + [n for n in datasets if n not in order]


def run_order(datasets: dict) -> list[str]:
    """Every group of the run in its order, present or not (colours and styles follow it, so a group keeps its
    colour in a figure of a few groups); a plain dict: its own order."""
    order = list(getattr(datasets, "order", None) or [])
    return order + [n for n in datasets if n not in order]


def reference_of(datasets: dict) -> str | None:
    """The group the analyses compare against: the run's `reference_group` (`Groups.reference`), else the first
    group whose method is SPELL at radius 0 (the same seeds without SPELL); None where there is none, or where it has
    no complete unit yet (an interrupted run)."""
    if getattr(datasets, "order", None) is not None:  # loaded by load_run: the run's own answer
        return datasets.reference if datasets.reference in datasets else None
    return next((n for n, ds in datasets.items()
                 if method_of(ds).get("name") == "spell" and float(method_of(ds).get("radius", -1)) == 0.0), None)
