"""notebooks/sparsity.ipynb runs end to end on a real quick run of the sparsity command (gmm model)."""


def test_notebook_reproduces_figures(gmm_quick_run, execute_notebook):
    images, text = execute_notebook("sparsity", gmm_quick_run, timeout=120)  # the session's run: every setup
    assert len(images) == 6  # the six figures, overcompensation included
    assert "active_at_0.8" in text and str(gmm_quick_run) in text
