"""The experiment logs to W&B offline by default, inside the run directory, without touching the network."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import GMM_QUICK

ARGS = ["--model", "gmm", "--radius", "3", "--quick", "--setups", "overcomp", "--no_progress"]


def no_network_prefix() -> list[str]:
    """Run inside a fresh network namespace (loopback only) where the platform allows it."""
    if shutil.which("unshare") and shutil.which("ip"):
        probe = subprocess.run(["unshare", "-n", "true"], capture_output=True)
        if probe.returncode == 0:
            return ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$0" "$@"']
    return []


@pytest.mark.e2e
def test_offline_run_lands_in_the_run_directory(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB")}  # the package's own default decides
    out = tmp_path / "run"
    cmd = [*no_network_prefix(), sys.executable, "-m", "spell_lab.experiments.sparsity", *ARGS, "--out", str(out)]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    runs = sorted((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 2  # one W&B run per setup: overcomp, and the baseline reference
    for run in runs:
        assert list(run.glob("*.wandb")), f"no offline log in {run}"
    media = list((out / "wandb").rglob("*.png"))
    assert media, "the figures are logged as images"
    assert "W&B" in res.stdout and str(out) in res.stdout  # the summary says where everything landed
    ids = {r.name.rsplit("-", 1)[1] for r in runs}
    log = next(runs[0].glob("*.wandb")).read_bytes()  # the offline log holds the config
    assert all(k in log for k in (b"intra_batch", b"method_name", b"overcomp", b"sparsity"))  # unpacked; tag
    own = [r for r in runs if list(r.rglob("setup/active_share_*.png"))]
    assert len(own) == 1  # each setup's run has its own figures; the baseline reference has none
    tables = list((out / "wandb").rglob("samples_*.table.json"))
    assert len(tables) == 2 and '"intervened"' in tables[0].read_text()  # one per-sample table per W&B run
    again = subprocess.run([*no_network_prefix(), sys.executable, "-m", "spell_lab.analysis.sparsity", str(out)],
                           capture_output=True, text=True, env=env, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    rerun = sorted((out / "wandb").glob("offline-run-*"))
    assert len(rerun) == 2 and {r.name.rsplit("-", 1)[1] for r in rerun} == ids  # the same runs, updated


def test_disabled_writes_no_wandb(gmm_quick_run):
    """The session's quick run was made with --wandb disabled: its figures, and no W&B directory."""
    assert "--wandb disabled" in " ".join(GMM_QUICK)
    assert not (gmm_quick_run / "wandb").exists()
    assert (gmm_quick_run / "figures" / "active_share.png").exists()
