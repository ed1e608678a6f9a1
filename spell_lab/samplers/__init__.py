"""Samplers over the denoiser interface, and `generate`, which runs one with guidance, SPELL and recording."""

from .generate import Generation, generate, sample_generators, stacked_normal
from .loops import SAMPLERS, ddim, ddpm, euler, flow_euler, get_sampler, heun
from .record import Recorder

__all__ = [
    "SAMPLERS", "Generation", "Recorder", "generate", "get_sampler",
    "sample_generators", "stacked_normal", "ddim", "ddpm", "euler", "heun", "flow_euler",
]
