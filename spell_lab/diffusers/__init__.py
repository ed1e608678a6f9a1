"""SPELL for real diffusers pipelines: `SpellScheduler` wraps a pipeline's scheduler; `load_pipeline` and
`generate_pipeline` load a model strictly offline and generate a batch with records (design.md sections 3 and 7)."""

import os

# The Hugging Face libraries read this at import: nothing reaches the hub unless the user set HF_HUB_OFFLINE=0.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from .pipelines import ModelNotAvailable, PipelineGeneration, generate_pipeline, load_pipeline  # noqa: E402
from .scheduler import FAMILIES, SpellScheduler  # noqa: E402

__all__ = [
    "FAMILIES", "ModelNotAvailable", "PipelineGeneration", "SpellScheduler", "generate_pipeline", "load_pipeline",
]
