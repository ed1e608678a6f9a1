"""Side check for README.md: how long SPELL stays active on digits, by radius, overcompensation and schedule.

    python analysis/digits/dynamics_check.py

Per class: 8 samples at the default guidance (seeds 0..79), then 8 more (seeds 100..179) repelled from them
(memory only, the `iterative` setup of Appendix F). Prints the share of the 80 repelled trajectories active at
some evaluations (of 50) and at the last one. The network only sees (x/alpha, sigma/alpha), so other VP schedules
run with the same weights.
"""

import torch

from spell_lab.calibration import median_within
from spell_lab.models.digits import load_digits
from spell_lab.repellency import Memory, Spell
from spell_lab.samplers import generate
from spell_lab.schedules import VPLinear

torch.set_num_threads(1)
model = load_digits()
cond = torch.arange(10).repeat_interleave(8)
for schedule in (VPLinear(0.1, 20.0), VPLinear(0.1, 12.0)):
    model.schedule = schedule
    first = generate(model, cond, list(range(80))).x0
    print(f"{schedule}: within-class median of the first 8 per class {median_within(first, cond):.1f}")
    radii = (25.0, 18.75, 14.0) if schedule == VPLinear() else (25.0,)
    for radius in radii:
        for overcomp in (1.0, 1.6):
            memory = Memory()
            memory.add(first, cond)
            spell = Spell.build(radius, overcomp, memory=memory)
            out = generate(model, cond, list(range(100, 180)), spell=spell)
            active = (out.records["active_shields"] > 0).float().mean(0)
            shown = " ".join(f"{i}:{active[i]:.2f}" for i in (0, 6, 12, 25, 37, 45))
            print(f"  radius {radius:5.2f} overcomp {overcomp}: active at evaluation {shown}  last: {active[-1]:.2f}")
