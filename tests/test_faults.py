"""Damage found and repaired, two runs at once, refusals before side effects (issue 23).

- A store's finished units carry checksums: a deleted or truncated chunk is named (group, unit, array) by the viewer,
  the re-render and an export, and the same command regenerates it into a store equal to an uninterrupted run.
- One writer per run directory: a second command waits for the first (one line), then resumes its store.
- A table of bad inputs over every command (exit code, one line, no traceback, nothing created or changed), the
  environment's faults as one line, and the public API's own checks.
"""

import errno
import hashlib
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
import zarr
from conftest import GMM_QUICK, ROOT

from spell_lab import cli, schema, store
from spell_lab.experiments import baselines, calibrate, diversity, protection, radius, sparsity
from spell_lab.experiments.common import run_cli
from spell_lab.methods import resolve, spell_method
from spell_lab.plan import Setting
from spell_lab.run.lock import LOCK_NAME, holding
from spell_lab.store import integrity, view


def tree_digest(root: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(root.rglob("*")):
        h.update(str(f.relative_to(root)).encode() + (f.read_bytes() if f.is_file() else b"/"))
    return h.hexdigest()


def values(ds):
    return ds.drop_attrs().drop_vars(list(schema.CLOCK)).load()  # wall-clock fields differ between identical runs


def same_store(a: Path, b: Path, *, groups_of_a=False) -> None:
    """Equal values (clocks aside) in every group; groups_of_a: in a's groups (a ran a subset of b's setups)."""
    one, two = store.open_run(a), store.open_run(b)
    assert set(one) == set(two) or (groups_of_a and set(one) <= set(two))
    for name in one:
        xr.testing.assert_equal(values(one[name]), values(two[name]))


def chunk_files(run: Path, group: str, array: str) -> list[Path]:
    return sorted(p for p in (run / "store.zarr" / group / array / "c").rglob("*") if p.is_file())


# --- integrity, on a small store written by hand (no run) ---------------------------------------------------------


@pytest.fixture
def small_store(tmp_path) -> Path:
    """A two-unit store (group `g`, units of 3 samples), both units written and complete."""
    run = tmp_path / "run"
    run.mkdir()
    setting = Setting("g", spell_method(1.0), rounds=(3,), conditions=(0, 1))
    store.create_store(run / "store.zarr", experiment="sparsity", settings=[setting], times=[1.0, 0.0],
                       alphas=[0.0, 1.0], sigmas=[1.0, 0.0], sample_shape=(4,), image_shape=None,
                       content={"experiment": "sparsity", "model": "gmm", "sampler": "ddim", "steps": 1,
                                "guidance": 1.0}, config={})
    rng = np.random.default_rng(0)
    units = [(u, 3 * u, {"x0": rng.standard_normal((3, 4)).astype(np.float32), "seed": np.arange(3) + 3 * u,
                         "condition": np.full(3, u, np.int32)}) for u in range(2)]
    store.write_units(zarr.open_group(str(run / "store.zarr"), mode="r+"), "g", units)
    return run


def test_an_intact_store_has_no_damage_and_checksums_beside_its_units(small_store):
    assert store.damage(small_store / "store.zarr") == []
    sums = integrity.recorded(zarr.open_group(str(small_store / "store.zarr"), mode="r")["g"], 1)
    assert set(sums) == {"x0", "seed", "condition"}
    store.open_run(small_store)  # verifies, then opens
    assert "damaged" not in view.describe(small_store)


@pytest.mark.parametrize("how, why", [("delete", "checksum mismatch"), ("truncate", "unreadable"),
                                      ("overwrite", "checksum mismatch")])
def test_a_damaged_chunk_is_named_by_group_unit_and_array(small_store, tmp_path, capsys, how, why):
    chunk = chunk_files(small_store, "g", "x0")[1]  # unit 1's chunk
    {"delete": chunk.unlink, "truncate": lambda: chunk.write_bytes(chunk.read_bytes()[:7]),
     "overwrite": lambda: chunk.write_bytes(chunk_files(small_store, "g", "x0")[0].read_bytes())}[how]()
    found = store.damage(small_store / "store.zarr")
    assert [(d.group, d.unit, d.array) for d in found] == [("g", 1, "x0")] and why in found[0].why
    with pytest.raises(store.StoreDamagedError, match="group 'g' unit 1 array 'x0'"):
        store.open_run(small_store)
    text = view.describe(small_store)  # the viewer still describes the store, and says which unit is damaged
    assert "units 1/2 complete, damaged: unit 1 x0" in text and "3 samples of complete units" in text
    before = tree_digest(tmp_path)
    assert view.main([str(small_store), "--export-images", str(tmp_path / "png")]) == 2  # refused before writing
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "group 'g' unit 1 array 'x0'" in err and tree_digest(tmp_path) == before


def test_resume_marks_a_damaged_unit_incomplete_so_the_run_regenerates_it(small_store):
    chunk_files(small_store, "g", "x0")[0].unlink()
    done, found = store.usable_units(small_store / "store.zarr", ["g"])
    assert done == {("g", 1)} and [(d.unit, d.array) for d in found] == [(0, "x0")]
    assert store.completed_units(small_store / "store.zarr", "g").tolist() == [False, True]


def test_a_corrupt_metadata_file_is_named(small_store, capsys):
    (small_store / "store.zarr" / "g" / "zarr.json").write_text("{ not json")
    assert view.main([str(small_store)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "g/zarr.json is damaged" in err and "Traceback" not in err
    (small_store / "store.zarr" / "zarr.json").write_text("{ not json")
    with pytest.raises(store.StoreDamagedError, match="store.zarr/zarr.json is damaged"):
        store.run_attrs(small_store)


def test_stores_made_before_checksums_are_read_back(small_store):
    shutil.rmtree(small_store / "store.zarr" / "g" / integrity.CHECKSUMS)
    assert store.damage(small_store / "store.zarr") == []
    chunk = chunk_files(small_store, "g", "x0")[0]
    chunk.write_bytes(chunk.read_bytes()[:5])  # what no longer decodes is still found
    assert [(d.unit, d.array) for d in store.damage(small_store / "store.zarr")] == [(0, "x0")]


# --- one writer per run directory ----------------------------------------------------------------------------------

TRY_LOCK = ("import sys; from spell_lab.run.lock import holding\n"
            "try:\n    with holding(sys.argv[1], wait=False): print('got it')\n"
            "except ValueError as e: print(e)")


def other_process(*args, timeout=60) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=timeout,
                          cwd=ROOT).stdout.strip()


def test_the_lock_refuses_another_process_and_is_reentrant_in_one(tmp_path):
    run = tmp_path / "run"
    with holding(run):
        with holding(run):  # the same process again (a notebook, a test): no deadlock
            pass
        assert other_process("-c", TRY_LOCK, str(run)).startswith(f"another command is writing into {run}")
    assert (run / LOCK_NAME).exists() and other_process("-c", TRY_LOCK, str(run)) == "got it"


def test_the_lock_of_a_killed_process_is_taken_over(tmp_path):
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from spell_lab.run.lock import holding\n"
                               "with holding(sys.argv[1]):\n    print('held', flush=True); time.sleep(600)", str(run)],
                              stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert other_process("-c", TRY_LOCK, str(run)).startswith("another command is writing")
    finally:
        holder.kill()  # SIGKILL: no clean-up runs; the kernel drops the flock
        holder.wait()
    assert other_process("-c", TRY_LOCK, str(run)) == "got it"


# --- refusals: one line, exit 2, nothing created or changed -------------------------------------------------------

GMM = ["--model", "gmm", "--quick", "--wandb", "disabled", "--no_progress"]


def _command(module: str, runner=cli.run):
    """`python -m module` in this process: its main under the command's error convention, imported when used."""
    import importlib

    return lambda argv: runner(importlib.import_module(module).main, argv)


_digits_train, _digits_eval = _command("spell_lab.models.digits_train"), _command("spell_lab.experiments.digits")
_fashion_eval = _command("spell_lab.experiments.fashion")
_rerender = _command("spell_lab.analysis.sparsity", lambda main, argv: main(argv))  # its main has the convention


def _experiment(main):
    return lambda argv: run_cli(main, argv)


CASES = [  # (command, arguments, what the one line says); {tmp}: the test's folder, which must not change
    (_digits_train, ["--batch", "0"], "--batch must be >= 1 (got 0)"),
    (_digits_train, ["--resolution", "0"], "--resolution must be >= 1"),
    (_digits_train, ["--resolution", "4"], "--resolution must be >= 8"),
    (_digits_train, ["--threads", "0"], "--threads must be >= 1"),
    (_digits_train, ["--steps", "0"], "--steps must be >= 1"),
    (_digits_train, ["--out", "{tmp}/a_file"], "is a file; give a folder"),
    (_digits_train, ["--out", "{tmp}/w", "--into-package"], "--out and --into-package exclude each other"),
    (_digits_eval, ["--steps", "-2"], "--steps must be >= 1 (got -2)"),
    (_digits_eval, ["--steps", "0"], "--steps must be >= 1 (got 0)"),
    (_digits_eval, ["--threads", "0"], "--threads must be >= 1"),
    (_digits_eval, ["--out", "{tmp}/a_file"], "is a file; give a folder"),
    (_digits_eval, ["--guidance", "1,-5"], "--guidance weights must be finite and >= 0"),
    (_fashion_eval, ["--threads", "0"], "--threads must be >= 1"),
    (_experiment(calibrate.main), [*GMM[:3], "--out", "{tmp}/a_file"], "is a file; give a folder"),
    (_experiment(calibrate.main), [*GMM[:3], "--per_condition", "0"], "--per_condition must be >= 1"),
    (_experiment(calibrate.main), [*GMM[:3], "--grid_size", "0"], "--grid_size must be >= 2 (got 0)"),
    (_experiment(sparsity.main), [*GMM, "--guidance", "-5"], "--guidance must be >= 0 (and finite) (got -5.0)"),
    (_experiment(sparsity.main), [*GMM, "--guidance", "nan"], "--guidance expects a finite number (got 'nan')"),
    (_experiment(sparsity.main), [*GMM, "--num_nodes", "2"], "--num_nodes 2 needs a cluster"),
    (_experiment(sparsity.main), [*GMM, "--prompts", "{tmp}/missing.txt"], "--prompts {tmp}/missing.txt does not exist"),
    (_experiment(sparsity.main), [*GMM, "--prompts", "{tmp}/a_file"], "--prompts is for diffusers models"),
    (_experiment(sparsity.main), [*GMM, "--seed", str(2**70)], "--seed must be between 0 and 2**63 - 1"),
    (_experiment(sparsity.main), [*GMM, "--radius", "0"], "--radius must be > 0"),
    (_experiment(sparsity.main), [*GMM, "--out", "{tmp}/a_file/run"], "is a file; give a folder"),
    (_experiment(radius.main), [*GMM, "--per_condition", "0"], "--per_condition must be >= 1 (got 0)"),
    (_experiment(radius.main), [*GMM, "--grid_size", "0"], "--grid_size must be >= 2 (got 0)"),
    (_experiment(radius.main), [*GMM, "--per_condition", "abc"], "--per_condition expects an integer (got 'abc')"),
    (_experiment(radius.main), [*GMM, "--radii", "nan"], "--radii expects a finite number for each value"),
    (_experiment(radius.main), [*GMM, "--guidance", "-5"], "--guidance must be >= 0"),
    (_experiment(diversity.main), ["--models", "gmm", *GMM[2:], "--per_condition", "0"], "--per_condition must be >= 1"),
    (_experiment(diversity.main), ["--models", "gmm", *GMM[2:], "--batch", "0"], "--batch must be >= 1 (got 0)"),
    (_experiment(diversity.main), ["--models", "gmm", *GMM[2:], "--radius", "notadict"],
     "--radius expects a JSON object"),
    (_experiment(diversity.main), ["--models", "gmm", *GMM[2:], "--radius", '{"gmm": -1}'], "--radius must be > 0"),
    (_experiment(protection.main), [*GMM[2:], "--radius", "0"], "--radius must be > 0"),
    (_experiment(protection.main), [*GMM[2:], "--searches", ","], "--searches names no search"),
    (_experiment(protection.main), [*GMM[2:], "--per_condition", "0"], "--per_condition must be >= 1"),
    (_experiment(protection.main), [*GMM[2:], "--set_size", "1000000000"], "--set_size 1000000000 needs about"),
    (_experiment(protection.main), [*GMM[2:], "--too_close", "1.5"], "--too_close must be a share"),
    (_experiment(baselines.main), [*GMM, "--sweeps", "pg", "--grids", '{"pg": [0, -3]}'],
     "method 'pg': strength must be >= 0"),
    (_experiment(baselines.main), [*GMM, "--sweeps", "cfg", "--grids", '{"cfg": [true]}'],
     "grid value True of 'cfg' is not a number"),
    (_experiment(baselines.main), [*GMM, "--sweeps", "pg", "--grids", '{"pg": [0, NaN]}'], "grid value 'NaN' of 'pg'"),
    (_rerender, ["{tmp}/no_run", "--out", "{tmp}/a_file"], "is a file; give a folder"),
    (_rerender, ["{tmp}/no_run"], "no_run does not exist"),
    (view.main, ["{tmp}/no_run"], "no run store at"),
]
if not torch.cuda.is_available():
    CASES.append((_experiment(sparsity.main), [*GMM, "--accelerator", "gpu"], "--accelerator gpu: this machine has no"))


@pytest.mark.parametrize("command, args, message", CASES, ids=[f"{i}-{' '.join(c[1][-2:])}" for i, c in enumerate(CASES)])
def test_bad_input_is_one_line_exit_2_before_anything_exists(tmp_path, capsys, monkeypatch, command, args, message):
    (tmp_path / "a_file").write_text("I am a file")
    monkeypatch.chdir(tmp_path)  # default output folders (runs/, analysis/...) would appear here
    before = tree_digest(tmp_path)
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    assert command(args) == 2
    err = capsys.readouterr().err.strip()
    message = message.replace("{tmp}", str(tmp_path))
    assert err.startswith("error: ") and message in err and "\n" not in err and "Traceback" not in err, err
    assert tree_digest(tmp_path) == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_targets_are_refused_in_one_line(small_store, tmp_path, capsys, monkeypatch):
    read_only = tmp_path / "ro"
    read_only.mkdir()
    read_only.chmod(0o555)
    monkeypatch.chdir(tmp_path)
    try:
        before = tree_digest(tmp_path)
        for command, args in [(_experiment(calibrate.main), [*GMM[:3], "--out", str(read_only / "cal")]),
                              (view.main, [str(small_store), "--export-images", str(read_only / "png")]),
                              (_digits_train, ["--out", str(read_only / "w")]),
                              (_experiment(sparsity.main), [*GMM, "--out", str(read_only / "run")])]:
            assert command(args) == 2
            err = capsys.readouterr().err.strip()
            assert "is not writable" in err and "\n" not in err, err
        assert tree_digest(tmp_path) == before
    finally:
        read_only.chmod(0o755)


@pytest.mark.parametrize("fault, code, words", [
    (OSError(errno.ENOSPC, "No space left on device", "/runs/x/store.zarr/g/x0/c/0"), 1, "the disk is full"),
    (PermissionError(errno.EACCES, "Permission denied", "/ro/run"), 2, "/ro/run: Permission denied"),
    (OSError(errno.EROFS, "Read-only file system", "/ro/run"), 2, "choose another --out"),
    (MemoryError(), 1, "out of memory"),
])
def test_faults_of_the_machine_are_one_line(capsys, fault, code, words):
    def main(argv):
        raise fault

    assert cli.run(main, []) == code
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and words in err and "\n" not in err


def test_an_unreadable_netrc_is_one_line(monkeypatch, capsys):
    import netrc

    from spell_lab import report

    def unreadable(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(Path.home() / ".netrc"))

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setattr(netrc, "netrc", unreadable)
    assert cli.run(report.main, []) == 2
    err = capsys.readouterr().err.strip()
    assert "cannot read" in err and ".netrc" in err and "WANDB_API_KEY" in err and "\n" not in err


def test_digits_train_writes_outside_the_package_by_default_and_keeps_the_target_on_failure(tmp_path, monkeypatch):
    from spell_lab.models import digits_train
    from spell_lab.models.digits import WEIGHTS_DIR

    seen = []
    monkeypatch.setattr(digits_train, "train_main", lambda args: seen.append(args.out))
    digits_train.main([])
    digits_train.main(["--into-package"])
    assert seen == [digits_train.DEFAULT_OUT, str(WEIGHTS_DIR)]
    monkeypatch.undo()

    def fails(*args, **kwargs):
        raise RuntimeError("training failed")

    out = tmp_path / "weights"
    out.mkdir()
    (out / "digits.safetensors").write_bytes(b"the old weights")
    monkeypatch.setattr(digits_train, "train_denoiser", fails)
    with pytest.raises(RuntimeError):
        digits_train.main(["--out", str(out), "--threads", "1"])  # 1: the session's torch threads stay as they are
    assert [p.name for p in out.iterdir()] == ["digits.safetensors"]  # no temporary folder, the old file kept
    assert (out / "digits.safetensors").read_bytes() == b"the old weights"


def test_the_gallery_scale_takes_no_images():
    from spell_lab.analysis import plots

    assert plots.to_gray01([np.zeros((0, 4)), None]) [1] is None  # SPELL moved nothing: no concatenation of none


# --- the public API (README "Using SPELL in your own code") -------------------------------------------------------


def _generate(**kw):
    from spell_lab.models import load_model
    from spell_lab.samplers import generate

    args = dict(cond=torch.zeros(2, dtype=torch.long), seeds=[0, 1], steps=2) | kw
    return generate(load_model("gmm"), args.pop("cond"), args.pop("seeds"), **args)


def _correction(x0, centers):
    from spell_lab.repellency import correction

    return correction(x0, centers, 1.0)


def _memory_add():
    from spell_lab.repellency import Memory

    Memory().add(torch.zeros(4, 3), torch.zeros(3, dtype=torch.long))


@pytest.mark.parametrize("call, error, words", [
    (lambda: _generate(cond=torch.full((2,), 4)), ValueError, "condition 4 does not exist"),
    (lambda: _generate(steps=0), ValueError, "steps must be an integer >= 1"),
    (lambda: _generate(guidance=math.nan), ValueError, "guidance must be a finite number >= 0"),
    (lambda: _generate(guidance=-1.0), ValueError, "guidance must be a finite number >= 0"),
    (lambda: _generate(seeds=(s for s in range(2))), TypeError, "seeds must be a list of integers"),
    (lambda: _generate(seeds=[0, 2**70]), ValueError, "between 0 and 2**63 - 1"),
    (lambda: _generate(seeds=[0, 1, 2]), ValueError, "got 3 seeds for 2 conditions"),
    (lambda: _generate(method=resolve("cads")), ValueError, "transforms the condition embedding"),
    (lambda: resolve({"name": "pg", "strength": math.nan}), ValueError, "strength must be >= 0 and finite"),
    (lambda: resolve({"name": "pg", "strength": -1}), ValueError, "strength must be >= 0 and finite"),
    (lambda: resolve({"name": "spell", "radius": 1.0, "memory": "yes"}), ValueError, "memory must be true or false"),
    (lambda: resolve(None), TypeError, "a method is a name or plain data"),
    (_memory_add, ValueError, "one condition per output: got 4 outputs"),
    (lambda: _correction(np.zeros((2, 3)), np.zeros((2, 3))), TypeError, "x0 must be a torch.Tensor"),
])
def test_the_public_api_says_what_to_change(call, error, words):
    with pytest.raises(error, match=words.replace("*", r"\*").replace("(", r"\(")):
        call()


def test_an_empty_batch_has_an_empty_correction():
    c = _correction(torch.zeros(0, 3), torch.zeros(2, 3))
    assert c.delta.shape == (0, 3) and c.active.shape == (0,)


# --- end to end: damage repaired, two commands at once -------------------------------------------------------------


def test_a_damaged_run_is_named_then_regenerated_into_the_uninterrupted_store(gmm_quick_run, tmp_path, capsys):
    from spell_lab.analysis import sparsity as analysis

    run = tmp_path / "run"
    shutil.copytree(gmm_quick_run, run)
    for f in chunk_files(run, "baseline", "x0")[1:2]:
        f.unlink()  # unit 1's outputs deleted
    main_chunk = chunk_files(run, "main", "correction_norm")[-1]
    main_chunk.write_bytes(main_chunk.read_bytes()[:10])  # a truncated chunk
    assert "damaged: unit 1 x0" in view.describe(run)
    assert analysis.main([str(run), "--wandb", "disabled"]) == 2  # the re-render names the damage first
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "group 'baseline' unit 1 array 'x0'" in err and "and 1 more" in err
    assert run_cli(sparsity.main, [*GMM_QUICK, "--out", str(run)]) == 0  # the same command again repairs it
    captured = capsys.readouterr()
    assert "damaged:" in captured.err and "group 'main' unit 3 array 'correction_norm'" in captured.err
    assert "(16 already done, resumed)" in captured.out
    same_store(run, gmm_quick_run)


@pytest.mark.e2e
def test_two_commands_into_one_directory_end_in_one_store(gmm_quick_run, tmp_path):
    run = tmp_path / "run"
    args = [sys.executable, "-m", "spell_lab.experiments.sparsity", *GMM_QUICK, "--setups", "intra", "--out", str(run)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": "disabled"}
    logs = [tmp_path / f"{i}.err" for i in range(2)]
    with holding(run):  # both start while the directory is taken, so both must wait, then one generates
        procs = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=log.open("w"), text=True, env=env, cwd=ROOT)
                 for log in logs]
        deadline = time.monotonic() + 300
        while not all("another command is writing" in log.read_text() for log in logs):
            assert time.monotonic() < deadline and all(p.poll() is None for p in procs), [l.read_text() for l in logs]
            time.sleep(0.5)
    outs = [p.communicate(timeout=600)[0] for p in procs]
    for p, log in zip(procs, logs):
        err = log.read_text()
        assert p.returncode == 0 and "Traceback" not in err, err[-3000:]
        assert err.strip().count("\n") == 0  # the one waiting line, nothing else
    assert sum("(2 already done, resumed)" in out for out in outs) == 1  # the second found the first's store
    same_store(run, gmm_quick_run, groups_of_a=True)


@pytest.mark.e2e
def test_a_full_disk_during_a_run_is_one_line_exit_1_and_the_store_stays_readable(tmp_path, capsys, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "run" / "store.zarr"))

    monkeypatch.setattr(store, "write_units", full)  # the writer's every flush finds the disk full
    out = tmp_path / "run"
    assert run_cli(sparsity.main, [*GMM_QUICK, "--setups", "intra", "--out", str(out)]) == 1
    text = capsys.readouterr().err
    err = text.strip().splitlines()[-1]
    assert err.startswith("error: ") and "No space left on device (the disk is full" in err and "Traceback" not in text
    assert store.damage(out / "store.zarr") == []  # nothing half-marked: the same command later resumes it


@pytest.mark.e2e
def test_protection_when_spell_moves_nothing_ends_in_a_summary(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["--model", "digits", "--quick", "--devices", "1", "--searches", "exact", "--radius", "5", "--wandb", "disabled", "--no_progress",
            "--out", str(out)]
    assert run_cli(protection.main, args) == 0, capsys.readouterr().err[-2000:]
    assert "moved_gallery" in capsys.readouterr().out and (out / "figures" / "moved_gallery.png").exists()
