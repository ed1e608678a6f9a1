"""Rank 0's decisions reach the DDP ranks it launches through one file of the launch, not environment variables."""

import os

from spell_lab.run import handoff


def test_a_launched_rank_receives_rank_zeros_value_and_computes_nothing(monkeypatch):
    calls = []
    value = handoff.rank_zero("grid", lambda: calls.append(1) or {"median": 0.1 + 0.2, "grid": [0.0, 1.5]})
    assert calls == [1] and value["median"] == 0.1 + 0.2
    monkeypatch.setenv("LOCAL_RANK", "1")  # now this process plays a rank that rank 0 (its parent) launched
    monkeypatch.setattr(os, "getppid", os.getpid)
    again = handoff.rank_zero("grid", lambda: calls.append(2) or {"median": -1.0})
    assert calls == [1] and again == value  # bit for bit: 0.30000000000000004 survives the file
    assert handoff.received("never handed") is None
    assert handoff.rank_zero("never handed", lambda: 7) == 7  # no value from rank 0 (another node): computed


def test_rank_zero_receives_nothing_and_no_environment_variable_is_set(monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    before = dict(os.environ)
    handoff.hand("run_dir", "/tmp/x")
    assert handoff.received("run_dir") is None and dict(os.environ) == before
