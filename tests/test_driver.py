"""The shared analysis driver: a fake experiment, one `Analysis` entry (its statistics, figures, files and W&B
runs), renders through the same loading, files, W&B and re-render command as the five experiments."""

import pandas as pd
from matplotlib.figure import Figure
from conftest import synthetic_run, write_store

from spell_lab.analysis import driver
from spell_lab.analysis.wandb_log import RunLog


def count_statistics(datasets, run_dir, scale: float = 1.0):
    table = pd.DataFrame({"samples": [ds.sizes["sample"] * scale for ds in datasets.values()]}, index=list(datasets))
    return {"table": table}


def one_figure(datasets, result):
    fig = Figure()
    fig.add_subplot().bar(result["table"].index, result["table"]["samples"])
    return {"counts": fig}


FAKE = driver.Analysis(
    experiment="fake", select=lambda ds: [n for n in ds if n != "baseline"], statistics=count_statistics,
    figures=one_figure, files=lambda r: {"counts.csv": r["table"].to_csv()},
    wandb_runs=lambda datasets, r, images: [RunLog(name="fake", config={}, summary={"groups": len(r["table"])},
                                                   images=images)],
    format_table=lambda t: t.to_string(), summary_lines=lambda r: [f"groups: {len(r['table'])}"])


def test_a_fake_experiment_renders_through_the_shared_driver(tmp_path, capsys):
    run_dir = write_store(synthetic_run(("iterative", "intra"), steps=4, conditions=2, per_round=2), tmp_path / "run")
    assert driver.main(FAKE, [str(run_dir), "--wandb", "offline", "--out", str(tmp_path / "figs")]) == 0
    out = capsys.readouterr().out
    assert "groups: 2" in out and "counts" in out
    assert (tmp_path / "figs" / "counts.png").exists() and (tmp_path / "figs" / "counts.pdf").exists()
    table = pd.read_csv(tmp_path / "figs" / "counts.csv", index_col=0)
    assert list(table.index) == ["intra", "iterative"] and (table["samples"] > 0).all()
    assert len(list((run_dir / "wandb").glob("offline-run-*"))) == 1
    res = driver.analyse_run(FAKE, run_dir, wandb_mode="disabled", out_dir=tmp_path / "again", scale=2.0)
    assert (res["table"]["samples"] == 2 * table["samples"]).all() and res["wandb_dirs"] == []


def test_the_fake_experiments_errors_are_one_line(tmp_path, capsys):
    assert driver.main(FAKE, [str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not exist" in err and "python -m spell_lab.experiments.fake" in err
