"""The shared analysis driver: a fake experiment, one `Analysis` entry (its statistics, figures, files and W&B
runs), renders through the same loading, files, W&B and re-render command as the five experiments."""

import ast
import dataclasses
import re
from pathlib import Path

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
    built = []
    entry = dataclasses.replace(FAKE, wandb_runs=lambda *a: built.append(1) or FAKE.wandb_runs(*a))
    res = driver.analyse_run(entry, run_dir, wandb_mode="disabled", out_dir=tmp_path / "again", scale=2.0)
    assert (res["table"]["samples"] == 2 * table["samples"]).all() and res["wandb_dirs"] == []
    assert built == []  # W&B disabled: its runs (sparsity's draw figures of their own) are not even built


def test_the_fake_experiments_errors_are_one_line(tmp_path, capsys):
    assert driver.main(FAKE, [str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not exist" in err and "python -m spell_lab.experiments.fake" in err


ANALYSIS_DIR = Path(driver.__file__).parent
EXPERIMENTS = ("sparsity", "radius", "protection", "baselines", "diversity")


def test_measured_is_applied_once_by_the_driver():
    """`load.measured` is called in load.py alone (`measured_groups`, which the driver's load_run applies)."""
    callers = {p.name for p in ANALYSIS_DIR.glob("*.py") if re.search(r"\bmeasured\(", p.read_text())}
    assert callers == {"load.py"}


def test_statistics_and_figures_are_apart():
    """Each experiment's statistics module imports no plotting (nor its figures module, which the entry names
    lazily); its figures module exists."""
    for name in EXPERIMENTS:
        tree = ast.parse((ANALYSIS_DIR / f"{name}.py").read_text())
        imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        imported |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
        assert not {m.split(".")[0] for m in imported} & {"matplotlib", "seaborn", "plots", f"{name}_figures"}, name
        assert (ANALYSIS_DIR / f"{name}_figures.py").exists(), name


def test_no_group_order_or_reference_group_is_declared_in_the_analysis():
    """The run writes them into the store's root (`group_order`, `reference_group`); the analysis reads them."""
    for p in ANALYSIS_DIR.glob("*.py"):
        text = p.read_text()
        assert not re.search(r"^[A-Z_]*ORDER\s*=", text, re.M), p.name
        assert not re.search(r"[\"']baseline[\"']", text), p.name
