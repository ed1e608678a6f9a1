"""A finished work unit's arrays are checked before anything trusts them (docs/design.md section 5).

When a unit is written, the digest of each of its arrays (the unit's region, as stored) goes into the unit's own
checksum node `<group>/_checksums/<unit>` (attributes of an empty zarr group: one small file per unit, so DDP ranks
never write the same file), after the data and before the unit is marked complete. `damage(path)` reads every
complete unit back and compares: a chunk that was deleted (it reads as fill values), truncated or overwritten (it
no longer decodes, or decodes to other values) is reported by group, unit and array. Units written before checksums
existed are read back only (what no longer decodes is damage). The checksum is metadata: the arrays hold the same
values, bit for bit, as without it.

    unit_digests(group, units)   {unit: {array: digest}} of the data about to be written (write_units)
    damage(path, groups=None)    every damaged complete unit: [Damage(group, unit, array, why)]
    StoreDamagedError            a damaged store where the command cannot repair it (re-render, browse, export)
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr

CHECKSUMS = "_checksums"  # the subgroup of a setting group that holds one checksum node per unit
ALGORITHM = "blake2b-128"


class StoreDamagedError(ValueError):
    """A store's data or metadata can no longer be read as written; re-running the command that made it repairs the
    damaged units."""


@dataclass(frozen=True)
class Damage:
    group: str
    unit: int
    array: str
    why: str

    def __str__(self) -> str:
        return f"group {self.group!r} unit {self.unit} array {self.array!r} ({self.why})"


def digest(values: np.ndarray) -> str:
    values = np.ascontiguousarray(values)
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{values.dtype.str}{values.shape}".encode())
    h.update(values.view(np.uint8).reshape(-1) if values.size else b"")
    return h.hexdigest()


def sample_arrays(group: zarr.Group) -> dict[str, zarr.Array]:
    """The group's arrays that units write (first dimension `sample`)."""
    return {name: a for name, a in group.arrays() if (a.metadata.dimension_names or (None,))[0] == "sample"}


def unit_digests(group: zarr.Group, units: list[tuple[int, int, dict]]) -> dict[int, dict[str, str]]:
    """For (unit index, first sample, fields) about to be written: each array's digest as the store will hold it
    (cast to the array's dtype)."""
    arrays = sample_arrays(group)
    return {index: {name: digest(np.asarray(fields[name], dtype=arrays[name].dtype)) for name in fields if name in arrays}
            for index, _, fields in units}


def write_digests(group: zarr.Group, digests: dict[int, dict[str, str]]) -> None:
    for index, arrays in digests.items():
        group.create_group(f"{CHECKSUMS}/{index}", attributes={"algorithm": ALGORITHM, "arrays": arrays},
                           overwrite=True)


def recorded(group: zarr.Group, index: int) -> dict[str, str] | None:
    """The digests written with unit `index`, or None (a store made before checksums, or a missing node)."""
    try:
        node = group[f"{CHECKSUMS}/{index}"]
    except KeyError:
        return None
    return dict(node.attrs.get("arrays", {}))


def _why(err: BaseException) -> str:
    return f"unreadable: {type(err).__name__}"


def group_damage(name: str, group: zarr.Group) -> list[Damage]:
    """Every damaged complete unit of one setting group (a unit is reported once, by its first damaged array)."""
    if "unit_complete" not in group:
        return []  # no work units (a group written by other means, e.g. a test's or a notebook's own dataset)
    try:
        done = np.asarray(group["unit_complete"][:], dtype=bool)
    except Exception as err:  # noqa: BLE001 - any decoding error is damage, named below
        return [Damage(name, -1, "unit_complete", _why(err))]
    arrays = sample_arrays(group)
    size = next(iter(arrays.values())).chunks[0] if arrays else 0  # chunks along `sample` are one unit wide
    units = [int(u) for u in np.flatnonzero(done)]
    sums = {u: recorded(group, u) for u in units}
    hurt: dict[int, Damage] = {}
    for array_name, array in arrays.items():
        try:
            whole = array[:]  # one read per array; a chunk that no longer decodes: unit by unit, to name it
        except Exception:  # noqa: BLE001 - any decoding error is damage, named below
            whole = None
        for u in units:
            if u in hurt:
                continue  # a unit is reported once, by its first damaged array
            try:
                values = whole[u * size:(u + 1) * size] if whole is not None else array[u * size:(u + 1) * size]
            except Exception as err:  # noqa: BLE001
                hurt[u] = Damage(name, u, array_name, _why(err))
                continue
            if sums[u] is not None and array_name in sums[u] and digest(values) != sums[u][array_name]:
                hurt[u] = Damage(name, u, array_name, "checksum mismatch")
    out = [hurt[u] for u in sorted(hurt)]
    for coord in ("step", "t", "sigma", "alpha"):
        if coord in group:
            try:
                group[coord][:]
            except Exception as err:  # noqa: BLE001
                out.append(Damage(name, -1, coord, _why(err)))
    return out


def open_root(path: Path) -> zarr.Group:
    """The store's root group; a metadata file that no longer parses is named, not a bare JSON error."""
    try:
        return zarr.open_group(str(path), mode="r")
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise StoreDamagedError(f"{path / 'zarr.json'} is damaged ({err}); the store cannot be read. Restore it or "
                                f"run the command that made it with --fresh.") from None


def group_names(root: zarr.Group, path: Path) -> list[str]:
    """The root's groups, sorted; a child whose metadata no longer parses is named."""
    try:
        return sorted(root.group_keys())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        for meta in sorted(Path(path).glob("*/zarr.json")):
            try:
                json.loads(meta.read_bytes())
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise StoreDamagedError(f"{meta} is damaged ({err}); the group cannot be read. Restore it or run "
                                        "the command that made the store with --fresh.") from None
        raise StoreDamagedError(f"{path} has damaged metadata ({err}).") from None


def open_child(root: zarr.Group, path: Path, name: str):
    try:
        return root[name]
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise StoreDamagedError(f"{path / name / 'zarr.json'} is damaged ({err}); the group cannot be read. Restore "
                                f"it or run the command that made the store with --fresh.") from None


def damage(path: Path, groups: list[str] | None = None) -> list[Damage]:
    """Every damaged complete unit of the store at `path` (every group, or those named)."""
    root = open_root(Path(path))
    names = groups if groups is not None else group_names(root, Path(path))
    return [d for n in names for d in group_damage(n, open_child(root, Path(path), n))]


def damage_error(path: Path, found: list[Damage], repair: str) -> StoreDamagedError:
    """One line: the first damaged unit by name, how many more, and how to repair."""
    more = f" and {len(found) - 1} more unit(s)" if len(found) > 1 else ""
    return StoreDamagedError(f"the store {path} is damaged: {found[0]}{more}. {repair}")


REPAIR = "Run the command that made it again (the same flags): it regenerates the damaged units."
