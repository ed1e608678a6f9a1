"""Shared test setup: the `e2e` marker's guard, helpers several files use, and session-scoped quick runs.

`e2e` marks a test that launches a full run (Lightning's predict loop, or an experiment's command in a subprocess);
`pytest -m "not e2e"` is the fast suite. A test that uses a quick-run fixture below is marked automatically; any
other test that launches a run without the marker fails, naming the marker, so the fast suite stays fast honestly.
The quick runs are made once per session; tests read them and never write into them (copy first)."""

import os

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import xarray as xr  # noqa: E402

torch.set_num_threads(1)  # the tests' tensors are small: one thread beat two by 2-20x on a loaded 2-core CPU, as in the runs

ROOT = Path(__file__).resolve().parents[1]
GMM_QUICK = ["--model", "gmm", "--radius", "3", "--quick", "--wandb", "disabled", "--no_progress"]
# fixtures that launch a run (the session one below, and the module-scoped runs of single test files): their users
# are end-to-end tests
E2E_FIXTURES = {"gmm_quick_run", "baselines_quick_run", "quick_run", "quick_select", "reference_run", "digits_run"}


# --- helpers ----------------------------------------------------------------------------------------------------


def command(module, *args, env=None, timeout=900):
    """`python -m module args` in a subprocess of this interpreter, importing this checkout, W&B disabled."""
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=ROOT)


def same_outputs(a, b, skip=()):
    """Two generate() outputs bit for bit: x0, the images where there are any, and every record but `skip`."""
    images = getattr(a, "images", None)
    return (torch.equal(a.x0, b.x0) and (images is None or np.array_equal(images, b.images))
            and all(torch.equal(a.records[k], b.records[k]) for k in a.records if k not in skip))


def inside(x, centers, radius, rtol=1e-5):
    """Closer than r by more than float rounding (a lambda = 1 correction lands exactly on the sphere)."""
    d = torch.cdist(x.flatten(1).double(), centers.flatten(1).double())
    return (d < radius * (1 - rtol)).any(dim=1)


# --- synthetic stores: groups of the store contract (docs/design.md section 5) with hand-known answers ----------

SOURCES = ("batch", "memory", "protected")


def make_group(sources: dict, rel=None, t=None, *, condition=None, seed=None, rnd=None, position=None,
               image=True, x0=True, setup="iterative", radius=25.0, overcomp=1.0, **attrs) -> xr.Dataset:
    """A store group from per-source (sample, step) active counts; everything else derived consistently."""
    counts = {s: np.asarray(sources.get(s, 0 * next(iter(sources.values()))), dtype=np.int64) for s in SOURCES}
    total = sum(counts.values())
    S, N = total.shape
    act = total > 0
    t = np.linspace(1, 0.1, N) if t is None else np.asarray(t, float)
    rel = np.where(act, 0.03, 0.0) if rel is None else np.asarray(rel, float)
    last = np.where(act.any(1), N - 1 - np.argmax(act[:, ::-1], 1), -1)
    first = np.where(act.any(1), np.argmax(act, 1), -1)
    seed = np.arange(S) if seed is None else np.asarray(seed)
    ss, st = ("sample", "step"), ("step",)
    data = {
        "correction_norm": (ss, rel * 10.0), "score_norm": (ss, np.full((S, N), 10.0)),
        "relative_magnitude": (ss, rel), "nearest_distance": (ss, np.where(act, 20.0, 30.0)),
        "active_shields": (ss, total), **{f"active_{s}": (ss, c) for s, c in counts.items()},
        "condition": ("sample", np.zeros(S, int) if condition is None else np.asarray(condition)),
        "seed": ("sample", seed), "round": ("sample", np.zeros(S, int) if rnd is None else np.asarray(rnd)),
        "position": ("sample", np.arange(S) if position is None else np.asarray(position)),
        "intervened": ("sample", act.any(1)), "first_active_step": ("sample", first),
        "last_active_step": ("sample", last), "final_nearest_distance": ("sample", np.full(S, 30.0)),
        "inside_shield": ("sample", np.zeros(S, bool)),
    }
    pix = (np.add.outer(seed, np.add.outer(np.arange(8), np.arange(8))) * 9) % 256  # a per-seed pattern
    pix = np.where(act.any(1)[:, None, None], 255 - pix, pix)  # SPELL-changed samples look different
    if x0:
        data["x0"] = (("sample", "channel", "height", "width"), np.repeat(pix[:, None] / 127.5 - 1, 2, axis=1))
    if image:
        data["image"] = (("sample", "height", "width", "rgb"), np.repeat(pix[..., None], 3, -1).astype(np.uint8))
    attrs = {"config": json.dumps({"setup": setup, "radius": radius}), "radius": radius, "overcomp": overcomp,
             "model": "digits", "sampler": "ddim", "steps": N, "guidance": 2.0, "setup": setup,
             "version": "0.1.0", "git_commit": "abc", "created": "2026-01-01T00:00:00", **attrs}
    coords = {"step": np.arange(N), "t": (st, t), "sigma": (st, t), "alpha": (st, np.sqrt(1 - t**2))}
    return xr.Dataset(data, coords=coords, attrs=attrs)


def pattern(rows, N=10):
    """Boolean (sample, step) from lists of active step indices."""
    a = np.zeros((len(rows), N), bool)
    for i, steps in enumerate(rows):
        a[i, list(steps)] = True
    return a


SETUP_SOURCES = {"iterative": ("memory",), "intra": ("batch",), "mixed": ("batch", "memory"),
                 "previous64": ("memory",), "large_radius": ("memory",), "overcomp": ("memory",),
                 "main": ("batch", "memory")}


def synthetic_run(setups=tuple(SETUP_SOURCES), *, steps=24, conditions=2, rounds=2, per_round=8, baseline=True,
                  image=True, seed=0) -> dict:
    """A plausible run: activity starts at t = 1 and stops at a random step (later for large_radius, earlier and
    stronger with overcompensation), a few restarts; round 0 of each condition has nothing to repel from."""
    rng = np.random.default_rng(seed)
    S = conditions * rounds * per_round
    cond, rnd, pos = (a.ravel() for a in np.meshgrid(np.arange(conditions), np.arange(rounds),
                                                      np.arange(per_round), indexing="ij"))
    seeds = 1000 + np.arange(S)
    out = {}
    measure = {"iterative": 1, "previous64": 1, "large_radius": 1, "overcomp": 1}  # round 0 only fills the memory
    for name in setups:
        stop_scale = {"large_radius": 0.8, "overcomp": 0.2}.get(name, 0.35)
        strength = {"overcomp": 1.6, "large_radius": 1.5}.get(name, 1.0)
        stop = np.minimum((rng.exponential(stop_scale, S) * steps).astype(int), steps - 1)
        can = (rnd > 0) | ("batch" in SETUP_SOURCES[name])
        act = (np.arange(steps)[None] <= stop[:, None]) & can[:, None] & (rng.random(S) < 0.7)[:, None]
        restart = rng.random(S) < 0.1
        act[restart, np.minimum(stop[restart] + 3, steps - 1)] = True
        rel = np.where(act, strength * 0.03 * rng.lognormal(0, 0.8, (S, steps)) * np.linspace(1.5, 0.5, steps), 0)
        counts = {s: act * rng.integers(1, 3, (S, steps)) for s in SETUP_SOURCES[name]}
        out[name] = make_group(counts, rel, np.linspace(1, 0.02, steps), condition=cond, seed=seeds, rnd=rnd,
                               position=pos, image=image, setup=name, overcomp=1.6 if name == "overcomp" else 1.0,
                               radius=40.0 if name == "large_radius" else 25.0,
                               measure_from_round=measure.get(name, 0), condition_names=["zero", "one", "two"])
    if baseline:
        out["baseline"] = make_group({"batch": np.zeros((S, steps), int)}, None, np.linspace(1, 0.02, steps),
                                     condition=cond, seed=seeds, rnd=rnd, position=pos, image=image,
                                     setup="baseline", radius=0.0, measure_from_round=1)
    return out


def write_store(datasets: dict, run_dir):
    """The run directory layout of docs/design.md section 5: RUN_DIR/store.zarr, one zarr v3 group per setup."""
    store = run_dir / "store.zarr"
    for name, ds in datasets.items():
        ds.to_zarr(store, group=name, zarr_format=3, mode="a" if store.exists() else "w", consolidated=False)
    return run_dir


# --- the e2e marker -----------------------------------------------------------------------------------------------


def pytest_collection_modifyitems(items):
    for item in items:
        if E2E_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(autouse=True)
def _full_runs_only_in_e2e(request, monkeypatch):
    """Outside `e2e` tests, launching a run (the predict loop, an experiment's command) fails and names the marker."""
    if request.node.get_closest_marker("e2e"):
        return
    import lightning

    def refuse(*args, **kwargs):
        raise AssertionError(f"{request.node.nodeid} launches a full run: mark it @pytest.mark.e2e")

    monkeypatch.setattr(lightning.Trainer, "predict", refuse)
    run = subprocess.run

    def guarded(cmd, *args, **kwargs):
        words = [str(c) for c in cmd] if isinstance(cmd, (list, tuple)) else str(cmd).split()
        if any(a == "-m" and b.startswith("spell_lab.experiments.") for a, b in zip(words, words[1:])):
            refuse()
        return run(cmd, *args, **kwargs)

    monkeypatch.setattr(subprocess, "run", guarded)


# --- fixtures -----------------------------------------------------------------------------------------------------


@pytest.fixture
def gmm():
    from spell_lab.models.gmm import GaussianMixture

    return GaussianMixture(num_classes=3, components=3, shape=(2, 4, 2), spread=4.0, std=0.2, seed=1)


@pytest.fixture(scope="session")
def gmm_quick_run(tmp_path_factory):
    """`sparsity --model gmm --radius 3 --quick` (every setup), once per session: read only."""
    from spell_lab.experiments import sparsity

    out = tmp_path_factory.mktemp("gmm_quick") / "run"
    assert sparsity.main([*GMM_QUICK, "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="session")
def baselines_quick_run(tmp_path_factory):
    """`baselines --model digits --quick --steps 8` (every sweep), once per session (its tests and its notebook's):
    read only."""
    from spell_lab.experiments import baselines

    out = tmp_path_factory.mktemp("baselines") / "quick"
    assert baselines.main(["--model", "digits", "--quick", "--steps", "8", "--wandb", "disabled", "--no_progress",
                           "--out", str(out)]) == 0
    return out


@pytest.fixture
def execute_notebook(monkeypatch):
    """Run notebooks/NAME.ipynb on a run directory (as a user would: SPELL_RUN_DIR) and return (png outputs, text
    outputs); the notebook must be committed without outputs."""
    import nbformat
    from nbclient import NotebookClient

    def run(name: str, run_dir, timeout: int = 180):
        path = ROOT / "notebooks" / f"{name}.ipynb"
        monkeypatch.setenv("SPELL_RUN_DIR", str(run_dir))  # the kernel inherits the environment
        monkeypatch.setenv("PYTHONPATH", str(ROOT))
        nb = nbformat.read(path, as_version=4)
        assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), "commit the notebook without outputs"
        # kernel "python3" is this interpreter: jupyter_client swaps the kernelspec's "python" for sys.executable
        NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
        outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
        images = [o for o in outputs if "image/png" in o.get("data", {})]
        return images, "".join(o.get("text", "") for o in outputs)

    return run
