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
    assert (out / "figures" / "gallery.png").stat().st_size > 5_000  # one row per variant group, same seeds
    md = (out / "figures" / "tables.md").read_text()  # the page's tables: one row per variant and per point
    rows = [line for line in md.splitlines() if line.startswith("| ") and not line.startswith("| ---")]
    assert len(rows) == 2 + len(selected) + len(points)  # a header each
    data = analysis.load_run(out)
    assert json.loads(data["semantic-0"].attrs["method"])["space"] == "features"
    assert "shield_residual" in data["semantic-0"] and "shield_residual" not in data["latent-1"]
    assert "radius_t" in data["scheduled-0"] and "radius_t" not in data["latent-1"]  # recorded where scheduled only
    assert not np.array_equal(data["semantic-0"]["x0"].values, data["latent-0"]["x0"].values)  # it acted


def test_tables_markdown_writes_the_page_columns():
    from spell_lab.analysis.semantic import tables_markdown

    nan = float("nan")
    row = dict(precision=0.9, recall=0.8, density=1.0, coverage=0.7, vendi=1.2, fd=50.0, f=0.7875,
               near_duplicates=0.051, relative_magnitude=nan, median_last_active_t=nan, residual_mean=nan,
               residual_inside_share=nan, ms_per_evaluation=2.0, cost_vs_plain=1.0)
    active = row | {"active_at_t0.8": 0.81, "active_at_t0.6": 0.62, "relative_magnitude": 0.128,
                    "median_last_active_t": 0.02, "residual_mean": 3.23, "residual_inside_share": 0.91,
                    "ms_per_evaluation": 300.0, "cost_vs_plain": 150.0}
    plain = row | {"active_at_t0.8": 0.0, "active_at_t0.6": 0.0}
    points = pd.DataFrame([plain | dict(sweep="latent", parameter="radius", value=0.0),
                           active | dict(sweep="semantic", parameter="radius", value=16.91),
                           plain | dict(sweep="cfg", parameter="weight", value=2.5)],
                          index=pd.Index(["latent-0", "semantic-0", "cfg-0"], name="group"))
    selected = pd.DataFrame([plain | dict(radius=0.0), active | dict(radius=16.91)],
                            index=pd.Index(["latent", "semantic"], name="variant"))
    lines = tables_markdown({"table": selected, "points": points}).splitlines()
    rows = [line for line in lines if line.startswith("| ") and "---" not in line]
    assert rows[1].startswith("| latent: 0 (plain) | 0.900 | 0.800 | 1.00 | 0.700 | 1.20 | 50.0 | 0.787 | 5.1 % | – |")
    assert rows[2].startswith("| semantic: 16.91 (features) |") and "| 81 % / 62 % | 0.128 | 0.02 | 3.23 (91 %) | 300.0 (150.0x) |" in rows[2]
    assert rows[4].startswith("| latent-0 (radius 0) |") and rows[6].startswith("| cfg-0 (weight 2.5) |")
    assert rows[6].split(" | ")[9] == "–"  # a baseline has no shields to be active


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
