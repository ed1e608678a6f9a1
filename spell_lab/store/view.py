"""Browse a run store without a model (docs/design.md section 5): `python -m spell_lab.store RUN`.

    describe(run, groups=None)                the run, then per group its size, units, attributes and a summary
    export_images(run, out_dir, groups=None)  the stored images of the complete units as PNG files
    main(argv)                                RUN [--export-images DIR] [--groups a,b]; user errors exit 2

Everything is read lazily through xarray; only the per-sample summary arrays and one unit of images at a time load.
Every complete unit is first read back against its checksums (`spell_lab.store.integrity`): the description names a
damaged unit ("damaged") and leaves it out of the summary; an export refuses a damaged store in one line.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import xarray as xr
from PIL import Image

from ..cli import check_writable_dir, parser as cli_parser, run
from . import open_run, run_attrs, store_path
from .integrity import REPAIR, damage, damage_error

SETTING_KEYS = ("intra_batch", "memory", "rounds", "conditions")  # what a group's `setting` attribute adds (the first
# two only in stores made before the `method` attribute)


class StoreViewError(ValueError):
    """A user error: main prints it as one line and exits 2."""


def unit_size(ds: xr.Dataset) -> int:
    """Samples per work unit: unit u owns the samples [u * size, (u + 1) * size)."""
    return ds.sizes["sample"] // ds.sizes["unit"]


def complete_samples(ds: xr.Dataset, damaged=()) -> np.ndarray:
    """Per sample, whether its work unit is complete (and not among the `damaged` unit indices)."""
    done = ds["unit_complete"].values.copy()
    done[[u for u in damaged if u >= 0]] = False
    return np.repeat(done, unit_size(ds))


def describe(run, groups: list[str] | None = None) -> str:
    path = store_path(run)
    attrs = run_attrs(path)
    lines = [
        f"run {path.parent}",
        f"experiment {attrs.get('experiment')}, created {attrs.get('created')}, git {attrs.get('git_commit')}",
    ]
    chosen = select_groups(path, groups)
    found = damage(path, list(chosen))
    for name, ds in chosen.items():
        damaged = [d for d in found if d.group == name]
        lines += [group_line(name, ds, damaged), "  " + summary(ds, [d.unit for d in damaged])]
    if found:
        lines.append(f"damaged: {len(found)} unit(s); {REPAIR}")
    return "\n".join(lines)


def group_line(name: str, ds: xr.Dataset, damaged=()) -> str:
    done = ds["unit_complete"].values
    keys = []
    if "method" in ds.attrs:  # name(parameters); stores made before the attribute show radius and overcomp
        method = json.loads(ds.attrs["method"])
        keys.append(f"{method.pop('name')}(" + ", ".join(f"{k}={v}" for k, v in method.items()) + ")")
    else:
        keys += [f"radius={ds.attrs.get('radius')}", f"overcomp={ds.attrs.get('overcomp')}"]
    setting = json.loads(ds.attrs.get("setting", "{}"))
    keys += [f"{k}={setting[k]}" for k in SETTING_KEYS if k in setting]
    hurt = "".join(f", damaged: unit {d.unit} {d.array} ({d.why})" for d in damaged)
    return (
        f"{name}: {ds.sizes['sample']} samples, {ds.sizes['step']} steps, units {int(done.sum()) - len(damaged)}/"
        f"{len(done)} complete{hurt}, " + " ".join(keys)
    )


def summary(ds: xr.Dataset, damaged=()) -> str:
    """Over the samples of complete, undamaged units: the share intervened, the share inside a shield, and the median
    final nearest distance of those that had a reference (+inf for the others, e.g. a first round without memory)."""
    if any(u < 0 for u in damaged):
        return "not summarised: the group itself is damaged"
    keep = complete_samples(ds, damaged)
    if not keep.any():
        return "no complete units yet"
    intervened, inside = ds["intervened"].values[keep], ds["inside_shield"].values[keep]
    final = ds["final_nearest_distance"].values[keep]
    final = final[np.isfinite(final)]
    median = f"{float(np.median(final)):.4g} (of {len(final)} with a reference)" if len(final) else "- (no reference)"
    return (
        f"{int(keep.sum())} samples of complete units: intervened {intervened.mean():.1%}, "
        f"inside_shield {inside.mean():.1%}, median final_nearest_distance {median}"
    )


def export_images(run, out_dir, groups: list[str] | None = None) -> list[Path]:
    """Write each stored image of a complete unit as `{group}_c{condition}_r{round}_s{seed}.png`; return the paths."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise StoreViewError(f"{out_dir} is an existing file; give a folder for the images (it is created if missing)")
    check_writable_dir(out_dir, "--export-images")
    path = store_path(run)
    chosen = select_groups(path, groups)
    found = damage(path, list(chosen))
    if found:  # named before anything is written, not skipped
        raise damage_error(path, found, REPAIR)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, ds in chosen.items():
        if "image" not in ds:
            continue
        cond, rnd, seed = (ds[v].values for v in ("condition", "round", "seed"))
        size = unit_size(ds)
        for u in np.flatnonzero(ds["unit_complete"].values):
            images = ds["image"][u * size : (u + 1) * size].values  # one unit (one chunk) at a time
            for i, image in zip(range(u * size, (u + 1) * size), images):
                path = out_dir / f"{name}_c{cond[i]}_r{rnd[i]}_s{seed[i]}.png"
                Image.fromarray(image).save(path)
                written.append(path)
    return written


def select_groups(path: Path, groups: list[str] | None) -> dict[str, xr.Dataset]:
    everything = open_run(path, verify=False)  # the callers check the chosen groups themselves
    if groups is None:
        return everything
    unknown = [g for g in groups if g not in everything]
    if unknown:
        raise StoreViewError(f"no group {unknown[0]!r} in {path}; it has: {', '.join(everything)}")
    return {g: everything[g] for g in groups}


def parser():
    p = cli_parser("python -m spell_lab.store", "Describe a run store; optionally export its images.")
    p.add_argument("run", metavar="RUN", help="a run directory (runs/<experiment>/<run-name>) or its store.zarr")
    p.add_argument("--export-images", "--export_images", dest="export_images", type=str | None, default=None,
                   help="write the stored images as PNG files into DIR")
    p.add_argument("--groups", type=str | None, default=None, help="comma-separated group names (default: every group)")
    return p


def _main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    groups = [g.strip() for g in args.groups.split(",") if g.strip()] if args.groups else None
    print(describe(args.run, groups))
    if args.export_images is not None:
        paths = export_images(args.run, Path(args.export_images), groups)
        print(f"wrote {len(paths)} images to {args.export_images}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m spell_lab.store RUN [--export-images DIR] [--groups a,b]`; a user error: one line, exit code 2."""
    return run(_main, argv)
