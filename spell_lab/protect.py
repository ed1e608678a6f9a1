"""Protected sets as shield sources: the index kinds a protected-set spec names (design.md sections 2 and 8).

A spec is plain data, `{"path": "/abs/set.npy", "index": "exact", **index parameters}` (what a `Setting` carries);
`build_index` turns it and the loaded items into a shield source `(x0, radius, overcomp, cond) -> Correction`.
"""

from __future__ import annotations

import json
from pathlib import Path

from .repellency import ExactProtected

INDEXES = {"exact": ExactProtected}  # index kind -> shield source class, called as cls(items, **parameters)


def protected_spec(path, index: str = "exact", **params) -> dict:
    if index not in INDEXES:
        raise ValueError(f"unknown protected index {index!r}; choose from {', '.join(INDEXES)}.")
    return {"path": str(Path(path).resolve()), "index": index, **params}


def spec_key(spec: dict) -> str:
    """One string per distinct spec: settings that share a protected set share its index."""
    return json.dumps(spec, sort_keys=True)


def build_index(spec: dict, items):
    params = {k: v for k, v in spec.items() if k not in ("path", "index")}
    return INDEXES[spec["index"]](items, **params)
