"""The run store's fields and the shield-source names, declared once (docs/design.md section 5).

The recorder, the run unit, the store, the analyses and the plots all derive their field lists from here, so adding
a shield source or a field is a change of this file alone. Read `SOURCES` through the module (`schema.SOURCES`) at
call time, never copied at import, so every layer sees the same declaration.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

SOURCES = ("batch", "memory", "protected")  # shield sources, in store order; `active_<name>` counts each
STEP_COORDS = ("step", "t", "sigma", "alpha")
GROUP_ATTRS = ("config", "method", "model", "sampler", "steps", "guidance", "version", "git_commit", "created")
SPELL_ATTRS = ("radius", "overcomp")  # written for methods that have them (SPELL)
CLOCK = ("sample_seconds", "search_seconds")  # wall-clock fields: they differ between runs of identical values


@dataclass(frozen=True)
class Field:
    name: str
    dims: tuple[str, ...]  # ("sample", "step") or ("sample",)
    dtype: str
    fill: object  # what an unwritten sample holds: NaN for floats, -1 for counts and indices
    doc: str


def count_name(source: str) -> str:
    return f"active_{source}"


def count_names() -> tuple[str, ...]:
    """active_shields (all sources) and one count per source."""
    return ("active_shields",) + tuple(count_name(s) for s in SOURCES)


def step_fields() -> tuple[Field, ...]:
    """(sample, step) fields: what the recorder measures at every denoiser evaluation."""
    per_step = ("sample", "step")
    floats = (
        ("correction_norm", "||delta||: the interventions' total change of x0_hat"),
        ("score_norm", "||score|| of the (guided) model"),
        ("relative_magnitude", "the correction as a score term relative to the score, alpha ||delta|| / sigma^2 ||s||"),
        ("nearest_distance", "distance to the nearest reference before correction: exact below the radius; above it, "
                             "the nearest the shield search found (an approximate index may miss nearer ones); +inf "
                             "where none exists"),
    )
    counts = [("active_shields", "shields within the radius, all sources")]
    counts += [(count_name(s), f"shields within the radius from the {s} source") for s in SOURCES]
    counts.append(("cells_probed", "index cells the protected-set search scanned for this query (faiss IVF: its "
                                   "nprobe; exact faiss search: its flat bound index, 1, or 0 where the candidate cache "
                                   "served it); -1 where the search has no cells (exhaustive) or no protected set was "
                                   "searched"))
    return tuple(Field(n, per_step, "float32", math.nan, d) for n, d in floats) + tuple(
        Field(n, per_step, "int32", -1, d) for n, d in counts)


def optional_step_fields() -> tuple[Field, ...]:
    """(sample, step) fields a group holds only where its method records them (`methods.recorded_fields`): a store
    without them (every store before them, every other method) opens and reads as before."""
    per_step = ("sample", "step")
    docs = (
        ("radius_t", "r(t): the shield radius a radius schedule gave this evaluation"),
        ("overcomp_t", "lambda(t): the overcompensation an overcompensation schedule gave this evaluation"),
        ("shield_residual", "semantic SPELL: relu(r - distance of the corrected x0_hat's features to the nearest "
                            "shield center), how far inside a feature shield it still is; 0 outside every shield"),
    )
    return tuple(Field(n, per_step, "float32", math.nan, d) for n, d in docs)


def sample_fields() -> tuple[Field, ...]:
    """(sample,) fields: what was generated, and what SPELL did to it over the whole trajectory."""
    s = ("sample",)
    return (
        Field("condition", s, "int32", -1, "the condition (class index or prompt index)"),
        Field("seed", s, "int64", -1, "the sample's seed: its own RNG"),
        Field("round", s, "int32", -1, "the round within its work unit"),
        Field("position", s, "int32", -1, "its slot in the round's batch"),
        Field("first_active_step", s, "int32", -1, "first step with an active shield; -1 where never active"),
        Field("last_active_step", s, "int32", -1, "last step with an active shield; -1 where never active"),
        Field("intervened", s, "bool", False, "SPELL was active at some step"),
        Field("inside_shield", s, "bool", False, "the output lies within the radius of a reference"),
        Field("final_nearest_distance", s, "float32", math.nan, "the output's distance to the nearest reference it was "
              "shielded from, by the run's own search (exact below the radius, as nearest_distance)"),
        Field("sample_seconds", s, "float32", math.nan, "its share of its round's wall-clock sampling time (round / batch)"),
        Field("search_seconds", s, "float32", math.nan, "its share of the protected-set search time within that sampling "
                                                        "time; NaN where no protected set was searched"),
    )


def contract() -> tuple[str, ...]:
    """Every variable name a group holds (x0 always, image where the model has images)."""
    return STEP_COORDS + tuple(f.name for f in step_fields() + sample_fields()) + ("x0", "image")
