"""The one interface every model implements: x_t, t, condition -> x0_hat, with the schedule (alpha_t, sigma_t) known.

A `Denoiser` is an `nn.Module` with
  - `schedule`     : an object of `spell_lab.schedules` (alpha_sigma(t), grid(steps), kind)
  - `sample_shape` : the shape of one sample in the diffusion space, e.g. (1, 32, 32)
  - `num_classes`  : number of conditions (class labels); condition -1 means "no condition" (for CFG)
  - `forward(x, t, cond) -> x0_hat`, x (B, *sample_shape), t a scalar tensor in [0, 1], cond (B,) long.
  - optionally `embed_condition(cond) -> (B, ...)` float, a continuous condition embedding that `forward` accepts
    in place of the labels (methods that transform the condition, e.g. CADS, need it).
and the defaults a user expects from the model: `default_sampler`, `default_steps`, `default_guidance`.
"""

from __future__ import annotations

import torch
from torch import nn

NULL_CONDITION = -1


class Denoiser(nn.Module):
    schedule = None
    sample_shape: tuple[int, ...] = ()
    num_classes: int = 0
    default_sampler: str = "ddim"
    default_steps: int = 50
    default_guidance: float = 1.0
    name: str = "denoiser"

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def to_images(self, x0: torch.Tensor) -> torch.Tensor | None:
        """Decoded uint8 images (B, H, W, 3) for models whose diffusion space has them; None otherwise."""
        return None


def guided_x0(model: Denoiser, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, guidance: float,
              embedding: torch.Tensor | None = None, null_embedding: torch.Tensor | None = None) -> torch.Tensor:
    """Classifier-free guidance on x0_hat: x0_u + w (x0_c - x0_u); w = 1 is the conditional model.

    Guidance is linear in the model output and x_t is fixed, so guiding x0_hat equals guiding eps, v or the score.
    Conditional and unconditional halves run as one batch. `embedding` (B, E): the conditional branch's condition
    embedding in place of the labels `cond` (CADS); the unconditional branch keeps the null condition's embedding, or
    takes `null_embedding` (B, E) where given (CADS with noise_uncond).
    """
    c = cond if embedding is None else embedding
    if guidance == 1.0:
        return model(x, t, c)
    null = torch.full_like(cond, NULL_CONDITION)
    if embedding is not None or null_embedding is not None:  # one branch as an embedding: both as embeddings
        c = c if embedding is not None else model.embed_condition(cond)
        null = (null_embedding if null_embedding is not None else model.embed_condition(null)).to(c.dtype)
    x0_c, x0_u = model(torch.cat([x, x]), t, torch.cat([c, null])).chunk(2)
    return x0_u + guidance * (x0_c - x0_u)


class PredictionDenoiser(Denoiser):
    """A denoiser over a network that predicts epsilon, v, x0 or a flow velocity: converts its output to x0_hat."""

    def __init__(self, net, schedule, prediction: str, sample_shape, num_classes: int = 0, name: str = "net"):
        super().__init__()
        from ..parameterisation import _check

        _check(prediction)
        self.net, self.schedule, self.prediction = net, schedule, prediction
        self.sample_shape, self.num_classes, self.name = tuple(sample_shape), num_classes, name

    def forward(self, x, t, cond):
        from ..parameterisation import to_x0

        alpha, sigma = self.schedule.alpha_sigma(t.detach().to(torch.float64))  # on t's device: no host sync
        return to_x0(self.net(x, t, cond), x, alpha, sigma, self.prediction)

