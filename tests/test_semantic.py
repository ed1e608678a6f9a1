"""Semantic SPELL (docs/design.md section 2, "Semantic shields"): the pull-back is the least-squares solution, the fast
path equals the literal float64 reference, identity features are the paper's SPELL, and on digits it leaves fewer
output pairs closer than r in feature space than the same seeds without it."""

import pytest
import torch

from spell_lab.methods import resolve
from spell_lab.models.registry import feature_map
from spell_lab.samplers import generate
from spell_lab.semantic import SemanticSpell, jacobians, pullback, pullback_reference, semantic_reference


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
    with pytest.raises(ValueError, match="protected set"):
        resolve({"name": "spell", "space": "features"}, protected=torch.zeros(1, 2))
    with pytest.raises(ValueError, match="no registered feature map"):
        feature_map("sd3")


def test_jacobians_in_inference_mode_and_a_flat_map_moves_nothing():
    phi, x = small_phi(), torch.randn(2, 6, dtype=torch.float64)
    with torch.inference_mode():  # how Lightning's predict loop calls the sampler
        assert torch.allclose(jacobians(phi, x), jacobians(phi, x.clone()))
        assert jacobians(phi, x).abs().sum() > 0
    assert torch.equal(pullback(torch.zeros(2, 3, 6), torch.ones(2, 3)), torch.zeros(2, 6))
