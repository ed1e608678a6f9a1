"""notebooks/sparsity.ipynb runs end to end on a real quick run of the sparsity command (gmm model)."""

from pathlib import Path

import nbformat
from nbclient import NotebookClient

from spell_lab.experiments import sparsity

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "sparsity.ipynb"


def test_notebook_reproduces_figures(tmp_path, monkeypatch):
    run_dir = tmp_path / "quick"
    assert sparsity.main(["--model", "gmm", "--radius", "3", "--quick", "--wandb", "disabled", "--no_progress",
                          "--setups", "iterative,intra,overcomp", "--out", str(run_dir)]) == 0
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
