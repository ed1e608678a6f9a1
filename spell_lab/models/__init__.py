"""Built-in models, one registry entry each (`registry`, entries in `builtin`), and the denoiser interface.
`--model gmm|digits|<diffusers id or dir>`: a registered name, else a diffusers pipeline (spell_lab.diffusers)."""

from __future__ import annotations

from . import builtin  # noqa: F401  (registers the built-in entries; imports no network)
from .base import NULL_CONDITION, Denoiser, guided_x0
from .registry import (ModelEntry, condition_fidelity, default_name, entry, is_builtin, load_model, matched_reference,
                       names, reference_data, register, selected_radius, with_reference)

__all__ = ["NULL_CONDITION", "Denoiser", "ModelEntry", "condition_fidelity", "default_name", "entry", "guided_x0",
           "is_builtin", "load_model", "matched_reference", "names", "reference_data", "register", "selected_radius", "with_reference"]
