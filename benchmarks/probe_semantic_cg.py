"""Would conjugate gradients on J J^T replace the full Jacobian of fashion's semantic pull-back? (issue #25)

    python benchmarks/probe_semantic_cg.py

Three outputs of the shipped fashion model (10 DDIM steps, w = 2.5), their full 128 x 256 feature Jacobians, the
spectrum of J J^T, and CG from zero on (J J^T + ridge) y = df for a wanted change df towards another output's
features: how far dx = J^T y is from the exact (ridged) pull-back after k iterations. Each CG iteration would cost
one JVP and one VJP in a matrix-free version; here J is explicit, so only convergence is measured.
"""
import torch, time
torch.set_num_threads(1)
from spell_lab.models.registry import load_model, feature_map
from spell_lab.samplers import generate
from spell_lab.semantic import jacobians, pullback
m = load_model("fashion")
phi = feature_map("fashion")
cond = torch.tensor([0, 4, 6])
# x0 predictions at an intermediate step: use final outputs plus noise-free; use generate with few steps
out = generate(m, cond, range(3), steps=10, guidance=2.5)
x = out.x0
t0 = time.time(); J = jacobians(phi, x).double(); print("J", J.shape, time.time() - t0)
f = phi(x).detach().double()
for b in range(3):
    G = J[b] @ J[b].T
    ev = torch.linalg.eigvalsh(G)
    print(b, "eig max %.3g min %.3g mean %.3g cond %.3g" % (ev[-1], ev[0], ev.mean(), ev[-1] / ev[0]))
    # a wanted change along the direction to another sample's features
    df = (f[(b + 1) % 3] - f[b]) * 0.2
    ridge = 1e-6 * ev.mean()
    A = G + ridge * torch.eye(G.shape[0], dtype=G.dtype)
    y_exact = torch.linalg.solve(A, df); dx_exact = J[b].T @ y_exact
    y = torch.zeros_like(df); r = df.clone(); p = r.clone(); rs = r @ r
    for it in range(1, 129):
        Ap = A @ p; a = rs / (p @ Ap); y = y + a * p; r = r - a * Ap; rs2 = r @ r
        p = r + rs2 / rs * p; rs = rs2
        if it in (5, 10, 20, 30, 50, 80, 128):
            dx = J[b].T @ y
            print(f"  it {it}: |dx-dx*|/|dx*| {float((dx - dx_exact).norm() / dx_exact.norm()):.3g}  |J dx - df|/|df| {float((J[b] @ dx - df).norm() / df.norm()):.3g}")
