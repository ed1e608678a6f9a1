"""The model registry: a built-in model is one `ModelEntry` (docs/design.md section 7).

An entry declares everything the experiments and analyses need to know about a built-in model, so adding one is one
`register(ModelEntry(...))` call and its own module(s); no experiment, analysis or command-line edit:

    register(ModelEntry(
        name="gmm",
        load="spell_lab.models.gmm:load_gmm",            # (device="cpu", **kw) -> Denoiser
        reference="spell_lab.models.gmm:held_out",       # (conditions, per_condition|None, seed) -> (x, cond, description)
        features="spell_lab.metrics.features:RawFeatures",  # () -> extractor, (N, *shape) -> (N, D) features
        fidelity=None,                                   # (x0, cond) -> (N,) probability of the requested condition
        training_set=None,                               # (model, set_size|None, seed, data_dir=None) -> (N, *shape) float32
        selected_radius=None, radius_source="calibrate --select --model gmm selects 0",
    ))

Callables may be given directly or as "module:attribute" strings, imported on first use: importing this registry
imports no model, network or weights. `reference` and `features` come together (the metrics need both); a model
without them generates (sparsity, calibrate) but the experiments that measure against held-out data refuse it with
a line naming the models that have them.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable

Ref = Callable | str  # a callable, or "package.module:attribute" resolved on first use


@dataclass(frozen=True)
class ModelEntry:
    name: str
    load: Ref  # (device="cpu", **kw) -> Denoiser
    reference: Ref | None = None  # (conditions, per_condition|None, seed) -> (x in the diffusion space, cond, description)
    features: Ref | None = None  # () -> feature extractor (metrics/features.py): (N, *shape) -> (N, D)
    fidelity: Ref | None = None  # (x0, cond) -> (N,) probability the model's classifier gives the requested condition
    # (model, set_size|None, seed, data_dir=None) -> (N, *sample_shape) float32: the model's own training items in its
    # diffusion space, grown to set_size by seeded augmentations (None: the training items alone); the protected set
    training_set: Ref | None = None
    feature_map: Ref | None = None  # (device) -> phi, differentiable (B, *shape) -> (B, D): the features, for semantic SPELL
    condition_names: Ref | None = None  # the conditions' names in order (class labels) for figures; None: numbers
    selected_radius: float | None = None  # Appendix D's selected radius (calibrate --select); None: none selected
    radius_source: str = ""  # how the selected radius was found (or why there is none), shown in errors
    default: bool = False  # the model commands use when --model is not given (exactly one entry)
    train_command: str | None = None  # the command that made the shipped weights, if any
    description: str = ""

    @property
    def has_reference(self) -> bool:
        return self.reference is not None and self.features is not None


MODELS: dict[str, ModelEntry] = {}


def register(entry: ModelEntry) -> ModelEntry:
    """Add a built-in model; its name must be new and at most one entry is the default."""
    if entry.name in MODELS:
        raise ValueError(f"a built-in model named {entry.name!r} is registered already; pick another name.")
    if entry.default and any(e.default for e in MODELS.values()):
        raise ValueError(f"{entry.name!r} cannot be the default model: {default_name()!r} is.")
    MODELS[entry.name] = entry
    return entry


def resolve(ref: Ref) -> Callable:
    if not isinstance(ref, str):
        return ref
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


def names() -> tuple[str, ...]:
    return tuple(MODELS)


def is_builtin(name: str) -> bool:
    return name in MODELS


def entry(name: str) -> ModelEntry:
    """The entry of a built-in model; an unknown name lists the registered ones."""
    if name not in MODELS:
        raise ValueError(f"unknown built-in model {name!r}; registered: {', '.join(MODELS)}. A diffusers pipeline is "
                         "given by its hub id or a local directory (see spell_lab.diffusers).")
    return MODELS[name]


def default_name() -> str:
    return next(e.name for e in MODELS.values() if e.default)


def with_reference() -> tuple[str, ...]:
    """The built-in models with held-out real data and a feature extractor: those the metric experiments run."""
    return tuple(n for n, e in MODELS.items() if e.has_reference)


def require_reference(name: str, what: str) -> ModelEntry:
    """The entry of a model `what` (e.g. "the radius ablation") can measure; else a one-line error naming them."""
    if name not in MODELS or not MODELS[name].has_reference:
        raise ValueError(f"{what} measures against held-out real data, which exists for the built-in models "
                         f"{', '.join(with_reference())} only (got {name!r}).")
    return MODELS[name]


def with_training_set() -> tuple[str, ...]:
    """The built-in models whose own training set can be the protected set (the protection experiment)."""
    return tuple(n for n, e in MODELS.items() if e.training_set is not None)


def require_training_set(name: str) -> ModelEntry:
    """The entry of a model whose training set is known; else a one-line error naming the models that have one."""
    if name not in MODELS or MODELS[name].training_set is None:
        raise ValueError(f"the protection benchmark protects a built-in model's own training set, known for "
                         f"{', '.join(with_training_set())} only (got --model {name}).")
    return MODELS[name]


def training_set(name: str, model, set_size: int | None = None, seed: int = 0, data_dir=None):
    """The model's training items in its diffusion space, grown to set_size: (N, *sample_shape) float32."""
    return resolve(require_training_set(name).training_set)(model, set_size, seed, data_dir=data_dir)


def load_model(name: str, device="cpu", **kwargs):
    """Load a built-in model by name; diffusers pipelines go through `spell_lab.diffusers`."""
    return resolve(entry(name).load)(device=device, **kwargs)


def reference_data(name: str, conditions, *, per_condition: int | None = None, seed: int = 12345
                   ) -> tuple[Any, Any, Any, str]:
    """Held-out real data of a built-in model: (x in the diffusion space, cond, feature extractor, description).
    `per_condition`: how many real items per condition (None: the model's own default, e.g. all it holds)."""
    e = entry(name)
    if not e.has_reference:
        raise ValueError(f"no held-out real data is known for model {name!r}; pass `reference=(x, cond, features)` "
                         f"to the analysis (registered with real data: {', '.join(with_reference())}).")
    x, cond, description = resolve(e.reference)([int(c) for c in conditions], per_condition, seed)
    return x, cond, resolve(e.features)(), description


def matched_reference(name: str, cond) -> tuple[Any, Any, Any, str]:
    """`reference_data` with as many real items per condition as one generated group holds (`cond`: that group's
    condition of each sample; the most of any condition): coverage and recall compare like with like, as Naeem et
    al. and the paper's ImageNet protocol (50 generated and 50 validation images per class) do. A model whose
    held-out part is fixed (digits: the classifier's split) keeps all of it."""
    import numpy as np

    conds, counts = np.unique(np.asarray(cond), return_counts=True)
    return reference_data(name, conds, per_condition=int(counts.max()))


def feature_map(name: str, device="cpu"):
    """phi: the model's features as a differentiable map of the diffusion space (the metrics' features, with gradients:
    semantic SPELL's shields live there); a one-line error where the model has none."""
    e = MODELS.get(name)
    if e is None or e.feature_map is None:
        known = ", ".join(n for n, m in MODELS.items() if m.feature_map is not None)
        raise ValueError(f"model {name!r} has no registered feature map, which spell space='features' needs "
                         f"(built-in models with one: {known}); for a diffusers model give encoder=PATH (a DINOv2 "
                         "or CLIP image-encoder folder), or use space='diffusion'.")
    return resolve(e.feature_map)(device)


def condition_fidelity(name: str):
    """`(x0, cond) -> (N,)` probabilities of the requested condition, or None (the model has no classifier)."""
    e = MODELS.get(name)
    return None if e is None or e.fidelity is None else resolve(e.fidelity)


def condition_names(name) -> tuple[str, ...] | None:
    """A built-in model's condition names in order (figures label classes with them); None for any other model."""
    e = MODELS.get(name) if isinstance(name, str) else None
    return None if e is None or e.condition_names is None else tuple(resolve(e.condition_names))


def selected_radius(name: str) -> float:
    """The model's selected radius (Appendix D); a one-line error saying how to get one where there is none."""
    e = entry(name)
    if e.selected_radius is None:
        why = e.radius_source or "no selected radius is known for it"
        raise ValueError(f"model {name!r} has no selected radius ({why}); give one, e.g. --radius '{{{name}: 1.0}}', "
                         f"or find it with `python -m spell_lab.experiments.calibrate --select --model {name}`.")
    return float(e.selected_radius)
