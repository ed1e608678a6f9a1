"""The method registry (design.md section 3): a method is plain data, `{"name": "spell", "radius": 25, ...}`,
resolved here into the hooks the sampler calls at every denoiser evaluation:

- interventions on x0_hat: callables `(x0, cond, *, x_t, t, alpha, sigma) -> SpellStep`, applied in order, each
  returning its statistics for the recorder (SPELL's shield sources are one such intervention);
- a guidance schedule w(t, alpha, sigma, w_run) (None: the run's constant weight w_run);
- a condition transform `(cond, t, generators) -> cond'` (None: the condition as given).

Adding a method is one `@register` entry and its function; the run layer, the store and the analyses take any.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch

from .repellency import Memory, Spell, SpellStep


@dataclass
class Hooks:
    """A resolved method: what it does at each evaluation, and between rounds."""

    params: dict = field(default_factory=dict)  # the plain data it was resolved from, defaults filled in
    interventions: tuple = ()
    guidance: Callable | None = None  # (t, alpha, sigma, run's weight) -> w at that evaluation
    condition: Callable | None = None  # (cond, t, generators) -> cond'
    shields: Spell | None = None  # the references outputs are judged against (final_nearest_distance)
    memory: Memory | None = None  # earlier rounds' outputs, filled by `end_round`

    @classmethod
    def of_spell(cls, spell: Spell | None) -> "Hooks":
        """Hooks around an already built `Spell` (the library call `generate(..., spell=...)`)."""
        if spell is None:
            return cls()
        memory = next((s for s in spell.sources if isinstance(s, Memory)), None)
        params = {"name": "spell", "radius": spell.radius, "overcomp": spell.overcomp}
        return cls(params, interventions=(spell,), shields=spell, memory=memory)

    @property
    def radius(self) -> float:
        return self.shields.radius if self.shields is not None else 0.0

    def validate(self, x_example: torch.Tensor) -> None:
        for iv in self.interventions:
            if hasattr(iv, "validate"):
                iv.validate(x_example)

    def intervene(self, x0: torch.Tensor, cond: torch.Tensor, **context) -> SpellStep:
        """Every intervention in order, each on the previous one's x0; none: x0 unchanged (bit for bit)."""
        step = None
        for iv in self.interventions:
            s = iv(x0 if step is None else step.x0, cond, **context)
            step = s if step is None else step.then(s)
        return step if step is not None else SpellStep.unchanged(x0)

    def final_nearest(self, x0: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """(B,) distance of each output to the nearest reference it was shielded from; +inf without shields."""
        if self.shields is None:
            return torch.full((x0.shape[0],), math.inf, device=x0.device)
        return self.shields(x0, cond).nearest

    def end_round(self, x0: torch.Tensor, cond: torch.Tensor) -> None:
        """A round finished: later rounds repel from its outputs (where the method keeps a memory)."""
        if self.memory is not None:
            self.memory.add(x0, cond)


@dataclass(frozen=True)
class MethodSpec:
    name: str
    defaults: dict
    build: Callable  # (params, protected) -> Hooks


REGISTRY: dict[str, MethodSpec] = {}


def register(name: str, **defaults):
    """Decorator: `@register("spell", radius=0.0, ...)` over `fn(params, protected) -> Hooks`."""

    def add(fn):
        REGISTRY[name] = MethodSpec(name, defaults, fn)
        return fn

    return add


def method_params(method: dict | str) -> dict:
    """The plain data of a method with its defaults filled in; unknown names or parameters are refused."""
    method = {"name": method} if isinstance(method, str) else dict(method)
    name = method.pop("name", None)
    if name not in REGISTRY:
        raise ValueError(f"unknown method {name!r}; choose from {', '.join(sorted(REGISTRY))}.")
    spec = REGISTRY[name]
    unknown = sorted(set(method) - set(spec.defaults))
    if unknown:
        raise ValueError(f"method {name!r} has no parameter(s) {unknown}; it takes {sorted(spec.defaults)}.")
    return {"name": name, **spec.defaults, **method}


def resolve(method: dict | str, *, protected=None) -> Hooks:
    """Plain data -> Hooks. `protected`: a shield source (e.g. `ExactProtected`) for methods that shield."""
    params = method_params(method)
    return REGISTRY[params["name"]].build(params, protected)


# --- the methods ------------------------------------------------------------------------------------------------


@register("spell", radius=0.0, overcomp=1.0, intra_batch=False, memory=False, overlap="single", max_iter=10)
def spell(params: dict, protected=None) -> Hooks:
    """SPELL (Eq. 5/8): shields of radius r around the other batch members, earlier rounds and a protected set;
    overlap="iterate" repeats the correction (at most max_iter times) until no shield is within r."""
    memory = Memory() if params["memory"] else None
    s = Spell.build(params["radius"], params["overcomp"], intra_batch=params["intra_batch"], memory=memory,
                    protected=protected, overlap=params["overlap"], max_iter=params["max_iter"])
    return Hooks(params, interventions=(s,), shields=s, memory=memory)


@register("cfg", weight=None)
def cfg(params: dict, protected=None) -> Hooks:
    """Classifier-free guidance at a fixed weight (the CFG sweep); None: the run's weight (the neutral point)."""
    _no_shields("cfg", protected)
    w = params["weight"]
    return Hooks(params, guidance=None if w is None else (lambda t, alpha, sigma, run: float(w)))


@register("interval", weight=None, sigma_lo=0.0, sigma_hi=math.inf)
def interval(params: dict, protected=None) -> Hooks:
    """Interval guidance (Kynkaanniemi et al. 2024): the weight inside sigma_t/alpha_t in (sigma_lo, sigma_hi], the
    conditional model alone (w = 1) outside; weight None: the run's. Covering every step is the neutral point."""
    _no_shields("interval", protected)
    lo, hi, w = float(params["sigma_lo"]), float(params["sigma_hi"]), params["weight"]
    if not lo <= hi:
        raise ValueError(f"interval guidance needs sigma_lo <= sigma_hi (got {lo}, {hi}).")

    def schedule(t, alpha, sigma, run):
        level = sigma / alpha if alpha > 0 else math.inf  # the VP/EDM noise level
        return (run if w is None else float(w)) if lo < level <= hi else 1.0

    return Hooks(params, guidance=schedule)


def _no_shields(name: str, protected) -> None:
    if protected is not None:
        raise ValueError(f"method {name!r} has no shields to repel from a protected set; use method 'spell'.")


def spell_method(radius: float, overcomp: float = 1.0, *, intra_batch: bool = False, memory: bool = False) -> dict:
    """SPELL as plain data (what a `Setting` carries)."""
    return {"name": "spell", "radius": float(radius), "overcomp": float(overcomp), "intra_batch": bool(intra_batch),
            "memory": bool(memory)}
