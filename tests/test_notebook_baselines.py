"""notebooks/baselines.ipynb runs end to end on a real quick run of the baselines command (digits model)."""

import pytest

from spell_lab.experiments import baselines


@pytest.mark.e2e
def test_notebook_reproduces_fronts(tmp_path, execute_notebook):
    run_dir = tmp_path / "quick"
    assert baselines.main(["--quick", "--steps", "6", "--sweeps", "cfg", "spell", "spell_cfg", "--wandb", "disabled",
                           "--no_progress", "--out", str(run_dir)]) == 0
    images, text = execute_notebook("baselines", run_dir)
    assert len(images) == 2  # Figure 4's fronts and the Appendix I figure
    assert "bit-identical" in text and "on joint front" in text and str(run_dir) in text
