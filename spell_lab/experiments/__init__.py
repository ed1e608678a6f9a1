"""Runnable entry points: python -m spell_lab.experiments.NAME (see docs/design.md section 6)."""
