"""When SPELL acts on a trajectory, from its (samples, steps) shield counts: the one definition of *active*, of the
first and last active step, used by the run unit (the store's per-sample fields) and by the analyses."""

from __future__ import annotations

import numpy as np


def is_active(counts: np.ndarray) -> np.ndarray:
    """(samples, steps) bool: at least one shield within the radius, so the correction is non-zero."""
    return np.asarray(counts) > 0


def first_last_active(on: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(first, last) active step of each trajectory from a (samples, steps) bool array; -1 where never active."""
    any_on = on.any(axis=1)
    first = np.where(any_on, on.argmax(axis=1), -1)
    last = np.where(any_on, on.shape[1] - 1 - on[:, ::-1].argmax(axis=1), -1)
    return first, last


def activity_fields(counts: np.ndarray) -> dict:
    """The store's per-sample activity: intervened, first_active_step, last_active_step (-1 where never active)."""
    on = is_active(counts)
    first, last = first_last_active(on)
    return {"intervened": on.any(axis=1), "first_active_step": first.astype(np.int32),
            "last_active_step": last.astype(np.int32)}
