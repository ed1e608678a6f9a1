"""SPELL: the sparse repellency correction (paper Eq. 5 and 8, Algorithm 2) and the sources of shields.

    delta_b = overcomp * sum_k relu(r / ||x0_b - z_k|| - 1) * (x0_b - z_k)

A center that coincides with x0_b gives no direction and is skipped (`pushes`): distance 0, or a distance that float
rounding alone can produce, at most COINCIDENT_ULPS units of the work dtype's epsilon times the larger of the two norms
(identical predictions at a flow model's sigma = 1 come out exactly equal from `generate` and up to 1e-16 apart from a
scheduler's v round trip; both are skipped, so both paths give the same correction). The rule needs accurate
distances: exact differences (small problems, the refined nearest of a protected set, the faiss verification); the
matmul expansion of large unrefined problems resolves distances only to about sqrt(eps) of the norms.

Pure tensor code: nothing here knows models, samplers or files. Distances are computed in float32 (float64 for
float64 input) and centers are processed in chunks, so memory is O(B*chunk + B*D), never O(B*K*D).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from . import schema
from .shield_schedules import Scheduled

COINCIDENT_ULPS = 64  # a pair closer than 64 eps x its larger norm is one point: rounding, not a direction
DEFAULT_CHUNK = 4096  # centers per chunk: B x 4096 distances at a time
EXACT_WORK = 2**16  # B*K*D up to which distances come from exact differences (slower per element, no cancellation)


@dataclass
class Correction:
    """Result of the correction for a batch: `delta` like x0, `active` (B,) shield counts, `nearest` (B,) distance;
    `cells_probed` (B,): index cells each query scanned (an index's search statistic; None: no index)."""

    delta: torch.Tensor
    active: torch.Tensor
    nearest: torch.Tensor
    cells_probed: torch.Tensor | None = None

    def __add__(self, other: "Correction") -> "Correction":
        return Correction(self.delta + other.delta, self.active + other.active, torch.minimum(self.nearest, other.nearest),
                          _sum_cells(self.cells_probed, other.cells_probed))


def _sum_cells(a, b):
    """Cells probed of two searches: the sum, or the one that reported (None: neither)."""
    return a + b if a is not None and b is not None else (a if a is not None else b)


def check_radius(radius: float, overcomp: float = 1.0) -> None:
    if not (isinstance(radius, (int, float)) and math.isfinite(radius) and radius >= 0):
        raise ValueError(f"radius must be a finite number >= 0 (got {radius!r}); use 0 to switch SPELL off.")
    if not (isinstance(overcomp, (int, float)) and math.isfinite(overcomp) and overcomp > 0):
        raise ValueError(f"overcomp must be a finite number > 0 (got {overcomp!r}); 1 is the exact correction.")


def correction_reference(x0, centers, radius, overcomp=1.0, *, skip_self=False, x_groups=None, center_groups=None):
    """Eq. 5 (Eq. 8 with skip_self) as written, in float64 with the whole (B, K, D) difference tensor: the readable
    reference that `correction` (chunked, no B x K x D tensor) is tested against."""
    x = x0.reshape(x0.shape[0], -1).double()
    z = centers.reshape(centers.shape[0], -1).double()
    diff = x[:, None, :] - z[None, :, :]  # x0_b - z_k
    d = diff.norm(dim=-1)
    allowed = torch.ones_like(d, dtype=torch.bool)
    if skip_self:
        allowed &= ~torch.eye(d.shape[0], d.shape[1], dtype=torch.bool)  # never oneself
    if x_groups is not None:
        allowed &= torch.as_tensor(x_groups)[:, None] == torch.as_tensor(center_groups)[None, :]  # same condition
    inside = allowed & pushes(d, radius, x.norm(dim=1)[:, None], z.norm(dim=1)[None, :], x0.dtype)
    w = torch.where(inside, radius / d - 1, torch.zeros_like(d))  # relu(r / ||x0 - z|| - 1)
    delta = overcomp * (w[..., None] * diff).sum(1)
    nearest = torch.where(allowed, d, math.inf).min(1).values if d.shape[1] else torch.full((d.shape[0],), math.inf)
    return Correction(delta.reshape(x0.shape), inside.sum(1), nearest)


def pushes(d: torch.Tensor, radius: float, x_norm: torch.Tensor, z_norm: torch.Tensor, dtype: torch.dtype):
    """Which pairs push (the one rule of every SPELL path): closer than r, and not coincident, i.e. farther apart than
    COINCIDENT_ULPS * eps * max(||x0_b||, ||z_k||), eps that of the work dtype of inputs of `dtype` (float32 for
    half and float32 inputs, float64 for float64): a distance rounding alone can make between equal predictions,
    which gives no direction. d (B, K), norms broadcastable to it."""
    floor = (COINCIDENT_ULPS * torch.finfo(_work_dtype(dtype)).eps) * torch.maximum(x_norm, z_norm)
    return (d < radius) & (d > floor)


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32  # half inputs: distances in float32


def correction(
    x0: torch.Tensor,
    centers: torch.Tensor,
    radius: float,
    *,
    overcomp: float = 1.0,
    skip_self: bool = False,
    x_groups: torch.Tensor | None = None,
    center_groups: torch.Tensor | None = None,
    chunk: int = DEFAULT_CHUNK,
    check: bool = True,
    refine: int = 0,
) -> Correction:
    """The SPELL correction of x0 (B, ...) against centers (K, ...) in the same space; K may be 0.

    skip_self: centers are the batch itself (intra-batch, Eq. 8) and a sample never repels itself.
    x_groups (B,) / center_groups (K,): a pair interacts only when the groups are equal (e.g. the same prompt).
    check: validate inputs (NaN, shapes); the sampler turns it off after validating once, to avoid host syncs.
    refine: where distances come from the matmul expansion, recompute the `refine` nearest centers of each sample
        (per chunk) from exact differences, and their pushes too: the expansion cancels for near-duplicates
        (a query 0.08 from a center 240 from the origin read as distance 0 in float32, and was not pushed at all).
        Fixed-size (B, refine) gathers: no host sync.
    """
    if check:
        check_radius(radius, overcomp)
        _check_pair(x0, centers, skip_self)
    if x0.shape[0] == 0:
        return _empty(x0)  # an empty batch: nothing to correct
    B, K = x0.shape[0], centers.shape[0]
    wd = _work_dtype(x0.dtype)
    x = x0.reshape(B, -1).to(wd)
    z = centers.reshape(K, x.shape[1])
    origin = x.mean(dim=0, keepdim=True)  # distances from centred coordinates: little cancellation in the expansion
    xc = x - origin
    xc_sq = (xc * xc).sum(dim=1, keepdim=True)
    x_norm = x.norm(dim=1, keepdim=True)
    delta = torch.zeros_like(x)
    active = torch.zeros(B, dtype=torch.long, device=x0.device)
    nearest = torch.full((B,), math.inf, dtype=wd, device=x0.device)
    for start in range(0, K, chunk):
        zk = z[start : start + chunk].to(wd)
        zc = zk - origin
        d = _distances(xc, xc_sq, zc)  # (B, k)
        mask = _pair_mask(B, zc.shape[0], start, skip_self, x_groups, center_groups, centers.device)
        if mask is not None:
            d = d.masked_fill(~mask, math.inf)
        near = None
        if refine and _expanded(xc, zc):  # the nearest few from exact differences (near-duplicates cancel)
            idx = d.topk(min(refine, d.shape[1]), dim=1, largest=False).indices  # (B, m)
            diff = x[:, None, :] - zk[idx]  # (B, m, D): x0_b - z_k, exact
            exact = diff.norm(dim=-1)
            d = d.scatter(1, idx, torch.where(d.gather(1, idx).isinf(), math.inf, exact))  # masked pairs stay out
            near = (idx, diff)
        nearest = torch.minimum(nearest, d.min(dim=1).values)
        inside = pushes(d, radius, x_norm, zk.norm(dim=1)[None, :], wd)  # no push, not counted where coincident
        active += inside.sum(dim=1)
        w = torch.where(inside, radius / d.clamp_min(torch.finfo(wd).tiny) - 1.0, torch.zeros_like(d))  # the ReLU
        if near is not None:
            idx, diff = near
            delta += (w.gather(1, idx)[..., None] * diff).sum(1)  # the refined pushes from exact differences
            w = w.scatter(1, idx, 0.0)
        delta += w.sum(dim=1, keepdim=True) * xc - w @ zc  # sum_k w_k (x - z_k) without a (B, k, D) tensor
    delta = (overcomp * delta).reshape(x0.shape).to(x0.dtype)
    return Correction(delta, active, nearest)


def _expanded(xc: torch.Tensor, zc: torch.Tensor) -> bool:
    return xc.shape[0] * zc.shape[0] * xc.shape[1] > EXACT_WORK


def _distances(xc: torch.Tensor, xc_sq: torch.Tensor, zc: torch.Tensor) -> torch.Tensor:
    """Pairwise L2 distances. Small problems use exact differences (the guarantee's sphere is hit to float
    rounding); large ones the matmul expansion |x|^2 + |z|^2 - 2 x.z, which is many times faster."""
    if not _expanded(xc, zc):
        return torch.cdist(xc, zc, compute_mode="donot_use_mm_for_euclid_dist")
    d2 = torch.addmm(xc_sq + (zc * zc).sum(dim=1)[None, :], xc, zc.T, alpha=-2.0)
    return d2.clamp_min(0.0).sqrt()


def _pair_mask(B, k, start, skip_self, x_groups, center_groups, device):
    mask = None
    if skip_self:
        mask = torch.arange(B, device=device)[:, None] != torch.arange(start, start + k, device=device)[None, :]
    if x_groups is not None and center_groups is not None:
        same = x_groups[:, None] == center_groups[None, start : start + k]
        mask = same if mask is None else mask & same
    return mask


def all_finite(t: torch.Tensor, chunk: int = DEFAULT_CHUNK) -> bool:
    """isfinite over row chunks: a (K, D) reference set is checked without a K x D temporary."""
    return all(bool(torch.isfinite(part).all()) for part in t.reshape(t.shape[0], -1).split(chunk)) if t.numel() else True


def _check_pair(x0: torch.Tensor, centers: torch.Tensor, skip_self: bool) -> None:
    for name, t in (("x0", x0), ("centers", centers)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor (got {type(t).__name__}); convert it with "
                            "torch.as_tensor(...), in the diffusion space's dtype.")
    if not (x0.is_floating_point() and centers.is_floating_point()):
        raise TypeError(f"x0 and centers must be floating point (got {x0.dtype}, {centers.dtype}).")
    if x0.ndim < 2:
        raise ValueError(f"x0 must be a batch (B, ...) with at least 2 dims, got shape {tuple(x0.shape)}.")
    if centers.shape[1:] != x0.shape[1:]:
        raise ValueError(
            f"reference shape {tuple(centers.shape[1:])} does not match the sample shape {tuple(x0.shape[1:])}: "
            "references must live in the model's diffusion space (latents for latent models, pixels otherwise)."
        )
    if skip_self and centers.shape[0] != x0.shape[0]:
        raise ValueError("skip_self=True means the centers are the batch itself: pass centers=x0.")
    if not all_finite(x0):
        raise ValueError("x0 contains NaN or inf: the model produced non-finite predictions; check its inputs and dtype.")
    if not all_finite(centers):
        raise ValueError("the reference points contain NaN or inf: clean the reference set before shielding it.")


# --- shield sources -------------------------------------------------------------------------------------------
# A source turns the current x0_hat (B, ...) into a Correction; `Spell` sums the sources and records per source.


class IntraBatch:
    """The other members' x0_hat at the same step (Eq. 8); members interact only within the same condition."""

    name = "batch"

    def __call__(self, x0, radius, overcomp, cond):
        return correction(x0, x0, radius, overcomp=overcomp, skip_self=True, x_groups=cond, center_groups=cond, check=False)


class Memory:
    """Final outputs of earlier rounds, per condition; `add` appends a finished batch."""

    name = "memory"

    def __init__(self, items: torch.Tensor | None = None, conditions: torch.Tensor | None = None):
        self.items = items
        self.conditions = conditions
        if items is not None and conditions is None:
            self.conditions = torch.zeros(items.shape[0], dtype=torch.long, device=items.device)

    def add(self, x0: torch.Tensor, cond: torch.Tensor) -> None:
        cond = torch.as_tensor(cond, device=x0.device)
        if cond.ndim != 1 or cond.shape[0] != x0.shape[0]:
            raise ValueError(f"Memory.add needs one condition per output: got {x0.shape[0]} outputs and conditions "
                             f"of shape {tuple(cond.shape)}.")
        if self.items is not None and x0.shape[1:] != self.items.shape[1:]:
            raise ValueError(f"Memory.add: outputs of shape {tuple(x0.shape[1:])} do not match the memory's "
                             f"{tuple(self.items.shape[1:])}.")
        if self.items is None:
            self.items, self.conditions = x0.detach().clone(), cond.detach().clone()
        else:
            self.items = torch.cat([self.items, x0.detach().to(self.items)])
            self.conditions = torch.cat([self.conditions, cond.detach().to(self.conditions)])

    def __len__(self) -> int:
        return 0 if self.items is None else self.items.shape[0]

    def __call__(self, x0, radius, overcomp, cond):
        if self.items is None:
            return _empty(x0)
        return correction(
            x0, self.items, radius, overcomp=overcomp, x_groups=cond, center_groups=self.conditions, check=False
        )


PROTECTED_REFINE = 64  # per sample and chunk, the nearest protected items get exact distances and pushes


class ExactProtected:
    """A static protected set searched exhaustively (any condition); the faiss index implements the same call.
    The nearest PROTECTED_REFINE items of each sample get exact distances: memorised near-copies are what protection
    exists for, and the matmul expansion cancels exactly for them."""

    name = "protected"

    def __init__(self, items: torch.Tensor, chunk: int = DEFAULT_CHUNK):
        if not all_finite(items):
            raise ValueError("the protected set contains NaN or inf: clean it before shielding it.")
        self.items, self.chunk = items, chunk
        self.search_seconds, self.queries = 0.0, 0  # cumulative time in the search (each call's whole time), rows

    def __call__(self, x0, radius, overcomp, cond):
        start = time.perf_counter()
        c = correction(x0, self.items, radius, overcomp=overcomp, chunk=self.chunk, check=False,
                       refine=PROTECTED_REFINE)
        self.search_seconds += time.perf_counter() - start
        self.queries += x0.shape[0]
        return c


def _empty(x0: torch.Tensor) -> Correction:
    B = x0.shape[0]
    return Correction(
        torch.zeros_like(x0),
        torch.zeros(B, dtype=torch.long, device=x0.device),
        torch.full((B,), math.inf, dtype=_work_dtype(x0.dtype), device=x0.device),
    )


@dataclass
class SpellStep:
    """What an intervention on x0_hat did at one evaluation: the new x0, its change, the per-source shield counts
    (names of `schema.SOURCES`; a missing name counts 0), the distance to the nearest reference (+inf: none) and the
    index cells its searches probed (`Correction.cells_probed`, summed over passes; None: no index reported any).
    Recorded only where a method reports them (None: not reported): `radius` and `overcomp`, the r(t) and lambda(t)
    a schedule gave this evaluation (host floats); `residual` (B,), how far inside a shield the corrected x0 still is
    (semantic SPELL, in its feature space)."""

    x0: torch.Tensor
    delta: torch.Tensor
    active: dict  # source name -> (B,) counts
    nearest: torch.Tensor
    cells_probed: torch.Tensor | None = None
    radius: float | None = None
    overcomp: float | None = None
    residual: torch.Tensor | None = None

    @classmethod
    def unchanged(cls, x0: torch.Tensor) -> "SpellStep":
        """No intervention: x0 itself (bit for bit), no change, no shield."""
        e = _empty(x0)
        return cls(x0, e.delta, {}, e.nearest)

    def then(self, later: "SpellStep") -> "SpellStep":
        """This step followed by `later` (applied to this step's x0): changes add, counts add, nearest is the min."""
        active = dict(self.active)
        for name, count in later.active.items():
            active[name] = active[name] + count if name in active else count
        first = lambda a, b: a if a is not None else b  # noqa: E731  (one SPELL per method: at most one reports)
        return SpellStep(later.x0, self.delta + later.delta, active, torch.minimum(self.nearest, later.nearest),
                         _sum_cells(self.cells_probed, later.cells_probed), first(self.radius, later.radius),
                         first(self.overcomp, later.overcomp), first(self.residual, later.residual))


OVERLAP = ("single", "iterate")


class Spell(Scheduled):
    """SPELL with a radius, an overcompensation and a list of shield sources (intra-batch, memory, protected).

    overlap="single" is the paper's one correction per evaluation. overlap="iterate" (docs/design.md section 2, the
    paper's open problem) corrects x0_hat' again, from every source, until no shield is within r or `max_iter`
    corrections were made, so outputs leave a union of overlapping balls too. Its step reports the total change
    and the first pass's active counts and nearest distance (the shields x0_hat itself was in: what the single
    correction reports, so activity statistics mean the same in both modes). Deciding to stop reads one flag per
    extra pass from the device: the only host sync, and only in "iterate" mode.

    radius_schedule / overcomp_schedule (`spell_lab.shield_schedules`): r(t) = r m(t), lambda(t) = lambda m(t) at each
    evaluation's (t, alpha, sigma); "constant" (the default) is today's SPELL bit for bit and records nothing more.
    """

    def __init__(self, radius: float, overcomp: float = 1.0, sources=(), *, overlap: str = "single", max_iter: int = 10,
                 radius_schedule="constant", overcomp_schedule="constant"):
        check_radius(radius, overcomp)
        self.set_schedules(radius_schedule, overcomp_schedule)
        if overlap not in OVERLAP:
            raise ValueError(f"overlap must be one of {OVERLAP} (got {overlap!r}).")
        if not (isinstance(max_iter, int) and max_iter >= 1):
            raise ValueError(f"max_iter must be an integer >= 1 (got {max_iter!r}): the number of corrections at most.")
        self.radius, self.overcomp, self.sources = float(radius), float(overcomp), list(sources)
        self.overlap, self.max_iter = overlap, max_iter
        names = [s.name for s in self.sources]
        if len(set(names)) != len(names):
            raise ValueError(f"each shield source may appear once, got {names}.")

    @classmethod
    def build(cls, radius, overcomp=1.0, *, intra_batch=False, memory=None, protected=None, overlap="single",
              max_iter=10, radius_schedule="constant", overcomp_schedule="constant") -> "Spell":
        sources = [IntraBatch()] if intra_batch else []
        if memory is not None:
            sources.append(memory if isinstance(memory, Memory) else Memory(memory))
        if protected is not None:
            sources.append(protected if callable(protected) else ExactProtected(protected))
        return cls(radius, overcomp, sources, overlap=overlap, max_iter=max_iter, radius_schedule=radius_schedule,
                   overcomp_schedule=overcomp_schedule)

    def validate(self, x0_example: torch.Tensor) -> None:
        """Check references against the sample shape once, before sampling (the hot loop skips checks)."""
        for s in self.sources:
            if hasattr(s, "validate"):  # an index that does not hold its items as a tensor checks itself
                s.validate(x0_example)
                continue
            items = getattr(s, "items", None)
            if items is not None:
                _check_pair(x0_example[:1], items[:1], False)

    def correct(self, x0: torch.Tensor, cond: torch.Tensor, radius=None, overcomp=None):
        """One correction from every source: (the summed Correction, per-source active counts)."""
        radius = self.radius if radius is None else radius
        overcomp = self.overcomp if overcomp is None else overcomp
        total = _empty(x0)
        active = {n: torch.zeros_like(total.active) for n in schema.SOURCES}
        for source in self.sources:  # distances are measured at radius 0 too (the baseline's nearest_distance)
            c = source(x0, radius, overcomp, cond)
            active[source.name] = c.active
            total = total + c
        return total, active

    def nearest(self, x0: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """(B,) distance of x0 to the nearest reference (+inf: none), at the final radius."""
        return self.correct(x0, cond, self.final_radius)[0].nearest

    def __call__(self, x0: torch.Tensor, cond: torch.Tensor, **context) -> SpellStep:
        """SPELL at one evaluation; `context` (x_t, t, alpha, sigma): t, alpha and sigma set r(t) and lambda(t)
        where a schedule is given (constant schedules ignore them)."""
        r, lam = self.at(context["t"], context["alpha"], context["sigma"]) if self.scheduled else (None, None)
        total, active = self.correct(x0, cond, r, lam)
        if self.radius == 0:
            return SpellStep(x0, total.delta, active, total.nearest, total.cells_probed, r, lam)  # x0: bit-identical
        delta, passes, inside, cells = total.delta, 1, total.active, total.cells_probed
        while self.overlap == "iterate" and passes < self.max_iter and bool(inside.any()):
            again, _ = self.correct(x0 + delta, cond, r, lam)  # x0_hat' may sit in a neighbouring shield: push again
            delta, passes, inside = delta + again.delta, passes + 1, again.active
            cells = _sum_cells(cells, again.cells_probed)
        return SpellStep(x0 + delta, delta, active, total.nearest, cells, r, lam)
