"""Sampler loops over a denoiser, k-diffusion style: each is a short function of (denoise, x, ts, schedule).

`denoise(x, t, i) -> x0_hat` already includes guidance, SPELL and recording; the samplers only step. `i` is the sampler
step the evaluation belongs to (Heun's corrector at ts[i + 1] belongs to step i): a method's per-step choices (interval
guidance's weight, CADS's condition) are made once per step, from the step's start, as the methods' authors do.
`ts` is the descending time grid ending at t = 0 (alpha = 1, sigma = 0), so every sampler's last step returns x0_hat'
itself; on the EDM schedule it is Karras et al.'s grid, so `euler` and `heun` are k-diffusion's `sample_euler` and
`sample_heun` (no churn) over `get_sigmas_karras(steps, ...)`.
`noise()` draws one standard normal per sample from that sample's own generator (ancestral samplers only).
"""

from __future__ import annotations

import math


def _coefs(schedule, ts):
    a, s = schedule.alpha_sigma(ts)
    return [float(v) for v in a], [float(v) for v in s]  # host floats, computed once: no per-step sync


def ddim(denoise, x, ts, schedule, noise=None):
    """DDIM with eta = 0 (Song et al., 2021, Eq. 12): x_next = alpha' x0_hat + sigma' eps_hat."""
    a, s = _coefs(schedule, ts)
    for i in range(len(ts) - 1):
        x0 = denoise(x, ts[i], i)
        eps = (x - a[i] * x0) / s[i]
        x = a[i + 1] * x0 + s[i + 1] * eps
    return x


def ddpm(denoise, x, ts, schedule, noise=None):
    """Ancestral sampling from the Gaussian posterior q(x_s | x_t, x0_hat) (Ho et al., 2020, Eq. 6-7).

    Written for any Gaussian path x_t = alpha_t x0 + sigma_t eps: alpha_ts = alpha_t / alpha_s and
    sigma_ts^2 = sigma_t^2 - alpha_ts^2 sigma_s^2.
    """
    a, s = _coefs(schedule, ts)
    for i in range(len(ts) - 1):
        x0 = denoise(x, ts[i], i)
        a_ts = a[i] / a[i + 1]
        var_ts = s[i] ** 2 - a_ts**2 * s[i + 1] ** 2
        mean = (a_ts * s[i + 1] ** 2 / s[i] ** 2) * x + (a[i + 1] * var_ts / s[i] ** 2) * x0
        std = math.sqrt(max(var_ts * s[i + 1] ** 2 / s[i] ** 2, 0.0))
        x = mean + std * noise() if std > 0 else mean
    return x


def _euler_step(denoise, x, ts, s, i):
    """One Euler step in sigma from ts[i] to ts[i + 1]: (the slope d = (x - x0_hat) / sigma, the new x)."""
    d = (x - denoise(x, ts[i], i)) / s[i]
    return d, x + (s[i + 1] - s[i]) * d


def euler(denoise, x, ts, schedule, noise=None):
    """Euler on the probability-flow ODE in sigma (Karras et al., 2022, Algorithm 1 with Euler steps); alpha = 1."""
    _, s = _coefs(schedule, ts)
    for i in range(len(ts) - 1):
        _, x = _euler_step(denoise, x, ts, s, i)
    return x


def heun(denoise, x, ts, schedule, noise=None):
    """Heun's 2nd order method (Karras et al., 2022, Algorithm 1); Euler on the last step to sigma = 0."""
    _, s = _coefs(schedule, ts)
    for i in range(len(ts) - 1):
        d, x_next = _euler_step(denoise, x, ts, s, i)
        if i + 2 < len(ts):  # not the last step
            d_next = (x_next - denoise(x_next, ts[i + 1], i)) / s[i + 1]  # still step i
            x_next = x + (s[i + 1] - s[i]) * 0.5 * (d + d_next)
        x = x_next
    return x


def flow_euler(denoise, x, ts, schedule, noise=None):
    """Rectified-flow Euler (SD3's FlowMatchEulerDiscrete): v = (x - x0_hat) / sigma, x += (sigma' - sigma) v.
    With x_t = (1 - sigma) x0 + sigma eps that is Karras's Euler step in sigma, line for line: one update serves both."""
    return euler(denoise, x, ts, schedule, noise)


def one_per_step(ts):
    return [float(t) for t in ts[:-1]]


def heun_times(ts):
    out = []
    for i in range(len(ts) - 1):
        out.append(float(ts[i]))
        if i + 2 < len(ts):
            out.append(float(ts[i + 1]))  # the corrector's evaluation at the next time
    return out


# name -> (function, schedule kinds it accepts, the times of its denoiser evaluations for a grid ts)
SAMPLERS = {
    "ddim": (ddim, ("vp", "edm", "flow"), one_per_step),
    "ddpm": (ddpm, ("vp", "edm", "flow"), one_per_step),
    "euler": (euler, ("edm",), one_per_step),
    "heun": (heun, ("edm",), heun_times),
    "flow_euler": (flow_euler, ("flow",), one_per_step),
}


def get_sampler(name: str, schedule_kind: str):
    """The sampler function and its evaluation-times function; a clear error for unknown or mismatched names."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose one of {sorted(SAMPLERS)}.")
    fn, kinds, times = SAMPLERS[name]
    if schedule_kind not in kinds:
        raise ValueError(
            f"sampler {name!r} needs a model with a {' or '.join(kinds)} schedule, this model's is {schedule_kind!r}; "
            f"use one of {[n for n, v in SAMPLERS.items() if schedule_kind in v[1]]}."
        )
    return fn, times
