"""Radius and overcompensation schedules (docs/design.md section 2, "Schedules"; the paper's App. F open question):
r(t) = r * m(t) and lambda(t) = lambda * m(t), with m(t) a multiplier given as plain data.

    "constant"                                   m = 1 (today's SPELL, bit for bit: r and lambda are used as given)
    {"kind": "linear", "at_noise": a, "at_data": b}  m = b + (a - b) * t                       (t: the grid's time)
    {"kind": "sigma",  "at_noise": a, "at_data": b}  m = b + (a - b) * sigma / sqrt(alpha^2 + sigma^2)

The "sigma" shape follows the noise: sigma / sqrt(alpha^2 + sigma^2) is 0 at the data and 1 in pure noise on every
parameterisation (VP: sigma itself). A name alone ("linear", "sigma") takes DEFAULT_ENDS: twice the radius in noise,
half of it at the data (wide shields while the layout forms, narrow ones while details form). Host floats only.
"""

from __future__ import annotations

import math

KINDS = ("constant", "linear", "sigma")
DEFAULT_ENDS = {"at_noise": 2.0, "at_data": 0.5}


def schedule_params(spec) -> dict:
    """Plain data -> {"kind", "at_noise", "at_data"}; bad input raises one ValueError that says what to give."""
    if isinstance(spec, str):
        spec = {"kind": spec}
    if not isinstance(spec, dict) or spec.get("kind") not in KINDS:
        raise ValueError(f"a schedule is one of {KINDS} or {{'kind': 'linear'|'sigma', 'at_noise': a, 'at_data': b}} "
                         f"(got {spec!r}).")
    if spec["kind"] == "constant":
        if set(spec) != {"kind"}:
            raise ValueError(f"the constant schedule takes no parameters (got {spec!r}).")
        return {"kind": "constant"}
    unknown = set(spec) - {"kind", *DEFAULT_ENDS}
    if unknown:
        raise ValueError(f"schedule {spec['kind']!r} has no parameter(s) {sorted(unknown)}; it takes at_noise, at_data.")
    out = {"kind": spec["kind"], **DEFAULT_ENDS, **{k: spec[k] for k in DEFAULT_ENDS if k in spec}}
    for k in DEFAULT_ENDS:
        v = out[k]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not (math.isfinite(v) and v >= 0):
            raise ValueError(f"schedule {spec['kind']!r}: {k} must be a finite number >= 0 (got {v!r}).")
        out[k] = float(v)
    return out


def multiplier(params: dict, t: float, alpha: float, sigma: float) -> float:
    """m(t) of a checked schedule at one evaluation's (t, alpha, sigma)."""
    kind = params["kind"]
    if kind == "constant":
        return 1.0
    u = t if kind == "linear" else sigma / math.hypot(alpha, sigma)
    return params["at_data"] + (params["at_noise"] - params["at_data"]) * u


def scheduled(value: float, params: dict, t: float, alpha: float, sigma: float) -> float:
    """value * m(t); the constant schedule returns value itself (no multiplication: bit for bit)."""
    return value if params["kind"] == "constant" else value * multiplier(params, t, alpha, sigma)


def is_constant(params: dict) -> bool:
    return params["kind"] == "constant"


class Scheduled:
    """r(t) and lambda(t) of a shield intervention with `radius`, `overcomp`, `radius_schedule` and
    `overcomp_schedule` (checked schedule params): SPELL in either space."""

    def set_schedules(self, radius_schedule, overcomp_schedule) -> None:
        self.radius_schedule, self.overcomp_schedule = schedule_params(radius_schedule), schedule_params(overcomp_schedule)

    @property
    def scheduled(self) -> bool:
        return not (is_constant(self.radius_schedule) and is_constant(self.overcomp_schedule))

    def at(self, t: float, alpha: float, sigma: float) -> tuple[float, float]:
        """(r(t), lambda(t)) at one evaluation."""
        return (scheduled(self.radius, self.radius_schedule, t, alpha, sigma),
                scheduled(self.overcomp, self.overcomp_schedule, t, alpha, sigma))

    @property
    def final_radius(self) -> float:
        """r at the data (t = 0): the radius outputs are judged against (`inside_shield`)."""
        return self.at(0.0, 1.0, 0.0)[0]
