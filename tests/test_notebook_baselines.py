"""notebooks/baselines.ipynb runs end to end on a real quick run of the baselines command (digits model)."""

from pathlib import Path

import nbformat
from nbclient import NotebookClient

from spell_lab.experiments import baselines

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "baselines.ipynb"


def test_notebook_reproduces_fronts(tmp_path, monkeypatch):
    run_dir = tmp_path / "quick"
    assert baselines.main(["--quick", "--steps", "6", "--sweeps", "cfg", "spell", "spell_cfg", "--wandb", "disabled",
                           "--no_progress", "--out", str(run_dir)]) == 0
    monkeypatch.setenv("SPELL_RUN_DIR", str(run_dir))  # the kernel inherits the environment
    monkeypatch.setenv("PYTHONPATH", str(NOTEBOOK.parents[1]))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), "commit the notebook without outputs"
    NotebookClient(nb, timeout=180, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {})]
    assert len(images) == 2  # Figure 4's fronts and the Appendix I figure
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "bit-identical" in text and "on joint front" in text and str(run_dir) in text
