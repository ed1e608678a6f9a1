"""Shared test setup: the `e2e` marker's guard, helpers several files use, and session-scoped quick runs.

`e2e` marks a test that launches a full run (Lightning's predict loop, or an experiment's command in a subprocess);
`pytest -m "not e2e"` is the fast suite. A test that uses a quick-run fixture below is marked automatically; any
other test that launches a run without the marker fails, naming the marker, so the fast suite stays fast honestly.
The quick runs are made once per session; tests read them and never write into them (copy first)."""

import os

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)  # the tests' tensors are small: one thread beat two by 2-20x on a loaded 2-core CPU, as in the runs

ROOT = Path(__file__).resolve().parents[1]
GMM_QUICK = ["--model", "gmm", "--radius", "3", "--quick", "--wandb", "disabled", "--no_progress"]
# fixtures that launch a run (the session one below, and the module-scoped runs of single test files): their users
# are end-to-end tests
E2E_FIXTURES = {"gmm_quick_run", "quick_run", "quick_select", "reference_run", "digits_run"}


# --- helpers ----------------------------------------------------------------------------------------------------


def command(module, *args, env=None, timeout=900):
    """`python -m module args` in a subprocess of this interpreter, importing this checkout, W&B disabled."""
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=ROOT)


def same_outputs(a, b, skip=()):
    """Two generate() outputs bit for bit: x0, the images where there are any, and every record but `skip`."""
    images = getattr(a, "images", None)
    return (torch.equal(a.x0, b.x0) and (images is None or np.array_equal(images, b.images))
            and all(torch.equal(a.records[k], b.records[k]) for k in a.records if k not in skip))


# --- the e2e marker -----------------------------------------------------------------------------------------------


def pytest_collection_modifyitems(items):
    for item in items:
        if E2E_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(autouse=True)
def _full_runs_only_in_e2e(request, monkeypatch):
    """Outside `e2e` tests, launching a run (the predict loop, an experiment's command) fails and names the marker."""
    if request.node.get_closest_marker("e2e"):
        return
    import lightning

    def refuse(*args, **kwargs):
        raise AssertionError(f"{request.node.nodeid} launches a full run: mark it @pytest.mark.e2e")

    monkeypatch.setattr(lightning.Trainer, "predict", refuse)
    run = subprocess.run

    def guarded(cmd, *args, **kwargs):
        words = [str(c) for c in cmd] if isinstance(cmd, (list, tuple)) else str(cmd).split()
        if any(a == "-m" and b.startswith("spell_lab.experiments.") for a, b in zip(words, words[1:])):
            refuse()
        return run(cmd, *args, **kwargs)

    monkeypatch.setattr(subprocess, "run", guarded)


# --- fixtures -----------------------------------------------------------------------------------------------------


@pytest.fixture
def gmm():
    from spell_lab.models.gmm import GaussianMixture

    return GaussianMixture(num_classes=3, components=3, shape=(2, 4, 2), spread=4.0, std=0.2, seed=1)


@pytest.fixture(scope="session")
def gmm_quick_run(tmp_path_factory):
    """`sparsity --model gmm --radius 3 --quick` (every setup), once per session: read only."""
    from spell_lab.experiments import sparsity

    out = tmp_path_factory.mktemp("gmm_quick") / "run"
    assert sparsity.main([*GMM_QUICK, "--out", str(out)]) == 0
    return out


@pytest.fixture
def execute_notebook(monkeypatch):
    """Run notebooks/NAME.ipynb on a run directory (as a user would: SPELL_RUN_DIR) and return (png outputs, text
    outputs); the notebook must be committed without outputs."""
    import nbformat
    from nbclient import NotebookClient

    def run(name: str, run_dir, timeout: int = 180):
        path = ROOT / "notebooks" / f"{name}.ipynb"
        monkeypatch.setenv("SPELL_RUN_DIR", str(run_dir))  # the kernel inherits the environment
        monkeypatch.setenv("PYTHONPATH", str(ROOT))
        nb = nbformat.read(path, as_version=4)
        assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), "commit the notebook without outputs"
        # kernel "python3" is this interpreter: jupyter_client swaps the kernelspec's "python" for sys.executable
        NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
        outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
        images = [o for o in outputs if "image/png" in o.get("data", {})]
        return images, "".join(o.get("text", "") for o in outputs)

    return run
