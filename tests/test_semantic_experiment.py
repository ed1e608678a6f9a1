"""`python -m spell_lab.experiments.semantic` (issue #25): the quick run end to end on digits, what it records per
variant, and its refusals."""

import json

import numpy as np
import pandas as pd
import pytest

from spell_lab.experiments import semantic


@pytest.mark.e2e
def test_quick_run_end_to_end(tmp_path):
    from spell_lab.analysis import semantic as analysis

    out = tmp_path / "run"
    assert semantic.main(["--model", "digits", "--quick", "--steps", "4", "--classes", "3", "--devices", "1", "--baselines", "--wandb", "disabled",
                          "--no_progress", "--out", str(out)]) == 0
    points = pd.read_csv(out / "figures" / "points.csv", index_col="group")
    assert list(points.index) == ["latent-0", "latent-1", "semantic-0", "scheduled-0"]
    selected = pd.read_csv(out / "figures" / "selected.csv", index_col="variant")
    assert list(selected.index) == ["latent", "semantic", "scheduled"] and selected["f"].notna().all()
    assert (out / "figures" / "fronts.png").stat().st_size > 10_000
    data = analysis.load_run(out)
    assert json.loads(data["semantic-0"].attrs["method"])["space"] == "features"
    assert "shield_residual" in data["semantic-0"] and "shield_residual" not in data["latent-1"]
    assert "radius_t" in data["scheduled-0"] and "radius_t" not in data["latent-1"]  # recorded where scheduled only
    assert not np.array_equal(data["semantic-0"]["x0"].values, data["latent-0"]["x0"].values)  # it acted


@pytest.mark.parametrize("argv, message", [
    (["--baselines", "spell"], "not a baseline"),
    (["--model", "some/hub-id"], "held-out real data"),
])
def test_bad_input_exits_2_and_creates_nothing(tmp_path, capsys, argv, message):
    from spell_lab.experiments.common import run_cli

    out = tmp_path / "run"
    assert run_cli(semantic.main, [*argv, "--quick", "--wandb", "disabled", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists()
