"""Conversions between a model's output and x0_hat, with x_t fixed (docs/design.md section 2).

    epsilon      x0 = (x - sigma * eps) / alpha          eps = (x - alpha * x0) / sigma
    v_prediction x0 = alpha * x - sigma * v  (VP)        v   = (alpha * x - x0) / sigma
    sample       x0 = output                             output = x0
    flow         x0 = x - sigma * v  (alpha = 1 - sigma) v   = (x - x0) / sigma
"""

from __future__ import annotations

PREDICTIONS = ("epsilon", "v_prediction", "sample", "flow")


def _check(prediction: str) -> None:
    if prediction not in PREDICTIONS:
        raise ValueError(
            f"cannot convert a model output of prediction type {prediction!r}; SPELL supports {PREDICTIONS}. "
            "Use a scheduler configured with one of these."
        )


def to_x0(output, x, alpha, sigma, prediction: str):
    _check(prediction)
    if prediction == "epsilon":
        return (x - sigma * output) / alpha
    if prediction == "v_prediction":
        return alpha * x - sigma * output
    if prediction == "sample":
        return output
    return x - sigma * output


def from_x0(x0, x, alpha, sigma, prediction: str):
    _check(prediction)
    if prediction == "epsilon":
        return (x - alpha * x0) / sigma
    if prediction == "v_prediction":
        return (alpha * x - x0) / sigma
    if prediction == "sample":
        return x0
    return (x - x0) / sigma
