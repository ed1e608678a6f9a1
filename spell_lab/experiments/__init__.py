"""Runnable entry points: python -m spell_lab.experiments.NAME (see design.md section 6)."""
