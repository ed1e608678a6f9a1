"""Real diffusers pipelines: load one strictly offline, generate a batch with SPELL and its records.

    pipe = load_pipeline("stabilityai/stable-diffusion-3-medium-diffusers")      # fp16 on CUDA, from the HF cache
    gen = generate_pipeline(pipe, ["a photo of a dog"] * 4, seeds=[0, 1, 2, 3], steps=28, guidance=7.0,
                            spell_kwargs=dict(radius=60.0, intra_batch=True))
    gen.x0        # (4, 16, 128, 128) final latents, float32: the run store's `x0`
    gen.images    # (4, H, W, 3) uint8, or None with decode=False
    gen.records   # field -> (4, evaluations) tensors, plus t / alpha / sigma (evaluations,)

Nothing here downloads: models come from a local directory or the Hugging Face cache (`local_files_only=True`),
and a missing model raises `ModelNotAvailable` at once, before anything is generated or written.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from ..repellency import Memory
from .callbacks import MethodCallback, needs_callback
from .scheduler import SpellScheduler


class ModelNotAvailable(FileNotFoundError):
    """The model is neither a local pipeline directory nor in the Hugging Face cache (and downloads are off)."""


class PipelineGeneration(NamedTuple):
    x0: torch.Tensor  # (B, *latent_shape) float32 final samples in the diffusion space (latents, or pixels)
    images: np.ndarray | None  # (B, H, W, C) uint8 decoded images, None with decode=False
    records: dict  # field -> (B, evaluations) tensors, plus t / alpha / sigma (evaluations,)


def default_device_dtype(device=None, dtype=None) -> tuple[torch.device, torch.dtype]:
    """CUDA when present; float16 on CUDA, float32 on CPU (half precision on CPU is slow and poorly supported)."""
    device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    return device, dtype or (torch.float16 if device.type == "cuda" else torch.float32)


def load_pipeline(model: str, *, device=None, dtype=None, allow_download: bool = False, cache_dir=None, **kwargs):
    """A `DiffusionPipeline` from a local directory or a cached hub id, on `device` (CUDA if present) in `dtype`.

    Offline unless allow_download=True (which also needs HF_HUB_OFFLINE=0 in the environment before start-up);
    a model that is not available raises ModelNotAvailable naming it, without touching the network.
    kwargs go to `DiffusionPipeline.from_pretrained` (e.g. variant="fp16", text_encoder_3=None).
    """
    source = _resolve(str(model), allow_download, cache_dir)  # before importing diffusers: a missing model fails fast
    from diffusers import DiffusionPipeline

    device, dtype = default_device_dtype(device, dtype)
    try:
        pipe = DiffusionPipeline.from_pretrained(
            source, torch_dtype=dtype, local_files_only=not allow_download, cache_dir=cache_dir, **kwargs
        )
    except OSError as e:  # a component's files missing from a partial download or a broken directory
        raise ModelNotAvailable(f"model {model!r} could not be loaded offline: {e}") from e
    return pipe.to(device)


def _resolve(model: str, allow_download: bool, cache_dir) -> str:
    """The directory or hub id to load; raises ModelNotAvailable when it cannot be loaded offline."""
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise ModelNotAvailable(f"{model!r} is a directory but not a diffusers pipeline (no model_index.json); "
                                    "save one with pipe.save_pretrained(dir) or give a hub id.")
        return str(path)
    if model.startswith((".", "/", "~")) or model.count("/") > 1:
        raise ModelNotAvailable(f"local model directory {model!r} does not exist.")
    if allow_download:
        if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
            raise ValueError("allow_download=True needs HF_HUB_OFFLINE=0 in the environment before Python starts.")
        return model
    from huggingface_hub import try_to_load_from_cache

    if not isinstance(try_to_load_from_cache(model, "model_index.json", cache_dir=cache_dir), str):
        raise ModelNotAvailable(
            f"model {model!r} is not in the Hugging Face cache ({cache_dir or _hub_cache()}) and spell_lab does not "
            f"download. On a machine with network run `huggingface-cli download {model}` (same HF_HOME), "
            "or pass a local pipeline directory."
        )
    return model


def _hub_cache() -> str:
    from huggingface_hub import constants

    return constants.HF_HUB_CACHE


def generate_pipeline(
    pipe,
    conditions,
    seeds,
    *,
    steps: int,
    guidance: float | None = None,
    spell_kwargs: dict | None = None,
    memory: Memory | torch.Tensor | None = None,
    method=None,
    groups=None,
    decode: bool = True,
    **pipeline_kwargs,
) -> PipelineGeneration:
    """Generate len(seeds) samples with `pipe`, SPELL on its scheduler, one generator per sample.

    conditions: prompts (list of str), class labels (list of int, e.g. DiT), or None for unconditional pipelines
        or when the conditioning comes in pipeline_kwargs (e.g. prompt_embeds); one per seed.
    guidance: the pipeline's guidance_scale (None: the pipeline's default).
    spell_kwargs: SpellScheduler's radius, overcomp, intra_batch, protected; None = radius 0 (the baseline, which
        still records nearest distances to the references).
    memory: earlier rounds' final latents (a `repellency.Memory` with their group ids, or a tensor for group 0).
        The caller adds each finished batch: memory.add(gen.x0, groups).
    method: instead of spell_kwargs and memory, a resolved method (`spell_lab.methods.resolve`) whose
        interventions act on the scheduler's x0_hat (the run layer's path); its guidance schedule and condition
        transform (interval, cfg, cads) act through `callbacks.MethodCallback` on the pipeline's guidance_scale and
        prompt_embeds (cads needs prompt_embeds=; see that module).
    groups: group id per sample (only the same group repels, and memory shields its own group); default: the index
        of each distinct condition in order of first appearance (all one group when conditions is None).
    pipeline_kwargs: passed to the pipeline call (height, width, negative_prompt, prompt_embeds, ...).
    """
    seeds = [int(s) for s in seeds]
    call = _condition_kwargs(pipe, conditions, len(seeds))
    params = inspect.signature(pipe.__call__).parameters
    if guidance is not None:
        if "guidance_scale" not in params:
            raise ValueError(f"{type(pipe).__name__} takes no guidance_scale; pass guidance=None.")
        call["guidance_scale"] = guidance
    if "output_type" in params:
        call["output_type"] = "np" if decode else "latent"
    # CPU generators: a sample's noise depends on its seed only, not on the device or the batch it is in
    generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
    base = pipe.scheduler.inner if isinstance(pipe.scheduler, SpellScheduler) else pipe.scheduler
    if method is not None and (spell_kwargs or memory is not None):
        raise ValueError("give generate_pipeline either method= or spell_kwargs/memory, not both.")
    per_step = {}
    if method is not None and needs_callback(method):  # guidance / condition: a step-end callback, not the scheduler
        if "guidance_scale" not in params:
            raise ValueError(f"{type(pipe).__name__} takes no guidance_scale, which method "
                             f"{method.params.get('name')!r} needs.")
        run = call.get("guidance_scale", params["guidance_scale"].default)
        callback = MethodCallback(pipe, method, steps=steps, guidance=run, seeds=seeds,
                                  pipeline_kwargs=pipeline_kwargs)
        per_step = callback.call_kwargs()
        method = dataclasses.replace(method, guidance=None, condition=None)  # the scheduler keeps the interventions
    spell = (SpellScheduler(base, method=method) if method is not None
             else SpellScheduler(base, memory=memory, **(spell_kwargs or {"radius": 0.0})))
    spell.set_groups(_group_ids(conditions, len(seeds)) if groups is None else groups)
    pipe.scheduler = spell
    try:
        with torch.no_grad():
            kwargs = {**call, **pipeline_kwargs, **per_step}  # the method's step-0 weight and condition win
            out = pipe(**kwargs, num_inference_steps=steps, generator=generators, **_no_dict(params))
    finally:
        pipe.scheduler = base
    images = _uint8(out[0]) if decode else None
    return PipelineGeneration(spell.final_sample().float(), images, spell.record_tensors())


def _condition_kwargs(pipe, conditions, batch: int) -> dict:
    params = inspect.signature(pipe.__call__).parameters
    name = type(pipe).__name__
    if conditions is None:
        return {"batch_size": batch} if "batch_size" in params else {}
    conditions = conditions.tolist() if isinstance(conditions, torch.Tensor) else list(conditions)
    if len(conditions) != batch:
        raise ValueError(f"got {len(conditions)} conditions for {batch} seeds: give one condition per seed.")
    if all(isinstance(c, str) for c in conditions):
        if "prompt" not in params:
            raise ValueError(f"{name} takes no prompts; give class labels or None.")
        return {"prompt": conditions}
    if all(isinstance(c, (int, np.integer)) for c in conditions):
        if "class_labels" not in params:
            raise ValueError(f"{name} takes no class labels; give prompts (list of str) or None.")
        return {"class_labels": [int(c) for c in conditions]}
    raise ValueError("conditions must be all prompts (str) or all class labels (int).")


def _group_ids(conditions, batch: int) -> torch.Tensor:
    if conditions is None:
        return torch.zeros(batch, dtype=torch.long)
    conditions = conditions.tolist() if isinstance(conditions, torch.Tensor) else list(conditions)
    first = {}
    return torch.tensor([first.setdefault(c, len(first)) for c in conditions], dtype=torch.long)


def _no_dict(params) -> dict:
    return {"return_dict": False} if "return_dict" in params else {}


def _uint8(images) -> np.ndarray:
    """Pipeline output in [0, 1] (numpy (B, H, W, C) or a list of PIL images) -> uint8 (B, H, W, C)."""
    if isinstance(images, torch.Tensor):
        images = images.detach().float().cpu().numpy()
    if isinstance(images, list):
        return np.stack([np.asarray(im) for im in images]).astype(np.uint8)
    return np.round(np.clip(images, 0.0, 1.0) * 255.0).astype(np.uint8)
