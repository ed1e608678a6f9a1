"""notebooks/sparsity.ipynb runs end to end on a small synthetic store (its real-run twin comes with the quick run)."""

from pathlib import Path

import nbformat
from nbclient import NotebookClient

from test_analysis_sparsity import synthetic_run, write_store

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "sparsity.ipynb"


def test_notebook_reproduces_figures(tmp_path, monkeypatch):
    run_dir = write_store(synthetic_run(("iterative", "intra", "overcomp"), steps=10, conditions=1, per_round=4),
                          tmp_path / "quick")
    monkeypatch.setenv("SPELL_RUN_DIR", str(run_dir))  # the kernel inherits the environment
    monkeypatch.setenv("PYTHONPATH", str(NOTEBOOK.parents[1]))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), "commit the notebook without outputs"
    # kernel "python3" is this interpreter: jupyter_client swaps the kernelspec's "python" for sys.executable
    NotebookClient(nb, timeout=120, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {})]
    assert len(images) == 6  # the six figures, overcompensation included
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "active_at_0.8" in text and str(run_dir) in text
