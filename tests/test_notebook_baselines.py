"""notebooks/baselines.ipynb runs end to end on a real quick run of the baselines command (digits model)."""


def test_notebook_reproduces_fronts(baselines_quick_run, execute_notebook):
    images, text = execute_notebook("baselines", baselines_quick_run)
    assert len(images) == 2  # Figure 4's fronts and the Appendix I figure
    assert "bit-identical" in text and "on joint front" in text and str(baselines_quick_run) in text
