"""Built-in models and the loader the experiments use (`--model gmm|digits|<diffusers id or path>`)."""

from __future__ import annotations

from .base import NULL_CONDITION, Denoiser, guided_x0

BUILTIN = ("gmm", "digits", "fashion")


def load_model(name: str, device="cpu", **kwargs) -> Denoiser:
    """Load a built-in model by name; diffusers pipelines go through `spell_lab.diffusers`."""
    if name == "gmm":
        from .gmm import GaussianMixture

        return GaussianMixture(**kwargs).to(device)
    if name == "digits":
        from .digits import load_digits

        return load_digits(device=device, **kwargs)
    if name == "fashion":
        from .fashion import load_fashion

        return load_fashion(device=device, **kwargs)
    raise ValueError(
        f"unknown built-in model {name!r}; built-in models are {BUILTIN}. "
        "A diffusers pipeline is given by its hub id or a local directory (see spell_lab.diffusers)."
    )


__all__ = ["BUILTIN", "NULL_CONDITION", "Denoiser", "guided_x0", "load_model"]
