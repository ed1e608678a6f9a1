"""Run a generation plan into a run directory: resolve it (resume, mismatch, --fresh), then Lightning predict."""

from __future__ import annotations

import itertools
import logging
import os
import signal
import sys
import threading
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator

import lightning as L
import torch

from .. import cli, store
from ..methods import method_params, resolve
from ..plan import Setting, plan
from ..samplers import get_sampler
from . import handoff
from .handoff import is_child_rank
from .lightning import SpellPredict, StoreWriter, UnitData
from .lock import holding
from .references import ProtectedLoader, check_references, file_digest, load_reference_set

warnings.filterwarnings("ignore", message=".*Couldn't infer the batch indices.*")  # the writer gets the unit itself
warnings.filterwarnings("ignore", message=".*treespec.*deprecated.*")
warnings.filterwarnings("ignore", message=".*litlogger.*")
logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)  # no GPU/TPU/tip banners



class RunInterrupted(Exception):
    """The run stopped early (Ctrl-C, SIGTERM); its finished units are in the store and a re-run resumes."""

    def __init__(self, experiment: str, store: Path, done: int, total: int, reason: str):
        self.experiment, self.store, self.done, self.total, self.reason = experiment, store, done, total, reason
        super().__init__(f"{reason}: {done} of {total} work units are saved in {store}")


class _Terminated(Exception):
    """SIGTERM, raised in the main thread so that Lightning stops the loop and the writer keeps finished units."""


def _on_sigterm(signum, frame):
    raise _Terminated()


@dataclass
class RunResult:
    run_dir: Path
    store: Path
    units_total: int
    units_done_before: int
    is_global_zero: bool
    processes: int = 1


def run_dirs(out) -> Iterator[Path]:
    """Where a run goes: `out`, then (with --fresh, beside a run already there) `out-2`, `out-3`, ..."""
    yield Path(out)
    for n in itertools.count(2):
        yield Path(f"{out}-{n}")


def check_out(out: Path) -> None:
    if Path(out).exists() and not Path(out).is_dir():
        raise ValueError(f"--out {out} is a file; give a directory for the run (it is created if missing).")
    cli.check_writable_dir(out)


def resolve_run_dir(out: Path, content: dict, *, fresh: bool) -> Path:
    """Same content: resume into `out`. Other content: error, or with fresh=True a new directory beside it."""
    check_out(out)
    for candidate in run_dirs(out):
        if not (candidate / "store.zarr").exists():
            return candidate
        try:
            store.check_store(candidate / "store.zarr", content)
            if not fresh:
                return candidate  # resume
        except store.StoreMismatchError:
            if not fresh:
                raise


def _takes(candidate: Path, content: dict, fresh: bool) -> bool:
    """Whether a command generates into `candidate`: no store there, or (without --fresh) a store of the same
    content to resume; another content's store is refused without --fresh (touching nothing), skipped with it."""
    if not (candidate / "store.zarr").exists():
        return True
    try:
        store.check_store(candidate / "store.zarr", content)
    except store.StoreMismatchError:
        if not fresh:
            raise
        return False
    return not fresh


@contextmanager
def claimed(out: Path, content: dict, *, fresh: bool) -> Iterator[Path]:
    """The run directory this command generates into (resolve_run_dir's rule), held while it is used: rank 0 takes
    each candidate's lock (`lock.holding`; another command in it: one line, then wait) before it reads the store
    there, so two commands never decide from a store the other is writing. A launched DDP rank gets rank 0's choice."""
    if is_child_rank():
        yield Path(handoff.rank_zero("run_dir", lambda: str(resolve_run_dir(out, content, fresh=fresh))))
        return
    check_out(out)
    for candidate in run_dirs(out):
        with holding(candidate):  # creates it where missing: only the first missing candidate, the one chosen
            if _takes(candidate, content, fresh):
                yield Path(handoff.hand("run_dir", str(candidate)))
                return


def resumable(path: Path, settings: list[Setting]) -> list[tuple[str, int]]:
    """The work units of the store at `path` that are complete and intact. A damaged unit is named on stderr and
    marked incomplete, so this run regenerates it."""
    if not path.exists():
        return []
    done, damaged = store.usable_units(path, [s.name for s in settings])
    for d in damaged:
        print(f"damaged: {path}: {d}; generating this unit again", file=sys.stderr, flush=True)
    return sorted(done)


def check_hardware(accelerator: str, devices, num_nodes: int) -> None:
    """Refuse, before anything exists, what Lightning would only find out later (or wait for forever)."""
    if (devices is not None and devices < 1) or num_nodes < 1:
        raise ValueError(f"--devices and --num_nodes must be >= 1 (got {devices}, {num_nodes}).")
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ValueError(f"--accelerator {accelerator}: this machine has no usable CUDA GPU; use --accelerator cpu "
                         "(or auto).")
    if accelerator == "gpu" or accelerator == "cuda":
        if devices is not None and devices > torch.cuda.device_count():
            raise ValueError(f"--devices {devices}: this machine has {torch.cuda.device_count()} GPU(s).")
    if num_nodes > 1 and not in_cluster():
        raise ValueError(f"--num_nodes {num_nodes} needs a cluster: run under SLURM, torchrun or another launcher "
                         "Lightning detects, or set MASTER_ADDR, MASTER_PORT and NODE_RANK on every node; on one "
                         "machine leave --num_nodes at 1.")


def in_cluster() -> bool:
    """A multi-node launch Lightning can join: a detected cluster environment, or MASTER_ADDR set by the user."""
    from lightning.fabric.plugins.environments import (KubeflowEnvironment, LSFEnvironment, MPIEnvironment,
                                                       SLURMEnvironment, TorchElasticEnvironment)

    detected = []
    for env in (SLURMEnvironment, TorchElasticEnvironment, LSFEnvironment, KubeflowEnvironment, MPIEnvironment):
        try:
            detected.append(bool(env.detect()))
        except Exception:  # noqa: BLE001 - an environment's probe (e.g. MPI without mpi4py) is not a cluster
            detected.append(False)
    return any(detected) or "MASTER_ADDR" in os.environ


PER_PROCESS_WORK = 10_000  # sample-steps a CPU process must have to be worth DDP's start-up (seconds)


def resolve_devices(devices: int | None, on_cpu: bool, units: int, work: int):
    """--devices as given; by default on a CPU-only machine one process per core (work units across processes, the
    same store as one process) when there are two units and PER_PROCESS_WORK sample-steps per core, else one. Lightning's DDP launcher runs
    the command line again for each rank, so more than one process only when this process is an experiment's
    command (never inside a notebook or a test runner). The ranks it launches inherit rank 0's choice."""
    if devices is not None:
        return devices
    if not on_cpu:
        return "auto"  # Lightning: every visible GPU

    def choose() -> int:
        cores = os.cpu_count() or 1
        entry = Path(sys.argv[0]).resolve().parent == Path(__file__).resolve().parents[1] / "experiments"
        return cores if entry and cores > 1 and units >= 2 * cores and work >= PER_PROCESS_WORK * cores else 1

    return handoff.rank_zero("devices", choose)


def evaluation_grid(model, sampler: str, steps: int):
    """t, alpha, sigma of every denoiser evaluation; a pipeline model reads them from its own scheduler."""
    if hasattr(model, "evaluation_grid"):
        return model.evaluation_grid(sampler, steps)
    _, eval_times = get_sampler(sampler, model.schedule.kind)
    times = eval_times(model.schedule.grid(steps))
    alpha, sigma = model.schedule.alpha_sigma(torch.tensor(times, dtype=torch.float64))
    return times, alpha.tolist(), sigma.tolist()


def model_device(model) -> torch.device:
    return next(iter([*model.parameters(), *model.buffers()]), torch.empty(0)).device


def run_generation(*, out: Path, **kwargs) -> RunResult:
    """Generate the settings into a run directory under `out` (resume, --fresh, devices, the store) inside a
    handoff launch (`handoff.launch`: where the run directory goes; an experiment's command has opened one already)."""
    with handoff.launch(Path(out).parent):
        return _claim_and_generate(out=out, **kwargs)


def _claim_and_generate(
    *,
    experiment: str,
    settings: list[Setting],
    model,
    model_spec: dict,
    sampler: str,
    steps: int,
    guidance: float,
    out: Path,
    config: dict,
    fresh: bool = False,
    devices: int | None = None,
    accelerator: str = "auto",
    strategy: str = "auto",
    num_nodes: int = 1,
    condition_names=None,
    progress: bool = True,
    reference: str | None = None,
) -> RunResult:
    check_hardware(accelerator, devices, num_nodes)
    # every method checked and its defaults filled in before anything exists: the store records what ran
    settings = [replace(s, method=method_params(s.method)) for s in settings]
    for s in settings:
        resolve(s.method).validate_model(model)  # e.g. cads on a model without a condition embedding
    specs = [s.protected for s in settings if s.protected]
    inputs = {}
    for p in sorted({spec["path"] for spec in specs}):  # refuse a wrong reference set before anything is created
        check_references(load_reference_set(p), model.sample_shape, p)
        inputs[p] = file_digest(p)  # the contents, not only the path, guard a resume
    content = dict(
        experiment=experiment, model=model_spec, sampler=sampler, steps=steps, guidance=guidance,
        settings=[s.to_dict() for s in settings], condition_names=condition_names,
    )
    if inputs:
        content["inputs"] = inputs
    times, alphas, sigmas = evaluation_grid(model, sampler, steps)  # an unknown sampler is refused here, before
    probe = model.to_images(torch.zeros(1, *model.sample_shape, device=model_device(model)))  # the run directory
    create_kwargs = dict(
        experiment=experiment, settings=settings, times=times, alphas=alphas, sigmas=sigmas,
        sample_shape=tuple(model.sample_shape), image_shape=None if probe is None else tuple(probe.shape[1:]),
        content=content, config=config, reference=reference,
    )
    with claimed(out, content, fresh=fresh) as run_dir:
        return _generate(run_dir, experiment=experiment, settings=settings, model=model, specs=specs, sampler=sampler,
                         steps=steps, guidance=guidance, create_kwargs=create_kwargs, devices=devices,
                         accelerator=accelerator, strategy=strategy, num_nodes=num_nodes, progress=progress)


def _generate(run_dir: Path, *, experiment, settings, model, specs, sampler, steps, guidance, create_kwargs, devices,
              accelerator, strategy, num_nodes, progress) -> RunResult:
    """Generate the units not yet (intact) in the store of `run_dir`, which this command holds."""
    path = run_dir / "store.zarr"
    units = plan(settings)
    done = {tuple(u) for u in handoff.rank_zero("done", lambda: resumable(path, settings))}
    todo = [u for u in units if (u.setting.name, u.index) not in done]
    if not todo:
        return RunResult(run_dir, path, len(units), len(done), not is_child_rank())
    protected = ProtectedLoader(specs) if specs else None
    on_cpu = accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available())
    if on_cpu and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(1)  # small batches: 1 thread per process beat 2 by 1.5-6x here; scale with processes
    devices = resolve_devices(devices, on_cpu, len(todo), steps * sum(u.setting.unit_size for u in todo))
    if strategy == "auto" and devices not in (1, "auto"):
        strategy = "ddp"
    trainer = L.Trainer(
        accelerator=accelerator, devices=devices, num_nodes=num_nodes, strategy=strategy, logger=False,
        enable_checkpointing=False, enable_model_summary=False, enable_progress_bar=progress,
        callbacks=[StoreWriter(path, create_kwargs)],
    )
    module = SpellPredict(model, sampler=sampler, steps=steps, guidance=guidance, protected=protected)
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if main_thread else None
    try:
        trainer.predict(module, datamodule=UnitData(todo), return_predictions=False)
    except (SystemExit, _Terminated) as stop:  # Lightning answers Ctrl-C with sys.exit(1) after the writer flushed
        if isinstance(stop, SystemExit) and trainer.state.status.value != "interrupted":
            raise
        finished = sum(int(store.completed_units(path, s.name).sum()) for s in settings) if path.exists() else 0
        reason = "interrupted (SIGTERM)" if isinstance(stop, _Terminated) else "interrupted (Ctrl-C)"
        raise RunInterrupted(experiment, path, finished, len(units), reason) from None
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
    return RunResult(run_dir, path, len(units), len(done), trainer.is_global_zero, trainer.world_size)
