"""A diffusers pipeline as the run layer sees a model: conditions, sample shape, an evaluation grid, a
`generate` with SPELL and records, and `to_images`. The experiments use it for `--model <hub id or directory>`.

Conditions are indices: into the prompt list (`--prompts FILE`, one prompt a line), or class labels for
class-conditional pipelines (DiT), or the single condition 0 for unconditional ones (DDPM/DDIM UNet pipelines).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..methods import Hooks
from ..repellency import Spell
from ..samplers.generate import Generation
from .pipelines import generate_pipeline, load_pipeline
from .callbacks import step_levels
from .scheduler import scheduler_family

SCHEDULERS = {  # --sampler name -> diffusers scheduler class swapped in from the pipeline's config
    "ddim": "DDIMScheduler",
    "ddpm": "DDPMScheduler",
    "euler": "EulerDiscreteScheduler",
    "heun": "HeunDiscreteScheduler",
    "flow_euler": "FlowMatchEulerDiscreteScheduler",
}


def read_prompts(path) -> list[str]:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"prompts file {p} does not exist; give a text file with one prompt a line.")
    prompts = [line.strip() for line in p.read_text().splitlines() if line.strip()]
    if not prompts:
        raise ValueError(f"prompts file {p} holds no prompt; write one prompt a line.")
    return prompts


class PipelineModel(nn.Module):
    """Wraps a loaded pipeline; its nn.Module components are submodules, so Lightning moves them to the device."""

    default_sampler = "pipeline"

    def __init__(self, pipe, name: str, prompts: list[str] | None = None, sampler: str | None = None):
        super().__init__()
        self.pipe, self.name, self.prompts = pipe, name, prompts
        self.parts = nn.ModuleDict({k: v for k, v in pipe.components.items() if isinstance(v, nn.Module)})
        if sampler not in (None, "pipeline"):
            self._swap_scheduler(sampler)
        net = getattr(pipe, "transformer", None) or getattr(pipe, "unet")
        size = net.config.sample_size
        size = (size, size) if isinstance(size, int) else tuple(size)
        self.sample_shape = (net.config.in_channels, *size)
        self.class_conditional = "class_labels" in _params(pipe)
        self.num_classes = len(prompts) if prompts else (_num_classes(pipe, net) if self.class_conditional else 1)
        self.condition_names = prompts
        self.default_steps = 28 if scheduler_family(pipe.scheduler) == "flow" else 50
        self.default_guidance = _default_guidance(pipe)

    def _swap_scheduler(self, sampler: str) -> None:
        import diffusers

        if sampler not in SCHEDULERS:
            raise ValueError(f"unknown sampler {sampler!r} for a diffusers pipeline; choose one of {sorted(SCHEDULERS)} or 'pipeline'.")
        self.pipe.scheduler = getattr(diffusers, SCHEDULERS[sampler]).from_config(self.pipe.scheduler.config)

    def conditions(self, cond: torch.Tensor):
        if self.prompts:
            return [self.prompts[int(c)] for c in cond]
        return [int(c) for c in cond] if self.class_conditional else None

    def evaluation_grid(self, sampler, steps: int):
        """t, alpha, sigma of every denoiser evaluation, read from a copy of the scheduler as `step` will see them."""
        evs, _ = step_levels(self.pipe.scheduler, steps)
        return [e.t for e in evs], [e.alpha for e in evs], [e.sigma for e in evs]

    def generate(self, cond, seeds, *, sampler=None, steps=None, guidance=None, spell: Spell | None = None,
                 method: Hooks | None = None, device=None):
        """The pipeline's own loop with the method on its scheduler (or an already built `spell`)."""
        if spell is not None and method is not None:
            raise ValueError("give either spell= or method=, not both (a method resolves its own SPELL).")
        hooks = method if method is not None else Hooks.of_spell(spell or Spell(0.0))
        hooks.bind(self)  # semantic SPELL: its features decode with this pipeline's VAE
        gen = generate_pipeline(self.pipe, self.conditions(cond), seeds, steps=steps or self.default_steps,
                                guidance=guidance, method=hooks, groups=cond.cpu(), decode=False)
        return Generation(gen.x0, gen.records)

    def decode(self, x0: torch.Tensor) -> torch.Tensor:
        """Float images in [-1, 1], (B, C, H, W): the VAE's decoding of latents (differentiable: semantic SPELL's
        features take their Jacobian), or the pixels themselves for pixel-space pipelines."""
        vae = getattr(self.pipe, "vae", None)
        if vae is None:
            return x0.float()
        z = x0.to(vae.device, vae.dtype) / vae.config.scaling_factor
        shift = getattr(vae.config, "shift_factor", None)
        return vae.decode(z + shift if shift else z).sample.float()

    def encoder_features(self, path, device="cpu"):
        """phi for semantic SPELL (`spell(space="features", encoder=path)`): `decode`, then the DINOv2 or CLIP image
        encoder in the folder `path` (`spell_lab.diffusers.features`)."""
        from .features import feature_map

        return feature_map(self, path, device)

    @torch.no_grad()
    def to_images(self, x0: torch.Tensor) -> torch.Tensor:
        """uint8 (B, H, W, 3): `decode`'s images."""
        img = ((self.decode(x0) / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
        img = img.permute(0, 2, 3, 1)
        return img.expand(-1, -1, -1, 3) if img.shape[-1] == 1 else img[..., :3]


def load_pipeline_model(model: str, *, prompts_file=None, sampler=None, device=None) -> PipelineModel:
    """Load `model` offline (a clear ModelNotAvailable error when it is not there) and wrap it."""
    prompts = read_prompts(prompts_file) if prompts_file else None
    pipe = load_pipeline(model, device=device)
    if prompts is None and "prompt" in _params(pipe) and "class_labels" not in _params(pipe):
        raise ValueError(f"{type(pipe).__name__} is conditioned on text: give --prompts FILE (one prompt a line).")
    return PipelineModel(pipe, str(model), prompts, sampler)


def _params(pipe):
    import inspect

    return inspect.signature(pipe.__call__).parameters


def _num_classes(pipe, net) -> int:
    """The pipeline's named classes (DiTPipeline's id2label) where it has them, else the network's class count."""
    if getattr(pipe, "labels", None):
        return len(set(pipe.labels.values()))
    return int(getattr(net.config, "num_embeds_ada_norm", None) or getattr(net.config, "num_class_embeds", None) or 1)


def _default_guidance(pipe):
    p = _params(pipe).get("guidance_scale")
    return None if p is None else p.default
