"""Semantic SPELL (docs/design.md section 2, "Semantic shields"; the paper's open question, §4.6 and §5): shields and
distances in a feature space phi (the model registry's `feature_map`: a classifier's penultimate features of the
decoded x0_hat) instead of the diffusion space.

    f_b = phi(x0_b)                                    features of each prediction
    df_b = Eq. 5 / Eq. 8 in feature space              (`repellency.correction` on f; the memory keeps features; a
                                                       protected set is mapped by phi once, then searched by an
                                                       index of its own kind in feature space)
    dx_b = J_b^T (J_b J_b^T + ridge)^-1 df_b           J_b = d phi / d x0 at x0_b: the least-norm change of x0_b
                                                       whose linearised effect on phi is df_b, scaled down to
                                                       ||dx_b|| <= TRUST ||x0_b|| (a trust region)
    repeated gn_iter times (Gauss-Newton on phi(x) = f_b + df_b; a later step only where it brings phi closer),
    only for the samples with an active shield.

Per evaluation it reports what SPELL reports (feature-space nearest distance and counts; the change of x0_hat, whose
norm the recorder sets against the score), plus `residual`: relu(r - ||phi(x0') - z||) for the nearest shield center
z, how far inside a feature shield the corrected x0_hat still is (0: outside every shield).

Host syncs: one per evaluation, `nonzero` of the active rows (only active samples pay for the Jacobian).
`pullback_reference` / `semantic_reference` are the literal float64 versions the fast path is tested against.
"""

from __future__ import annotations

import time
import weakref

import torch

from . import schema
from .protect import FaissProtected
from .repellency import (ExactProtected, Memory, SpellStep, _empty, _work_dtype, check_radius, correction,
                         correction_reference)
from .shield_schedules import Scheduled

RIDGE = 1e-6  # relative to the mean eigenvalue of J J^T: keeps the solve defined where phi is locally flat
# A step moves x0_hat by at most TRUST x ||x0_hat||: where J is ill-conditioned (blurry early predictions on digits),
# the least-norm change asked 10x the prediction's norm and the sampler diverged; the residual records what is left.
TRUST = 0.5


def within_trust(dx: torch.Tensor, x: torch.Tensor, trust: float = TRUST) -> torch.Tensor:
    """dx (n, D) scaled down, per row, to norm <= trust * ||x_b|| (x (n, ...)); unchanged where already within."""
    limit = trust * x.reshape(x.shape[0], -1).norm(dim=1)
    norm = dx.norm(dim=1)
    return dx * torch.where(norm > limit, limit / norm.clamp_min(torch.finfo(dx.dtype).tiny), 1.0)[:, None]


def pullback(J: torch.Tensor, df: torch.Tensor, ridge: float = RIDGE) -> torch.Tensor:
    """Least-norm dx (n, D) with J dx = df: J^T (J J^T + ridge)^-1 df, J (n, F, D), df (n, F); float64 solve."""
    Jd = J.double()
    G = Jd @ Jd.mT  # (n, F, F)
    scale = G.diagonal(dim1=-2, dim2=-1).mean(-1)
    flat = scale <= 0  # J = 0: phi does not move with x, so no change of x moves phi
    G = G + (ridge * scale + flat)[:, None, None] * torch.eye(G.shape[-1], dtype=G.dtype, device=G.device)
    y = torch.linalg.solve(G, df.double()[..., None])
    return (Jd.mT @ y)[..., 0].to(df.dtype)


def pullback_reference(J: torch.Tensor, df: torch.Tensor) -> torch.Tensor:
    """The same change from a direct least-squares solve, one sample at a time (gelsd: the minimum-norm solution)."""
    return torch.stack([torch.linalg.lstsq(j.double().cpu(), v.double().cpu()[:, None], driver="gelsd").solution[:, 0]
                        for j, v in zip(J, df)]).to(df)


def jacobians(phi, x: torch.Tensor) -> torch.Tensor:
    """(n, F, D) per-sample Jacobians of phi at x (n, *shape). Samples are independent under phi (eval mode), so the
    Jacobian of sum_b phi(x)_b holds each one: F vectorised backward passes for the whole set."""
    with torch.inference_mode(False), torch.enable_grad():  # Lightning's predict loop runs in inference mode
        x = x.detach().clone()  # a normal tensor autograd can differentiate through
        summed = lambda v: phi(v).sum(0)  # noqa: E731
        J = None
        if not getattr(phi, "no_vmap", False):
            try:
                J = torch.autograd.functional.jacobian(summed, x, vectorize=True)  # (F, n, *shape)
            except RuntimeError as e:  # an op whose backward vmap cannot batch (e.g. a diffusers VAE's decoder)
                if "vmap" not in str(e):
                    raise
                try:
                    phi.no_vmap = True  # remembered: later calls go straight to the loop
                except AttributeError:  # a bound method takes no attribute: it pays the failed try each call
                    pass
        if J is None:
            J = torch.autograd.functional.jacobian(summed, x)  # one backward pass per feature
    return J.reshape(J.shape[0], x.shape[0], -1).transpose(0, 1)


class FeatureMemory(Memory):
    """Earlier rounds' outputs, kept as their features phi(x0) (set by `SemanticSpell.bind`)."""

    def __init__(self):
        super().__init__()
        self.phi = None

    def add(self, x0: torch.Tensor, cond: torch.Tensor) -> None:
        with torch.no_grad():
            super().add(self.phi(x0).to(_work_dtype(x0.dtype)), cond)


FEATURE_CHUNK = 256  # protected items mapped by phi per forward pass


_FEATURE_INDEXES = weakref.WeakKeyDictionary()  # protected source -> {feature-map key: its index in feature space}


def protected_items(source) -> torch.Tensor:
    """The diffusion-space items of a protected set: a tensor, `ExactProtected`'s, or a faiss index's stored vectors."""
    if isinstance(source, torch.Tensor):
        return source
    return source.items if isinstance(source, ExactProtected) else source.stored_items()


def feature_index(source, phi, device=None):
    """A protected set's shield source in feature space: its items mapped by phi in chunks, searched by an index of the
    source's kind and settings (exhaustive for a tensor or `ExactProtected`; a faiss source's nlist, nprobe, exact)."""
    items = protected_items(source)
    with torch.no_grad():
        f = torch.cat([phi(items[i : i + FEATURE_CHUNK].to(device)).float() for i in range(0, len(items), FEATURE_CHUNK)])
    if not isinstance(source, FaissProtected):
        return ExactProtected(f)
    return FaissProtected(f.cpu().numpy(), nlist=source.index.nlist, nprobe=source.nprobe, exact=source.exact,
                        cache_margin=source.cache_margin, device=source.device)


class FeatureProtected:
    """A protected set searched in feature space. Its features are computed once per set and feature map (`bind`: the
    key names the map, e.g. model and encoder) and kept for as long as the set's source lives, which every unit of a
    run shares."""

    name = "protected"

    def __init__(self, source):
        if not isinstance(source, (torch.Tensor, ExactProtected, FaissProtected)):
            raise ValueError(f"spell with space='features' cannot read the items of a {type(source).__name__} "
                             "protected set; give an exact or faiss protected index.")
        self.source, self.index = source, None

    def bind(self, phi, key, device=None) -> None:
        if isinstance(self.source, torch.Tensor):  # a bare tensor holds no attribute: its index lives here
            self.index = feature_index(self.source, phi, device) if self.index is None else self.index
            return
        built = _FEATURE_INDEXES.setdefault(self.source, {})
        if key not in built:
            built[key] = feature_index(self.source, phi, device)
        self.index = built[key]

    def __call__(self, f, radius, overcomp, cond):
        if self.index is None:
            raise ValueError("a feature-space protected set has no features yet: bind semantic SPELL to a model first.")
        start = time.perf_counter()
        c = self.index(f, radius, overcomp, cond)
        if hasattr(self.source, "search_seconds"):  # the run's round clock reads the set's own counter
            self.source.search_seconds += time.perf_counter() - start
        return c


class SemanticSpell(Scheduled):
    """SPELL in the feature space of the model it is bound to (`bind(model)`: the registry's feature map)."""

    def __init__(self, radius: float, overcomp: float = 1.0, *, intra_batch: bool = False, memory: bool = False,
                 gn_iter: int = 1, radius_schedule="constant", overcomp_schedule="constant", phi=None, ridge=RIDGE,
                 trust=TRUST, encoder=None, protected=None):
        check_radius(radius, overcomp)
        self.radius, self.overcomp, self.intra_batch, self.gn_iter = float(radius), float(overcomp), intra_batch, gn_iter
        self.set_schedules(radius_schedule, overcomp_schedule)
        self.memory = FeatureMemory() if memory else None
        self.protected = FeatureProtected(protected) if protected is not None else None
        self.phi, self.ridge, self.trust, self.encoder = None, ridge, trust, encoder
        if phi is not None:
            self.set_phi(phi)

    def set_phi(self, phi, key=None, device=None) -> None:
        """phi, and the protected set's features under it (computed once per key; None: this phi object)."""
        self.phi = phi
        if self.memory is not None:
            self.memory.phi = phi
        if self.protected is not None:
            self.protected.bind(phi, key if key is not None else id(phi), device)

    def bind(self, model) -> None:
        """phi (once; a given phi is kept): with `encoder` (a DINOv2 or CLIP folder) the model's own
        `encoder_features` (a diffusers model: its VAE decoder, then that encoder), else the registry's feature map."""
        if self.phi is None:
            from .models.registry import feature_map  # the registry: looked up when a model is known
            device = next(model.parameters(), torch.empty(0)).device if hasattr(model, "parameters") else "cpu"
            key = (getattr(model, "name", type(model).__name__), self.encoder, str(device))
            with torch.inference_mode(False):  # weights loaded in Lightning's inference mode could not be differentiated
                if self.encoder is not None:
                    if not hasattr(model, "encoder_features"):
                        raise ValueError(f"encoder= is for diffusers models (their VAE decodes x0); model "
                                         f"{getattr(model, 'name', type(model).__name__)!r} has its own feature map: "
                                         "drop encoder=.")
                    self.set_phi(model.encoder_features(self.encoder, device), key, device)
                else:
                    self.set_phi(feature_map(getattr(model, "name", type(model).__name__), device), key, device)

    def _features(self, x0: torch.Tensor) -> torch.Tensor:
        if self.phi is None:
            raise ValueError("semantic SPELL has no feature map: bind it to a model (generate does) or pass phi=.")
        with torch.no_grad():
            return self.phi(x0).to(_work_dtype(x0.dtype))  # float32 features (float64 for float64 x0)

    def correct(self, f: torch.Tensor, cond: torch.Tensor, radius: float, overcomp: float, queries=None):
        """Eq. 5/8 on features f (B, F): (summed Correction, per-source counts). queries (B, F): other points to
        correct against the same centers (the corrected features, for the residual); row b still skips center b."""
        q = f if queries is None else queries
        total = _empty(q)
        active = {n: torch.zeros_like(total.active) for n in schema.SOURCES}
        if self.intra_batch:
            c = correction(q, f, radius, overcomp=overcomp, skip_self=True, x_groups=cond, center_groups=cond, check=False)
            active["batch"], total = c.active, total + c
        if self.memory is not None and len(self.memory):
            c = self.memory(q, radius, overcomp, cond)
            active["memory"], total = c.active, total + c
        if self.protected is not None:
            c = self.protected(q, radius, overcomp, cond)
            active["protected"], total = c.active, total + c
        return total, active

    def nearest(self, x0: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """(B,) feature-space distance of x0 to the nearest reference (+inf: none)."""
        return self.correct(self._features(x0), cond, self.final_radius, self.overcomp)[0].nearest

    def __call__(self, x0: torch.Tensor, cond: torch.Tensor, **context) -> SpellStep:
        t, alpha, sigma = context.get("t", 0.0), context.get("alpha", 1.0), context.get("sigma", 0.0)
        r, lam = self.at(t, alpha, sigma)
        f = self._features(x0)
        total, active = self.correct(f, cond, r, lam)
        record = (r, lam) if self.scheduled else (None, None)
        if self.radius == 0:
            return SpellStep(x0, torch.zeros_like(x0), active, total.nearest, None, *record, torch.zeros_like(total.nearest))
        rows = (total.active > 0).nonzero().squeeze(1)  # the one host sync: only active samples pay for J
        x_new = x0
        if rows.numel():
            x_new = x0.index_copy(0, rows, self._pull(x0[rows], f[rows] + total.delta[rows]))
        f_new = self._features(x_new)
        after = self.correct(f, cond, r, lam, queries=f_new)[0].nearest
        residual = (r - after).clamp_min(0.0).nan_to_num(posinf=0.0)  # 0 outside every shield (inf: none)
        return SpellStep(x_new, x_new - x0, active, total.nearest, None, *record, residual)

    def _pull(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """gn_iter Gauss-Newton steps of x (n, *shape) towards phi(x) = target (n, F). A later step is kept only where
        it brings phi closer to the target (a target phi cannot reach makes plain Gauss-Newton diverge)."""
        f = self._features(x)
        for i in range(self.gn_iter):
            dx = within_trust(pullback(jacobians(self.phi, x), target - f, self.ridge), x, self.trust)
            step = dx.reshape(x.shape).to(x.dtype)
            x_new = x + step
            f_new = self._features(x_new)
            if i == 0:  # the first step is Eq. 5's pull-back itself, kept as it is
                x, f = x_new, f_new
                continue
            better = ((target - f_new).norm(dim=1) < (target - f).norm(dim=1)).view(-1, *[1] * (x.ndim - 1))
            x, f = torch.where(better, x_new, x), torch.where(better.view(-1, 1), f_new, f)
        return x


def semantic_reference(phi, x0, cond, radius, overcomp=1.0, *, memory_features=None, memory_cond=None,
                       protected_features=None, gn_iter=1, trust=TRUST):
    """Semantic SPELL written out, in float64, one sample at a time: features, Eq. 5/8 by `correction_reference`,
    per-sample Jacobians by autograd, the pull-back by a least-squares solve. (x0', feature-space delta, counts)."""
    x = x0.double()
    phi64 = lambda v: phi(v).double()  # noqa: E731
    f = phi64(x).detach()
    df = correction_reference(f, f, radius, overcomp, skip_self=True, x_groups=cond, center_groups=cond)
    delta, active = df.delta, df.active
    if memory_features is not None:
        dm = correction_reference(f, memory_features.double(), radius, overcomp, x_groups=cond, center_groups=memory_cond)
        delta, active = delta + dm.delta, active + dm.active
    if protected_features is not None:  # any condition, as the diffusion-space protected set
        dp = correction_reference(f, protected_features.double(), radius, overcomp)
        delta, active = delta + dp.delta, active + dp.active
    out = []
    for b in range(x.shape[0]):
        xb = x[b : b + 1]
        target = f[b] + delta[b]
        for i in range(gn_iter if active[b] > 0 else 0):
            J = torch.autograd.functional.jacobian(lambda v: phi64(v)[0], xb).reshape(1, f.shape[1], -1)
            step = pullback_reference(J, (target - phi64(xb).detach()[0])[None])[0]
            limit = trust * xb.norm()
            step = step * (limit / step.norm()) if step.norm() > limit else step  # the trust region
            moved = xb + step.reshape(xb.shape)
            error = lambda v: (target - phi64(v).detach()[0]).norm()  # noqa: E731
            if i > 0 and not error(moved) < error(xb):
                break  # a later Gauss-Newton step that does not bring phi closer is not taken
            xb = moved
        out.append(xb)
    return torch.cat(out).to(x0.dtype), delta, active

