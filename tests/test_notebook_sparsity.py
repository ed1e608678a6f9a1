"""notebooks/sparsity.ipynb runs end to end on a real quick run of the sparsity command (gmm model)."""

import pytest

from spell_lab.experiments import sparsity


@pytest.mark.e2e
def test_notebook_reproduces_figures(tmp_path, execute_notebook):
    run_dir = tmp_path / "quick"
    assert sparsity.main(["--model", "gmm", "--radius", "3", "--quick", "--wandb", "disabled", "--no_progress",
                          "--setups", "iterative,intra,overcomp", "--out", str(run_dir)]) == 0
    images, text = execute_notebook("sparsity", run_dir, timeout=120)
    assert len(images) == 6  # the six figures, overcompensation included
    assert "active_at_0.8" in text and str(run_dir) in text
