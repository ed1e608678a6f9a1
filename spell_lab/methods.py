"""The method registry (docs/design.md section 3): a method is plain data, `{"name": "spell", "radius": 25, ...}`,
resolved here into the hooks the sampler calls at every denoiser evaluation:

- interventions on x0_hat: callables `(x0, cond, *, x_t, t, alpha, sigma) -> SpellStep`, applied in order, each
  returning its statistics for the recorder (SPELL's shield sources are one such intervention);
- a guidance schedule w(t, alpha, sigma, w_run) (None: the run's constant weight w_run), decided once per sampler
  step: it is called with the step's start (t, alpha, sigma) and its w serves every evaluation of the step;
- a condition transform `(y, progress, noise) -> y'` on the model's continuous condition embedding y (B, ...) (None:
  the condition as given), also once per sampler step, at the step's sampling progress (1 at the first step, 1 - i / N
  at step i of N; `schedules.sampling_progress`), whatever the model's schedule or grid. `noise(shape)` draws
  (B, *shape) standard normals, each sample's from its own stream, which is not the sampler's noise stream
  (`spell_lab.samplers.generate.method_generators`). Returning y itself means "unchanged": the sampler then gives
  the model the plain condition, bit for bit. `condition_uncond`: the transform applies to CFG's unconditional
  branch too (its draws from a stream of its own: the conditional branch's noise is the same either way).

Adding a method is one `@register` entry and its function; the run layer, the store and the analyses take any.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch

from .repellency import Memory, Spell, SpellStep
from .semantic import SemanticSpell


@dataclass
class Hooks:
    """A resolved method: what it does at each evaluation, and between rounds."""

    params: dict = field(default_factory=dict)  # the plain data it was resolved from, defaults filled in
    interventions: tuple = ()
    guidance: Callable | None = None  # (t, alpha, sigma, run's weight) at a step's start -> w for the whole step
    condition: Callable | None = None  # (y, progress, noise) -> y', on the model's condition embedding, per step
    condition_uncond: bool = False  # the condition transform applies to the unconditional branch too
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
        return self.shields.final_radius if self.shields is not None else 0.0  # r(0) under a schedule

    def validate(self, x_example: torch.Tensor) -> None:
        for iv in self.interventions:
            if hasattr(iv, "validate"):
                iv.validate(x_example)

    def bind(self, model) -> None:
        """Bind the interventions that need the model (semantic SPELL's feature map) to it."""
        for iv in self.interventions:
            if hasattr(iv, "bind"):
                iv.bind(model)

    def validate_model(self, model) -> None:
        """Refuse, before anything runs, a method the model cannot serve (a condition transform needs an embedding);
        interventions that need the model are bound to it here."""
        self.bind(model)
        if self.condition is not None and not callable(getattr(model, "embed_condition", None)):
            raise ValueError(f"method {self.params.get('name')!r} transforms the condition embedding, and model "
                             f"{getattr(model, 'name', type(model).__name__)!r} has none; use a model with one "
                             "(e.g. digits) or another method.")

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
        return self.shields.nearest(x0, cond)

    def end_round(self, x0: torch.Tensor, cond: torch.Tensor) -> None:
        """A round finished: later rounds repel from its outputs (where the method keeps a memory)."""
        if self.memory is not None:
            self.memory.add(x0, cond)


@dataclass(frozen=True)
class MethodSpec:
    name: str
    defaults: dict
    build: Callable  # (params, protected) -> Hooks
    quiet: dict = field(default_factory=dict)  # parameters filled in only where given: older runs' data unchanged


REGISTRY: dict[str, MethodSpec] = {}


def register(name: str, quiet=None, **defaults):
    """Decorator: `@register("spell", radius=0.0, ...)` over `fn(params, protected) -> Hooks`. `quiet`: parameters
    added later, whose defaults keep the method as it was; the plain data holds them only where given, so a run's
    method, fingerprint and store stay what they were before them."""

    def add(fn):
        REGISTRY[name] = MethodSpec(name, {**defaults, **(quiet or {})}, fn, dict(quiet or {}))
        return fn

    return add


POSITIVE = {"overcomp", "max_iter", "gn_iter"}  # numeric parameters that must be > 0; every other one >= 0
PATHS = {"encoder"}  # folder paths (None: not given), not numbers
UNBOUNDED = {"sigma_hi"}  # may be inf (an interval without an upper end)


def method_params(method: dict | str) -> dict:
    """The plain data of a method with its defaults filled in; unknown names or parameters, and values of the wrong
    kind (a flag that is not true/false, a number that is NaN, negative or, except sigma_hi, infinite) are refused."""
    if not isinstance(method, (dict, str)):
        raise TypeError(f"a method is a name or plain data such as {{'name': 'spell', 'radius': 3.0}}; got "
                        f"{method!r}. Methods: {', '.join(sorted(REGISTRY))}.")
    method = {"name": method} if isinstance(method, str) else dict(method)
    name = method.pop("name", None)
    if name not in REGISTRY:
        raise ValueError(f"unknown method {name!r}; choose from {', '.join(sorted(REGISTRY))}.")
    spec = REGISTRY[name]
    unknown = sorted(set(method) - set(spec.defaults))
    if unknown:
        raise ValueError(f"method {name!r} has no parameter(s) {unknown}; it takes {sorted(spec.defaults)}.")
    for key, value in method.items():
        _check_param(name, key, value, spec.defaults[key])
    loud = {k: v for k, v in spec.defaults.items() if k not in spec.quiet}
    return {"name": name, **loud, **method}


def _check_param(method: str, key: str, value, default) -> None:
    if key in PATHS:
        if value is not None and not isinstance(value, str):
            raise ValueError(f"method {method!r}: {key} must be a folder path or null (got {value!r}).")
        return
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ValueError(f"method {method!r}: {key} must be true or false (got {value!r}).")
        return
    if not (default is None or isinstance(default, (int, float))):
        return  # text parameters are checked by the method itself
    if value is None and default is None:
        return  # the run's value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"method {method!r}: {key} must be a number (got {value!r}).")
    low_ok = value > 0 if key in POSITIVE else value >= 0
    if math.isnan(value) or not low_ok or (math.isinf(value) and key not in UNBOUNDED):
        bound = "> 0" if key in POSITIVE else ">= 0"
        raise ValueError(f"method {method!r}: {key} must be {bound} and finite (got {value!r}).")


def resolve(method: dict | str, *, protected=None) -> Hooks:
    """Plain data -> Hooks. `protected`: a shield source (e.g. `ExactProtected`) for methods that shield."""
    params = method_params(method)
    return REGISTRY[params["name"]].build(params, protected)


# --- the methods ------------------------------------------------------------------------------------------------


SPACES = ("diffusion", "features")


SPELL_QUIET = {"radius_schedule": "constant", "overcomp_schedule": "constant", "space": "diffusion", "gn_iter": 1,
               "encoder": None}


@register("spell", radius=0.0, overcomp=1.0, intra_batch=False, memory=False, overlap="single", max_iter=10,
          weight=None, quiet=SPELL_QUIET)
def spell(params: dict, protected=None) -> Hooks:
    """SPELL (Eq. 5/8): shields of radius r around the other batch members, earlier rounds and a protected set;
    overlap="iterate" repeats the correction (at most max_iter times) until no shield is within r.
    weight: the CFG weight it runs on top of (Appendix I), as in `cfg`; None: the run's weight.
    radius_schedule / overcomp_schedule: r(t), lambda(t) as plain data (`spell_lab.shield_schedules`).
    space="features": semantic shields in the model's feature space (`spell_lab.semantic`; gn_iter Gauss-Newton
    pull-backs; encoder: a DINOv2 or CLIP folder for a diffusers model, whose registry has no feature map);
    "diffusion" (the default): the paper's SPELL."""
    full = {**SPELL_QUIET, **params}  # the quiet parameters at their defaults where not given
    if full["space"] not in SPACES:
        raise ValueError(f"spell space must be one of {SPACES} (got {full['space']!r}).")
    if full["encoder"] is not None and full["space"] != "features":
        raise ValueError("spell's encoder= gives the feature space of space='features'; add space='features' or drop "
                         "encoder=.")
    if full["space"] == "features":
        return semantic_spell(params, full, protected)
    memory = Memory() if params["memory"] else None
    s = Spell.build(params["radius"], params["overcomp"], intra_batch=params["intra_batch"], memory=memory,
                    protected=protected, overlap=params["overlap"], max_iter=params["max_iter"],
                    radius_schedule=full["radius_schedule"], overcomp_schedule=full["overcomp_schedule"])
    return Hooks(params, interventions=(s,), guidance=fixed_weight(params["weight"]), shields=s, memory=memory)


def semantic_spell(params: dict, full: dict, protected=None) -> Hooks:
    """SPELL with shields in a feature space (docs/design.md section 2, "Semantic shields"): the memory keeps
    features, a protected set is mapped by phi once and searched in feature space. full: params with the quiet ones."""
    if full["overlap"] != "single" or not isinstance(full["gn_iter"], int) or full["gn_iter"] < 1:
        raise ValueError("spell with space='features' takes overlap='single' and an integer gn_iter >= 1 (got "
                         f"overlap={full['overlap']!r}, gn_iter={full['gn_iter']!r}).")
    s = SemanticSpell(full["radius"], full["overcomp"], intra_batch=full["intra_batch"], memory=full["memory"],
                      gn_iter=full["gn_iter"], radius_schedule=full["radius_schedule"],
                      overcomp_schedule=full["overcomp_schedule"], encoder=full["encoder"], protected=protected)
    return Hooks(params, interventions=(s,), guidance=fixed_weight(full["weight"]), shields=s, memory=s.memory)


def recorded_fields(method: dict) -> tuple[str, ...]:
    """The optional per-step fields (`schema.optional_step_fields`) a method's runs record: r(t) and lambda(t) under a
    schedule, the shield residual in feature space. Other methods, and constant-schedule SPELL, record none."""
    if method.get("name") != "spell":
        return ()
    scheduled = any(method.get(k, "constant") != "constant" for k in ("radius_schedule", "overcomp_schedule"))
    out = ("radius_t", "overcomp_t") if scheduled else ()
    return out + (("shield_residual",) if method.get("space") == "features" else ())


@register("cfg", weight=None)
def cfg(params: dict, protected=None) -> Hooks:
    """Classifier-free guidance at a fixed weight (the CFG sweep); None: the run's weight (the neutral point)."""
    _no_shields("cfg", protected)
    return Hooks(params, guidance=fixed_weight(params["weight"]))


def fixed_weight(w) -> Callable | None:
    """The guidance schedule of a constant weight; None: no schedule (the run's weight, the sampler untouched)."""
    return None if w is None else (lambda t, alpha, sigma, run: float(w))


@register("interval", weight=None, sigma_lo=0.0, sigma_hi=math.inf)
def interval(params: dict, protected=None) -> Hooks:
    """Interval guidance (Kynkaanniemi et al. 2024): the weight inside sigma_t/alpha_t in (sigma_lo, sigma_hi], the
    conditional model alone (w = 1) outside; weight None: the run's. Covering every step is the neutral point.

    Decided once per sampler step, from the noise level at the step's start: every evaluation of the step (Heun's
    corrector at sigma_{i+1} too) uses that choice, as the authors' EDM sampler (kynkaat/guidance-interval,
    sampling/edm_sampler.py) picks the guided or the conditional denoiser once per step i. In a diffusers pipeline
    the step-end callback applies the same rule (`spell_lab.diffusers.callbacks`)."""
    _no_shields("interval", protected)
    lo, hi, w = float(params["sigma_lo"]), float(params["sigma_hi"]), params["weight"]
    if not lo <= hi:
        raise ValueError(f"interval guidance needs sigma_lo <= sigma_hi (got {lo}, {hi}).")

    def schedule(t, alpha, sigma, run):
        level = sigma / alpha if alpha > 0 else math.inf  # the VP/EDM noise level
        return (run if w is None else float(w)) if lo < level <= hi else 1.0

    return Hooks(params, guidance=schedule)


@register("pg", strength=0.0)
def pg(params: dict, protected=None) -> Hooks:
    """Particle guidance (Corso et al. 2024), the RBF kernel on x_t while sigma/alpha >= 1 (`particle_guidance`);
    strength 0 is the neutral point."""
    _no_shields("pg", protected)
    return Hooks(params, interventions=(ParticleGuidance(float(params["strength"])),))


CADS_STATS = ("sample", "batch")


@register("cads", tau1=0.6, tau2=0.9, noise_scale=0.25, psi=1.0, stats="sample", noise_uncond=False)
def cads(params: dict, protected=None) -> Hooks:
    """Condition-annealed sampling (Sadat et al. 2024) on the condition embedding (`cads_embedding`); tau1 = tau2 = 1
    is the neutral point.

    gamma = `cads_gamma(progress, tau1, tau2)` at each sampler step's sampling progress (1 at the first step, 1 - i / N
    at step i of N), in every path (built-in samplers, diffusers pipelines), as the reference implementation
    (v0xie/sd-webui-cads; the authors published none) reads t = 1 - step / steps; never the grid's t, which on shifted
    flow grids or diffusers' timesteps is another number. One draw of the noise per step and branch.

    Two choices where the paper's description and that reference differ (defaults: the paper's):
    - stats="sample": the rescaling's mean and std are each sample's own (the paper writes them per condition y);
      stats="batch" pools the whole batch tensor, as the reference does, which makes a sample depend on its batch.
    - noise_uncond=False: CFG's unconditional branch keeps the null condition (the paper anneals the condition, and
      the null condition is none); True noises it too, with its own statistics and draws, as the reference does.
    """
    _no_shields("cads", protected)
    tau1, tau2, s, psi = (float(params[k]) for k in ("tau1", "tau2", "noise_scale", "psi"))
    if not 0.0 <= tau1 <= tau2:
        raise ValueError(f"cads needs 0 <= tau1 <= tau2 (got {tau1}, {tau2}).")
    stats = params["stats"]
    if stats not in CADS_STATS:
        raise ValueError(f"cads stats must be one of {CADS_STATS} (got {stats!r}): 'sample' rescales each sample by "
                         "its own mean and std, 'batch' by the whole batch's (the reference implementation).")

    def condition(y, progress, noise):
        g = cads_gamma(progress, tau1, tau2)
        return y if g == 1.0 else cads_embedding(y, g, noise(y.shape[1:]), s, psi, stats)  # gamma 1: y, no draw

    return Hooks(params, condition=condition, condition_uncond=bool(params["noise_uncond"]))


def _no_shields(name: str, protected) -> None:
    if protected is not None:
        raise ValueError(f"method {name!r} has no shields to repel from a protected set; use method 'spell'.")


# --- particle guidance ------------------------------------------------------------------------------------------


def particle_guidance(x_t: torch.Tensor, cond: torch.Tensor, strength: float, sigma_ve: float) -> torch.Tensor:
    """The change of x0_hat by particle guidance (docs/design.md section 2), x_t's shape; zero where sigma_ve < 1.

    Per condition, on the flattened x_t: h_i = median_{j!=i} ||x_i - x_j||^2 / log(n - 1) (the lower middle for an
    even count, as torch.median), K_ij = exp(-||x_i - x_j||^2 / h_i), and the change is
    strength * sigma_ve^2 * sum_{j!=i} (2 / h_i) K_ij (x_i - x_j): the reference's eps - strength * sigma_ve * grad
    seen on x0_hat. Groups of n <= 2 get zero (log 1 = 0), as in the reference. O(n^2 D): two (B, D) matmuls over
    the whole batch, other conditions masked out (no per-group loop, no host sync).
    """
    if sigma_ve < 1.0 or strength == 0.0:
        return torch.zeros_like(x_t)
    return _pg_change(x_t, PGGroups.of(cond, x_t), strength, sigma_ve)


@dataclass(frozen=True)
class PGGroups:
    """The batch's condition groups as PG needs them: fixed over a run, so the intervention computes them once."""

    same: torch.Tensor  # (B, B) float, 1 where j != i has i's condition and the group has n > 2 (else no term)
    others: torch.Tensor  # (B, B) bool, True where j is not one of i's n - 1 distances
    padding: torch.Tensor  # (B, B) what those entries become so that a row's median is the median of i's distances
    log_n1: torch.Tensor  # (B,) log(n - 1); log 2 where n <= 2 (those rows of `same` are zero)

    @classmethod
    def of(cls, cond: torch.Tensor, like: torch.Tensor) -> "PGGroups":
        wd = torch.float64 if like.dtype == torch.float64 else torch.float32
        B = cond.shape[0]
        same = (cond[:, None] == cond[None, :]).fill_diagonal_(False)  # j != i, same condition
        n1 = same.sum(1)  # n - 1
        # torch.median of a full row is its ((B-1)//2)-th smallest; with p entries at -inf and the other masked ones
        # at +inf it is the ((n-2)//2)-th smallest of the n - 1 distances (the lower middle) when
        # p = (B-1)//2 - (n-2)//2: the first p masked entries of each row go to -inf.
        p = (B - 1) // 2 - (n1 - 1).clamp_min(0) // 2
        rank = (~same).cumsum(1) - 1  # position among the row's masked entries
        padding = torch.where(rank < p[:, None], -math.inf, math.inf).to(wd)
        return cls((same & (n1 >= 2)[:, None]).to(wd), ~same, padding, n1.clamp_min(2).to(wd).log())


def _pg_change(x_t: torch.Tensor, g: PGGroups, strength: float, sigma_ve: float) -> torch.Tensor:
    """particle_guidance's arithmetic in few tensor operations (at batch 8 each costs more than its flops)."""
    f = x_t.reshape(x_t.shape[0], -1).to(g.same.dtype)
    gram = f @ f.T  # one of the two (B, D)-sized operations; everything else is (B, B)
    sq = gram.diagonal()
    d2 = (sq[:, None] + sq[None, :]).sub_(gram, alpha=2).clamp_min_(0)  # x_t is mostly noise: no cancellation
    med2 = torch.where(g.others, g.padding, d2).median(dim=1).values  # median_{j != i} of d_ij, squared
    # -1 / h_i; h = 0 needs identical x_t (repeated seeds) and is undefined, as in the reference
    neg_inv_h = g.log_n1.div(med2).neg_()[:, None]
    kernel = (d2 * neg_inv_h).exp_().mul_(g.same)  # K_ij, zero off the group and in groups of n <= 2
    kernel.mul_((-2 * strength * sigma_ve**2) * neg_inv_h)
    # sum_j c_i K_ij (x_i - x_j) = ((diag(K 1) - K) f)_i with K scaled by c_i = 2 strength sigma_ve^2 / h_i
    change = (torch.diag_embed(kernel.sum(1)) - kernel) @ f  # the other (B, D)-sized operation
    return change.reshape(x_t.shape).to(x_t.dtype)


class ParticleGuidance:
    """PG as an intervention on x0_hat: it reads x_t, alpha and sigma from the evaluation's context."""

    def __init__(self, strength: float):
        self.strength = strength
        self._cond, self._groups, self._nearest = None, None, None

    def __call__(self, x0, cond, *, x_t, alpha, sigma, **context) -> SpellStep:
        sigma_ve = sigma / alpha if alpha > 0 else math.inf
        if self.strength == 0.0 or sigma_ve < 1.0 or not math.isfinite(sigma_ve):  # alpha = 0: x0_hat plays no part
            return SpellStep.unchanged(x0)  # x0 itself: the plain sampler bit for bit
        if cond is not self._cond:  # a run passes the same condition tensor at every evaluation
            self._cond, self._groups = cond, PGGroups.of(cond, x_t)
            self._nearest = torch.full((x0.shape[0],), math.inf, device=x0.device)  # no shields: +inf
        change = _pg_change(x_t, self._groups, self.strength, sigma_ve).to(x0.dtype)
        return SpellStep(x0 + change, change, {}, self._nearest)


# --- CADS ---------------------------------------------------------------------------------------------------------


def cads_gamma(t: float, tau1: float, tau2: float) -> float:
    """CADS's annealing schedule at the sampling progress t (1 at the first step, 0 at the end): 1 for t <= tau1 (near
    the data), 0 for t >= tau2, (tau2 - t) / (tau2 - tau1) between. tau1 == tau2 is the step: 1 up to tau1, 0 above it
    (tau1 = tau2 = 1: the condition is never noised)."""
    if t <= tau1:
        return 1.0
    if t >= tau2:
        return 0.0
    return (tau2 - t) / (tau2 - tau1)


def cads_embedding(y: torch.Tensor, gamma: float, eps: torch.Tensor, noise_scale: float, psi: float,
                   stats: str = "sample") -> torch.Tensor:
    """y_hat = sqrt(gamma) y + s sqrt(1 - gamma) eps, rescaled to y's mean and std (torch.std, unbiased), then
    psi * rescaled + (1 - psi) * y_hat (Sadat et al. 2024, Eq. 4-5). stats="sample": mean and std over all but the
    batch dim, per sample; "batch": over the whole tensor (the reference implementation)."""
    y_hat = math.sqrt(gamma) * y + noise_scale * math.sqrt(1.0 - gamma) * eps
    if psi == 0.0:
        return y_hat
    dims = tuple(range(1, y.ndim)) if stats == "sample" else tuple(range(y.ndim))
    moments = lambda v: (v.mean(dims, keepdim=True), v.std(dims, keepdim=True))  # noqa: E731
    (m, s), (m_hat, s_hat) = moments(y), moments(y_hat)
    return psi * ((y_hat - m_hat) / s_hat * s + m) + (1.0 - psi) * y_hat


def spell_method(radius: float, overcomp: float = 1.0, *, intra_batch: bool = False, memory: bool = False) -> dict:
    """SPELL as plain data (what a `Setting` carries)."""
    return {"name": "spell", "radius": float(radius), "overcomp": float(overcomp), "intra_batch": bool(intra_batch),
            "memory": bool(memory)}
