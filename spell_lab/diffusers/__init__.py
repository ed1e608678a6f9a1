"""SPELL for real diffusers pipelines: `SpellScheduler` wraps a pipeline's scheduler; `load_pipeline` and
`generate_pipeline` load a model strictly offline and generate a batch with records (docs/design.md sections 3 and 7)."""

# spell_lab/__init__.py sets HF_HUB_OFFLINE=1 (unless the user set it) before any Hugging Face import.
from .callbacks import MethodCallback
from .pipelines import ModelNotAvailable, PipelineGeneration, generate_pipeline, load_pipeline
from .scheduler import FAMILIES, SpellScheduler

__all__ = [
    "FAMILIES", "MethodCallback", "ModelNotAvailable", "PipelineGeneration", "SpellScheduler", "generate_pipeline", "load_pipeline",
]
