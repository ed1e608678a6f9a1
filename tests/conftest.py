import os

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture
def gmm():
    from spell_lab.models.gmm import GaussianMixture

    return GaussianMixture(num_classes=3, components=3, shape=(2, 4, 2), spread=4.0, std=0.2, seed=1)


@pytest.fixture
def execute_notebook(monkeypatch):
    """Run notebooks/NAME.ipynb on a run directory (as a user would: SPELL_RUN_DIR) and return (png outputs, text
    outputs); the notebook must be committed without outputs."""
    from pathlib import Path

    import nbformat
    from nbclient import NotebookClient

    root = Path(__file__).resolve().parents[1]

    def run(name: str, run_dir, timeout: int = 180):
        path = root / "notebooks" / f"{name}.ipynb"
        monkeypatch.setenv("SPELL_RUN_DIR", str(run_dir))  # the kernel inherits the environment
        monkeypatch.setenv("PYTHONPATH", str(root))
        nb = nbformat.read(path, as_version=4)
        assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), "commit the notebook without outputs"
        # kernel "python3" is this interpreter: jupyter_client swaps the kernelspec's "python" for sys.executable
        NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
        outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
        images = [o for o in outputs if "image/png" in o.get("data", {})]
        return images, "".join(o.get("text", "") for o in outputs)

    return run
