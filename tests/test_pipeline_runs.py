"""`--model <local diffusers directory>` through the real experiment command, with tiny random-weight pipelines."""

import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from spell_lab import store
from spell_lab.experiments import sparsity

from test_diffusers import tiny_ddpm, tiny_dit

ARGS = ["--quick", "--steps", "4", "--setups", "iterative,intra", "--wandb", "disabled", "--no_progress"]


@pytest.mark.e2e
@pytest.mark.parametrize("make, shape", [(tiny_ddpm, (3, 8, 8)), (tiny_dit, (4, 8, 8))])
def test_pipeline_directory_writes_the_same_store(tmp_path, make, shape):
    make().save_pretrained(tmp_path / "pipe")
    out = tmp_path / "run"
    assert sparsity.main(["--model", str(tmp_path / "pipe"), "--radius", "40", *ARGS, "--out", str(out)]) == 0
    runs = store.open_run(out)
    assert set(runs) == {"iterative", "intra", "baseline"}
    ds = runs["intra"].load()
    assert ds["x0"].shape[1:] == shape and ds["image"].dtype == np.uint8 and ds["image"].shape[-1] == 3
    assert (ds["active_batch"] > 0).any() and bool(ds["unit_complete"].all())
    assert np.isfinite(ds["relative_magnitude"]).all() and len(ds["step"]) == 4
    expected = ds["alpha"] / ds["sigma"] ** 2 * ds["correction_norm"] / ds["score_norm"]
    np.testing.assert_allclose(ds["relative_magnitude"], expected.transpose("sample", "step"), rtol=1e-4, atol=1e-7)
    base = runs["baseline"].load()
    assert not base["intervened"].any() and (base["seed"] == runs["iterative"]["seed"]).all()
    assert (tmp_path / "run" / "figures" / "gallery.png").exists()


def test_grid_matches_what_the_scheduler_steps(tmp_path):
    from spell_lab.diffusers.model import PipelineModel
    from spell_lab.repellency import Spell

    model = PipelineModel(tiny_dit(), "tiny-dit")
    t, alpha, sigma = model.evaluation_grid(None, 5)
    gen = model.generate(torch.tensor([1, 1]), [0, 1], steps=5, guidance=2.0, spell=Spell(1.0))
    assert np.allclose(gen.records["t"], t) and np.allclose(gen.records["alpha"], alpha)
    assert np.allclose(gen.records["sigma"], sigma)


@pytest.mark.e2e  # an experiment command in a fresh process
def test_missing_model_stops_at_once_with_no_store(tmp_path):
    out = tmp_path / "run"
    start = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "spell_lab.experiments.sparsity", "--model", "nobody/no-such-model",
                          "--out", str(out), *ARGS], capture_output=True, text=True, timeout=300,
                         env={"HF_HOME": str(tmp_path / "hf"), "PATH": "/usr/bin:/bin", "WANDB_MODE": "disabled"})
    assert res.returncode == 2 and "nobody/no-such-model" in res.stderr and "Traceback" not in res.stderr
    assert not out.exists() and time.perf_counter() - start < 120


def test_prompts_file(tmp_path):
    from spell_lab.diffusers.model import read_prompts

    (tmp_path / "p.txt").write_text("a red apple\n\n a blue car \n")
    assert read_prompts(tmp_path / "p.txt") == ["a red apple", "a blue car"]
    with pytest.raises(FileNotFoundError, match="one prompt a line"):
        read_prompts(tmp_path / "none.txt")
