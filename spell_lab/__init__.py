"""spell_lab: sparse repellency (SPELL) for diffusion samplers, measured step by step."""

import os

# W&B never reaches the network unless the user opts in (experiments set WANDB_MODE=online for --wandb online).
os.environ.setdefault("WANDB_MODE", "offline")

__version__ = "0.1.0"
