"""Nothing lost, every bad input a clear error before anything exists: Ctrl-C and SIGTERM keep finished units and
say how to resume; a table of bad inputs per entry point (exit 2, one line, no traceback, no file touched); a
protected set whose contents changed is a mismatch, not a silent resume."""

import hashlib
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from conftest import GMM_QUICK, command

from spell_lab import schema, store
from spell_lab.experiments import calibrate, radius, sparsity
from spell_lab.experiments.common import run_cli
from spell_lab.models.gmm import GaussianMixture
from spell_lab.run.lightning import INTERRUPT_AFTER

QUICK = GMM_QUICK


def tree_digest(root: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(root.rglob("*")):
        h.update(str(f.relative_to(root)).encode() + (f.read_bytes() if f.is_file() else b"/"))
    return h.hexdigest()


@pytest.fixture
def uninterrupted(gmm_quick_run):
    return store.open_run(gmm_quick_run)


def values(ds):
    return ds.drop_attrs().drop_vars(list(schema.CLOCK)).load()  # wall-clock fields differ between identical runs


def interrupted(out, signal_name: str, after: int, done_before: int):
    """The quick command into `out`, stopped by `signal_name` after `after` units of its own: exit 130, the finished
    units kept (although the writer buffers 8 at a time) and the command that resumes printed."""
    env = {INTERRUPT_AFTER: str(after), "SPELL_LAB_INTERRUPT_SIGNAL": signal_name}
    res = command("spell_lab.experiments.sparsity", *QUICK, "--out", str(out), env=env)
    saved = done_before + after
    assert res.returncode == 130, res.stderr[-2000:]
    assert "Traceback" not in res.stderr and f"{saved} of 18 work units are saved" in res.stderr, res.stderr[-2000:]
    assert f"python -m spell_lab.experiments.sparsity {' '.join(QUICK)} --out {out}" in res.stderr  # how to resume
    assert sum(int(ds["unit_complete"].sum()) for ds in store.open_run(out).values()) == saved  # resumed, then added


def test_interrupted_runs_keep_their_finished_units_and_resume_exactly(tmp_path, uninterrupted, capsys):
    """Ctrl-C (SIGINT), then SIGTERM in the run that resumes it: each stop keeps what was finished, a partial store
    is analysed as such, and the run resumed after both equals the uninterrupted one."""
    from spell_lab.analysis import sparsity as analysis

    out = tmp_path / "run"
    interrupted(out, "SIGINT", after=5, done_before=0)
    interrupted(out, "SIGTERM", after=5, done_before=5)
    assert analysis.main([str(out), "--wandb", "disabled"]) == 0
    assert "8 of 18 work units are missing" in capsys.readouterr().out
    again = command("spell_lab.experiments.sparsity", *QUICK, "--out", str(out))
    assert again.returncode == 0 and "10 already done, resumed" in again.stdout, again.stderr[-2000:]
    resumed = store.open_run(out)
    for name, ds in uninterrupted.items():
        xr.testing.assert_equal(values(resumed[name]), values(ds))


@pytest.mark.e2e
def test_a_changed_protected_set_is_a_mismatch_not_a_resume(tmp_path):
    path = tmp_path / "modes.npy"
    modes = GaussianMixture().modes().numpy()
    np.save(path, modes)
    out = tmp_path / "run"
    args = [*QUICK, "--setups", "intra", "--protected", str(path), "--out", str(out)]
    assert run_cli(sparsity.main, args) == 0
    before = tree_digest(out)
    np.save(path, modes + 1.0)  # same path, other contents
    assert run_cli(sparsity.main, args) == 2
    assert tree_digest(out) == before


def bad_files(tmp):
    np.save(tmp / "nan.npy", np.full((3, 16), np.nan, np.float32))
    np.save(tmp / "shape.npy", np.zeros((3, 5), np.float32))
    np.save(tmp / "empty.npy", np.zeros((0, 16), np.float32))
    (tmp / "garbage.npy").write_bytes(b"not a numpy file at all")
    (tmp / "a_file").write_text("I am a file")


SPARSITY_CASES = [
    (["--steps", "0"], "--steps must be >= 1"),
    (["--steps", "-3"], "--steps must be >= 1"),
    (["--classes", "99"], "conditions [99] do not exist"),
    (["--classes", "x"], "--classes expects an integer for each value (got 'x')"),
    (["--out", "{tmp}/a_file"], "is a file; give a directory"),
    (["--protected", "{tmp}/nan.npy"], "contains NaN or inf"),
    (["--protected", "{tmp}/shape.npy"], "diffusion space is"),
    (["--protected", "{tmp}/empty.npy"], "is empty"),
    (["--protected", "{tmp}/garbage.npy"], "garbage.npy is not a readable .npy file"),
    (["--protected", "{tmp}/missing.npy"], "missing.npy does not exist"),
    (["--radius", "-1"], "--radius must be > 0"),
    (["--overcomp", "0"], "--overcomp must be > 0"),
    (["--setups", "nope"], "unknown setup(s) ['nope']"),
    (["--setups", ","], "--setups names no setup"),
    (["--full"], "--quick and --full exclude each other"),
    (["--sampler", "nope"], "unknown sampler 'nope'"),
    (["--devices", "0"], "--devices must be >= 1"),
    (["--wandb", "loud"], "invalid choice: 'loud'"),
    (["--nope"], "unrecognized arguments: --nope"),
]
RADIUS_CASES = [
    (["--protected", "{tmp}/nan.npy"], "unrecognized arguments: --protected"),
    (["--radii", "-1", "2"], "--radii must be >= 0 (and finite)"),
    (["--per_condition", "3"], "--per_condition must be >= 6"),
    (["--grid_size", "1"], "--grid_size must be >= 2"),
    (["--protocol", "nope"], "invalid choice: 'nope'"),
    (["--steps", "0"], "--steps must be >= 1"),
    (["--classes", "99"], "conditions [99] do not exist"),
]

CALIBRATE_CASES = [
    (["--protected", "{tmp}/nan.npy"], "unrecognized arguments: --protected"),
    (["--grid_size", "1"], "--grid_size must be >= 2"),
    (["--per_condition", "1"], "needs >= 2 samples per condition"),
    (["--guidance_grid", "1", "2"], "--guidance_grid is for --select"),
    (["--steps", "0"], "--steps must be >= 1"),
    (["--select", "--guidance", "2"], "--select tunes the guidance itself"),
]


@pytest.mark.parametrize("main, base, args, message", [
    *[(sparsity.main, QUICK, a, m) for a, m in SPARSITY_CASES],
    *[(radius.main, ["--model", "gmm", "--quick", "--wandb", "disabled", "--no_progress"], a, m) for a, m in RADIUS_CASES],
    *[(calibrate.main, ["--model", "gmm", "--quick", "--no_progress"], a, m) for a, m in CALIBRATE_CASES],
])
def test_bad_input_is_one_line_exit_2_and_touches_nothing(tmp_path, capsys, monkeypatch, main, base, args, message):
    bad_files(tmp_path)
    monkeypatch.chdir(tmp_path)  # a default run directory would appear here
    before = tree_digest(tmp_path)
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    assert run_cli(main, [*base, *args, "--out" if "--out" not in args else "--seed",
                          str(tmp_path / "run") if "--out" not in args else "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err and "Traceback" not in err, err
    assert tree_digest(tmp_path) == before
