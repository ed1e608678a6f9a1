"""spell_lab: sparse repellency (SPELL) for diffusion samplers, measured step by step."""

import os

# W&B never reaches the network unless the user opts in (experiments set WANDB_MODE=online for --wandb online).
os.environ.setdefault("WANDB_MODE", "offline")
# Nor the Hugging Face hub: models load from a local directory or the cache; set HF_HUB_OFFLINE=0 to allow downloads.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

__version__ = "0.1.0"
