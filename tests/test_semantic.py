"""Semantic SPELL (docs/design.md section 2, "Semantic shields"): the pull-back is the least-squares solution, the fast
path equals the literal float64 reference, identity features are the paper's SPELL, and on digits it leaves fewer
output pairs closer than r in feature space than the same seeds without it."""

import pytest
import torch

from spell_lab.methods import resolve
from spell_lab.models.registry import feature_map
from spell_lab.samplers import generate
from spell_lab.protect import FaissProtected
from spell_lab.repellency import ExactProtected
from spell_lab.semantic import (FeatureProtected, SemanticSpell, feature_index, jacobians, pullback, pullback_reference,
                                semantic_reference)


@pytest.mark.parametrize("n,F,D", [(3, 5, 12), (2, 6, 6), (4, 1, 9)])
def test_pullback_is_the_least_norm_least_squares_solution(n, F, D):
    g = torch.Generator().manual_seed(F * D)
    J, df = torch.randn(n, F, D, generator=g, dtype=torch.float64), torch.randn(n, F, generator=g, dtype=torch.float64)
    dx = pullback(J, df, ridge=0.0)
    lstsq = torch.linalg.lstsq(J, df[..., None], driver="gelsd").solution[..., 0]  # the full system, batched
    assert torch.allclose(dx, lstsq, atol=1e-9) and torch.allclose(pullback_reference(J, df), lstsq, atol=1e-9)
    assert torch.allclose((J @ dx[..., None])[..., 0], df, atol=1e-9)  # its linearised effect is the wanted change
    assert torch.allclose(pullback(J, df), dx, rtol=1e-3, atol=1e-4)  # the default ridge changes it by little


def small_phi(seed=0, D=6, F=3):
    g = torch.Generator().manual_seed(seed)
    A, B = torch.randn(D, 8, generator=g, dtype=torch.float64), torch.randn(8, F, generator=g, dtype=torch.float64)
    return lambda x: torch.tanh(x.reshape(x.shape[0], -1).to(A) @ A) @ B


def test_jacobians_are_each_samples_own():
    phi, x = small_phi(), torch.randn(4, 2, 3, dtype=torch.float64)
    J = jacobians(phi, x)
    for b in range(4):
        own = torch.autograd.functional.jacobian(lambda v: phi(v[None])[0], x[b]).reshape(3, 6)
        assert torch.allclose(J[b], own)


@pytest.mark.parametrize("gn_iter", [1, 3])
def test_fast_path_equals_the_float64_reference(gn_iter):
    phi = small_phi(1)
    g = torch.Generator().manual_seed(2)
    x0 = torch.randn(6, 6, generator=g, dtype=torch.float64) * 0.3
    cond = torch.tensor([0, 0, 0, 1, 1, 1])
    mem, mem_cond = torch.randn(3, 6, generator=g, dtype=torch.float64) * 0.3, torch.tensor([0, 1, 1])
    f = phi(x0)
    r = 0.7 * float(torch.cdist(f, f).median())
    s = SemanticSpell(r, 1.2, intra_batch=True, memory=True, gn_iter=gn_iter, phi=phi, ridge=0.0)
    s.memory.add(mem, mem_cond)
    step = s(x0, cond)
    want, delta_f, active = semantic_reference(phi, x0, cond, r, 1.2, memory_features=phi(mem), memory_cond=mem_cond,
                                               gn_iter=gn_iter)
    assert active.any() and not active.all()  # some samples move, some keep x0 exactly
    assert torch.allclose(step.x0, want, atol=1e-9)
    assert torch.equal(step.x0[active == 0], x0[active == 0])
    assert torch.equal(step.active["batch"] + step.active["memory"], active)
    assert (step.residual >= 0).all() and (step.residual[active == 0] == 0).all()


def test_identity_features_are_the_papers_spell(gmm):
    cond, method = torch.tensor([0, 0, 0, 1, 1, 1]), {"name": "spell", "radius": 1.5, "intra_batch": True}
    latent = generate(gmm, cond, range(6), steps=8, method=resolve(method))
    semantic = generate(gmm, cond, range(6), steps=8, method=resolve({**method, "space": "features"}))
    assert latent.records["active_batch"].any()
    assert torch.equal(semantic.records["active_batch"], latent.records["active_batch"])
    assert torch.allclose(semantic.x0, latent.x0, atol=1e-4)  # J = I: the pull-back is the change itself
    assert "shield_residual" in semantic.records and "shield_residual" not in latent.records


def test_feature_shields_leave_fewer_close_pairs_on_digits():
    from spell_lab.models.digits import load_digits

    model, phi = load_digits(), feature_map("digits")
    cond, seeds, r = torch.full((8,), 3), range(8), 12.0  # r: 0.9x the plain outputs' median feature distance (13.3)
    close = lambda x: int((torch.pdist(phi(x).detach()) < r).sum())  # noqa: E731
    plain = generate(model, cond, seeds, steps=10)
    shielded = generate(model, cond, seeds, steps=10,
                        method=resolve({"name": "spell", "radius": r, "intra_batch": True, "space": "features"}))
    assert close(shielded.x0) < close(plain.x0)
    assert shielded.records["active_batch"].any() and (shielded.records["shield_residual"] >= 0).all()


def test_refusals_say_what_to_change(gmm):
    with pytest.raises(ValueError, match="space"):
        resolve({"name": "spell", "space": "pixels"})
    with pytest.raises(ValueError, match="cannot read the items"):
        SemanticSpell(1.0, protected=object(), phi=lambda x: x)
    with pytest.raises(ValueError, match="no registered feature map"):
        feature_map("sd3")


def test_jacobians_in_inference_mode_and_a_flat_map_moves_nothing():
    phi, x = small_phi(), torch.randn(2, 6, dtype=torch.float64)
    with torch.inference_mode():  # how Lightning's predict loop calls the sampler
        assert torch.allclose(jacobians(phi, x), jacobians(phi, x.clone()))
        assert jacobians(phi, x).abs().sum() > 0
    assert torch.equal(pullback(torch.zeros(2, 3, 6), torch.ones(2, 3)), torch.zeros(2, 6))


def test_a_protected_set_is_mapped_once_per_feature_map_and_shared():
    calls = []
    phi0 = small_phi(3)
    phi = lambda x: calls.append(len(x)) or phi0(x)  # noqa: E731
    source = ExactProtected(torch.randn(600, 6, dtype=torch.float64))
    a, b = SemanticSpell(1.0, protected=source), SemanticSpell(1.0, protected=source)  # two units of one run
    a.set_phi(phi, key="model"), b.set_phi(phi, key="model")
    assert calls == [256, 256, 88]  # the 600 items in chunks, once: the second unit reuses them
    assert a.protected.index is b.protected.index
    assert torch.allclose(a.protected.index.items, phi0(source.items).float())
    b.set_phi(phi, key="another encoder")
    assert len(calls) == 6 and b.protected.index is not a.protected.index


def test_a_faiss_protected_set_is_searched_in_feature_space_as_the_exact_one():
    g = torch.Generator().manual_seed(5)
    items, phi = torch.randn(500, 6, generator=g), small_phi(4)
    faiss_source = FaissProtected(items, nlist=8, exact=True)
    f_items = phi(items).float()
    index = feature_index(faiss_source, phi)
    assert isinstance(index, FaissProtected) and index.exact and index.index.nlist == 8
    q = f_items[:7] + 0.05 * torch.randn(7, 3, generator=g)
    r = float(torch.cdist(q, f_items).kthvalue(20, dim=1).values.median())
    want, got = ExactProtected(f_items)(q, r, 1.3, None), FeatureProtected(faiss_source)
    got.bind(phi, "k")
    got = got(q, r, 1.3, None)
    assert want.active.sum() > 7 and torch.equal(got.active, want.active)
    assert torch.allclose(got.delta, want.delta, atol=1e-4)


def test_feature_space_protection_on_digits_moves_outputs_off_their_protected_copies():
    """The protected set is the plain outputs of the same seeds: each output would regenerate its protected copy."""
    from spell_lab.models.digits import load_digits

    model, phi = load_digits(), feature_map("digits")
    cond, seeds, r = torch.full((6,), 5), range(6), 6.0  # r: about half the plain outputs' median feature distance
    plain = generate(model, cond, seeds, steps=10)
    shielded = generate(model, cond, seeds, steps=10,
                        method=resolve({"name": "spell", "radius": r, "space": "features"}, protected=plain.x0))
    nearest = torch.cdist(phi(shielded.x0).detach(), phi(plain.x0).detach()).min(1).values
    assert (nearest > 0.5 * r).all() and (nearest < r).sum() <= 3  # each was at 0 from its copy; measured 4.1-6.5
    assert shielded.records["active_protected"].any() and not shielded.records["active_batch"].any()
