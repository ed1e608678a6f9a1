"""Analyses over run stores (docs/design.md section 3): pure functions, figures, W&B logging. Modules import lazily:
`spell_lab.analysis.sparsity` (paper Section 4.4, Appendix F), `plots` (shared style), `wandb_log` (W&B edge)."""
