"""The run layer end to end on the gmm oracle: schema, invariants, crash + resume, config mismatch, every core."""

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from conftest import command

from spell_lab import schema, store
from spell_lab.experiments import sparsity
from spell_lab.run.launch import PER_PROCESS_WORK
from spell_lab.run.lightning import CRASH_AFTER

ARGS = ["--model", "gmm", "--radius", "3", "--overcomp", "1.6", "--quick", "--setups", "iterative,mixed,main", "--wandb", "disabled", "--no_progress"]


def cli(*args, env=None):
    return command("spell_lab.experiments.sparsity", *args, env=env)


def digest(path: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(path.rglob("*")):
        if f.is_file():
            h.update(str(f.relative_to(path)).encode() + f.read_bytes())
    return h.hexdigest()


def data_only(ds):
    return ds.drop_attrs().drop_vars(list(schema.CLOCK)).load()  # the values; wall-clock fields differ between runs


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "run"
    assert sparsity.main([*ARGS, "--out", str(out)]) == 0
    return out


def test_schema(reference_run):
    runs = store.open_run(reference_run)
    assert set(runs) == {"iterative", "mixed", "main", "baseline"}
    ds = runs["iterative"]
    for name in ("step", "t", "sigma", "alpha"):
        assert ds[name].dims == ("step",)
    floats = ["correction_norm", "score_norm", "relative_magnitude", "nearest_distance"]
    counts = ["active_shields", "active_batch", "active_memory", "active_protected", "cells_probed"]
    assert [f.name for f in schema.step_fields()] == floats + counts  # the declaration the store derives from
    for name in floats:
        assert ds[name].dims == ("sample", "step") and ds[name].dtype == np.float32
    for name in counts:
        assert ds[name].dims == ("sample", "step") and ds[name].dtype == np.int32
    for f in schema.sample_fields():
        assert ds[f.name].dims == ("sample",) and ds[f.name].dtype == np.dtype(f.dtype), f.name
    assert ds["intervened"].dtype == bool and ds["inside_shield"].dtype == bool
    assert ds["x0"].dims == ("sample", "feature")  # the gmm's diffusion space is a vector
    for attr in schema.GROUP_ATTRS + schema.SPELL_ATTRS:
        assert attr in ds.attrs, attr
    assert json.loads(ds.attrs["method"]) == {"name": "spell", "radius": 3.0, "overcomp": 1.0, "intra_batch": False,
                                              "memory": True, "overlap": "single", "max_iter": 10, "weight": None}
    assert json.loads(ds.attrs["config"])["radius"] == 3.0 and ds.attrs["radius"] == 3.0
    for f in schema.step_fields() + schema.sample_fields():  # the store describes its own fields
        assert ds[f.name].attrs["description"] == f.doc, f.name
    assert runs["main"].attrs["overcomp"] == 1.6 and ds.attrs["overcomp"] == 1.0  # iterative runs at lambda = 1
    assert bool(ds["unit_complete"].all())
    import zarr

    arr = zarr.open_group(str(reference_run / "store.zarr"), mode="r")["iterative"]["correction_norm"]
    assert arr.metadata.dimension_names == ("sample", "step") and np.isnan(arr.fill_value)


def test_invariants(reference_run):
    for name, ds in store.open_run(reference_run).items():
        ds = ds.load()
        active = ds["active_shields"].values
        assert (ds["intervened"].values == (active > 0).any(1)).all(), name
        first, last = ds["first_active_step"].values, ds["last_active_step"].values
        for i in range(active.shape[0]):
            on = np.flatnonzero(active[i])
            assert (first[i], last[i]) == ((on[0], on[-1]) if len(on) else (-1, -1))
        parts = ds["active_batch"] + ds["active_memory"] + ds["active_protected"]
        assert (parts == ds["active_shields"]).all()
        assert (ds["inside_shield"] == (ds["final_nearest_distance"] < ds.attrs["radius"])).all()
        expected = ds["alpha"] / ds["sigma"] ** 2 * ds["correction_norm"] / ds["score_norm"]
        np.testing.assert_allclose(ds["relative_magnitude"], expected.transpose(*ds["relative_magnitude"].dims), rtol=1e-4, atol=1e-7)
        assert np.isfinite(ds["x0"]).all()
    runs = store.open_run(reference_run)
    assert runs["iterative"]["intervened"].any() and not runs["baseline"]["intervened"].any()
    # baseline = the iterative plan at radius 0: same seeds, and the rounds SPELL never touched are identical
    it, base = runs["iterative"].load(), runs["baseline"].load()
    assert (it["seed"] == base["seed"]).all()
    untouched = ~it["intervened"].values & (it["round"].values == 0)
    assert np.array_equal(it["x0"].values[untouched], base["x0"].values[untouched])


def test_crash_then_resume_equals_uninterrupted(reference_run, tmp_path):
    out = tmp_path / "run"
    crashed = cli(*ARGS, "--out", str(out), env={CRASH_AFTER: "3"})
    assert crashed.returncode != 0
    runs = store.open_run(out)
    done = {k: ds["unit_complete"].values for k, ds in runs.items()}
    assert sum(d.sum() for d in done.values()) == 3  # a crash after 3 units, nothing after
    # an unwritten unit is visible as NaN
    assert any(np.isnan(ds["correction_norm"].values).any() for ds in runs.values())
    assert sparsity.main([*ARGS, "--out", str(out)]) == 0  # the same command again completes it
    resumed, ref = store.open_run(out), store.open_run(reference_run)
    assert set(resumed) == set(ref)
    for k in ref:
        xr.testing.assert_equal(data_only(resumed[k]), data_only(ref[k]))


def test_mismatched_config_is_refused_and_fresh_starts_beside(reference_run, tmp_path):
    before = digest(reference_run)
    with pytest.raises(store.StoreMismatchError, match="differs in: settings"):
        sparsity.main([*ARGS[:3], "4", *ARGS[4:], "--out", str(reference_run)])
    assert digest(reference_run) == before
    res = cli(*ARGS[:3], "4", *ARGS[4:], "--out", str(reference_run))
    assert res.returncode == 2 and "--fresh" in res.stderr and "Traceback" not in res.stderr
    assert digest(reference_run) == before
    fresh_out = tmp_path / "other"
    (fresh_out / "store.zarr").parent.mkdir()
    store.create_store(fresh_out / "store.zarr", experiment="radius", settings=[], times=[1.0], alphas=[0.0], sigmas=[1.0],
                       sample_shape=(2,), image_shape=None, content={"experiment": "radius", "model": "gmm", "sampler": "ddim", "steps": 1, "guidance": 1.0}, config={})
    with pytest.raises(store.StoreMismatchError, match="holds a store of experiment 'radius'"):
        sparsity.main([*ARGS, "--out", str(fresh_out)])
    assert sparsity.main([*ARGS[:3], "4", *ARGS[4:], "--out", str(reference_run), "--fresh", "--setups", "intra"]) == 0
    assert (reference_run.parent / "run-2" / "store.zarr").exists() and digest(reference_run) == before


@pytest.mark.e2e
def test_the_default_uses_every_core_and_equals_one_process(tmp_path):
    """On a CPU machine the default is one process per core when the run has the work for it (`resolve_devices`);
    the DDP ranks' store equals one process's, and rank 0 analyses only after every rank has written: the same
    table. Where there is one core, two processes are asked for (--devices 2), so the equality is proven anyway."""
    cores = os.cpu_count() or 1
    samples = 64  # per group at the default size on gmm: iterative and its reference, the baseline
    steps = -(-PER_PROCESS_WORK * max(cores, 2) // (2 * samples))  # just enough sample-steps for every core: 157
    args = ["--model", "gmm", "--radius", "3", "--setups", "iterative", "--steps", str(steps), "--wandb", "disabled",
            "--no_progress"]
    auto = cli(*args, "--out", str(tmp_path / "auto"), *([] if cores > 1 else ["--devices", "2"]))
    assert auto.returncode == 0 and f"({max(cores, 2)} processes)" in auto.stdout, auto.stderr[-3000:]
    assert sparsity.main([*args, "--out", str(tmp_path / "one"), "--devices", "1"]) == 0
    a, b = store.open_run(tmp_path / "auto"), store.open_run(tmp_path / "one")
    assert set(a) == {"iterative", "baseline"} == set(b) and a["iterative"].sizes["sample"] == samples
    for k in b:
        xr.testing.assert_equal(data_only(a[k]), data_only(b[k]))
    summary = "figures/summary.csv"
    assert (tmp_path / "auto" / summary).read_text() == (tmp_path / "one" / summary).read_text()


def test_bad_setup_and_radius():
    with pytest.raises(ValueError, match="unknown setup"):
        sparsity.main([*ARGS[:-5], "--setups", "iterative,nope", "--wandb", "disabled"])
    with pytest.raises(ValueError, match="--radius must be > 0"):
        sparsity.main(["--model", "gmm", "--radius", "0", "--quick", "--wandb", "disabled"])


@pytest.mark.e2e
def test_protected_set_from_a_file(tmp_path, gmm_modes_file):
    out = tmp_path / "prot"
    assert sparsity.main([*ARGS[:-5], "--setups", "intra", "--protected", str(gmm_modes_file), "--out", str(out), "--wandb", "disabled"]) == 0
    ds = store.open_run(out)["intra"].load()
    assert (ds["active_protected"] > 0).any() and (ds["active_batch"] > 0).any()
    assert json.loads(ds.attrs["setting"])["protected"] == {"path": str(gmm_modes_file), "index": "exact"}


def test_protected_set_in_the_wrong_space_is_refused_before_anything_is_written(tmp_path):
    bad = tmp_path / "bad.npy"
    np.save(bad, np.zeros((3, 5), dtype=np.float32))
    out = tmp_path / "run"
    with pytest.raises(ValueError, match="diffusion space is"):
        sparsity.main([*ARGS, "--protected", str(bad), "--out", str(out)])
    assert not out.exists()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        sparsity.main([*ARGS, "--protected", str(tmp_path / "missing.npy"), "--out", str(out)])


@pytest.fixture
def gmm_modes_file(tmp_path):
    from spell_lab.models.gmm import GaussianMixture

    path = tmp_path / "modes.npy"
    np.save(path, GaussianMixture().modes().numpy())
    return path
