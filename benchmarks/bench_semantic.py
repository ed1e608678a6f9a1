"""Semantic SPELL's cost per denoiser evaluation, side by side with the model's denoiser call (issue #25).

    python benchmarks/bench_semantic.py [--models digits fashion] [--threads 1]

For each built-in model, batch 8 of one condition at a mid-sampling noise level (t = 0.5), every sample inside a
feature shield (radius 10x the batch's median feature distance, so every sample pays for its Jacobian): the time of
one guided denoiser evaluation, of latent SPELL (intra-batch) and of semantic SPELL (intra-batch: features, Eq. 8,
the Jacobians of the active samples, the pull-back, the residual's features), best of `repeats`, and the ratios.
"""

from __future__ import annotations

import argparse

import torch
from bench_correction import best_of  # the script's folder is on the path




def measure(name: str, repeats: int) -> dict:
    from spell_lab.models.base import guided_x0
    from spell_lab.models.registry import feature_map, load_model
    from spell_lab.repellency import Spell
    from spell_lab.semantic import SemanticSpell

    model = load_model(name)
    cond = torch.zeros(8, dtype=torch.long)
    t = 0.5
    alpha, sigma = (float(v) for v in model.schedule.alpha_sigma(torch.tensor(t)))
    x_t = torch.randn(8, *model.sample_shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        x0 = guided_x0(model, x_t, torch.full((), t), cond, model.default_guidance)
        phi = feature_map(name)
        f = phi(x0)
    r_feat = 10 * float(torch.pdist(f).median())
    r_lat = 10 * float(torch.pdist(x0.reshape(8, -1)).median())
    latent = Spell.build(r_lat, intra_batch=True)
    semantic = SemanticSpell(r_feat, intra_batch=True, phi=phi)
    context = dict(x_t=x_t, t=t, alpha=alpha, sigma=sigma)
    with torch.no_grad():
        t_model = best_of(lambda: guided_x0(model, x_t, torch.full((), t), cond, model.default_guidance), repeats)
        t_latent = best_of(lambda: latent(x0, cond, **context), repeats)
        t_semantic = best_of(lambda: semantic(x0, cond, **context), repeats)
        active = int((semantic(x0, cond, **context).active["batch"] > 0).sum())
    return dict(model=name, dims=x0[0].numel(), features=f.shape[1], active=active, denoiser_ms=1e3 * t_model,
                latent_ms=1e3 * t_latent, semantic_ms=1e3 * t_semantic)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["digits", "fashion"])
    p.add_argument("--threads", type=int, default=1, help="torch threads (the run layer uses 1 per CPU process)")
    p.add_argument("--repeats", type=int, default=5)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    for name in a.models:
        m = measure(name, a.repeats)
        print(f"[{name}, {a.threads} thread(s)] batch 8, D={m['dims']}, features {m['features']}, {m['active']}/8 active: "
              f"denoiser (guided) {m['denoiser_ms']:.1f} ms; latent SPELL {m['latent_ms']:.2f} ms "
              f"({m['latent_ms'] / m['denoiser_ms']:.3f}x); semantic SPELL {m['semantic_ms']:.1f} ms "
              f"({m['semantic_ms'] / m['denoiser_ms']:.2f}x the denoiser)", flush=True)


if __name__ == "__main__":
    main()
