"""Rank 0's decisions reach the DDP ranks it launches through files of the launch, in the folder the run directory
goes into (the run directory is itself one of the decisions), not environment variables."""

import os

import pytest
from conftest import command

from spell_lab.run import handoff


def test_a_launched_rank_receives_rank_zeros_value_and_computes_nothing(monkeypatch, tmp_path):
    calls = []
    with handoff.launch(tmp_path):
        value = handoff.rank_zero("grid", lambda: calls.append(1) or {"median": 0.1 + 0.2, "grid": [0.0, 1.5]})
        assert calls == [1] and value["median"] == 0.1 + 0.2
        assert (tmp_path / f".handoff-{os.getpid()}" / "grid.json").exists()  # beside the run directory
        with monkeypatch.context() as m:
            m.setenv("LOCAL_RANK", "1")  # now this process plays a rank that rank 0 (its parent) launched
            m.setattr(os, "getppid", os.getpid)
            again = handoff.rank_zero("grid", lambda: calls.append(2) or {"median": -1.0})
            assert calls == [1] and again == value  # bit for bit: 0.30000000000000004 survives the file
            assert handoff.received("never handed") is None
            assert handoff.rank_zero("never handed", lambda: 7) == 7  # no value from rank 0 (another node): computed
    assert list(tmp_path.iterdir()) == []  # rank 0 removes its files when the launch ends


def test_one_launch_per_command_and_no_environment_variable(monkeypatch, tmp_path):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    before = dict(os.environ)
    with handoff.launch(tmp_path / "runs"):
        with handoff.launch(tmp_path / "elsewhere"):  # run_generation inside an experiment's command: joins it
            handoff.hand("run_dir", "/tmp/x")
        assert (tmp_path / "runs" / f".handoff-{os.getpid()}" / "run_dir.json").exists()
        assert not (tmp_path / "elsewhere").exists()
        assert handoff.received("run_dir") is None and dict(os.environ) == before  # rank 0 receives nothing
    assert handoff.hand("outside", 3) == 3 and not any(tmp_path.rglob("*.json"))  # outside a launch: nothing handed


@pytest.mark.e2e
def test_the_launched_rank_takes_rank_zeros_calibration(tmp_path):
    """radius on 2 processes: rank 0 calibrates once, the rank it launches reads the grid (and the run directory,
    the process count) from the launch's files beside the run, which are gone afterwards."""
    res = command("spell_lab.experiments.radius", "--model", "gmm", "--quick", "--devices", "2", "--accelerator", "cpu",
                  "--wandb", "disabled", "--no_progress", "--out", tmp_path / "run")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "(2 processes)" in res.stdout and res.stdout.count("calibration: median") == 1, res.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
