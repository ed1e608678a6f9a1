"""Lightning pieces: work units as data, a predict module that generates one unit per predict_step, and the
prediction writer that puts each unit into the run store (each rank writes only the regions of its own units)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import lightning as L
import zarr
from lightning.pytorch.callbacks import BasePredictionWriter
from torch.utils.data import DataLoader, Dataset

from .. import store
from ..protect import spec_key
from .unit import run_unit

CRASH_AFTER = "SPELL_LAB_CRASH_AFTER_UNITS"  # fault injection for the resume test: hard exit after N units
INTERRUPT_AFTER = "SPELL_LAB_INTERRUPT_AFTER_UNITS"  # fault injection: a signal to itself after N units,
INTERRUPT_SIGNAL = "SPELL_LAB_INTERRUPT_SIGNAL"  # SIGINT (Ctrl-C, the default) or SIGTERM


class Units(Dataset):
    def __init__(self, units):
        self.units = list(units)

    def __len__(self):
        return len(self.units)

    def __getitem__(self, i):
        return self.units[i]


def _as_is(unit):
    return unit


class UnitData(L.LightningDataModule):
    """Yields work units one at a time; under DDP Lightning shards them across ranks without repeats."""

    def __init__(self, units):
        super().__init__()
        self.units = units

    def transfer_batch_to_device(self, batch, device, dataloader_idx):
        return batch  # a work unit is a plan, not tensors: noise is drawn on the device from per-sample seeds

    def predict_dataloader(self):
        return DataLoader(Units(self.units), batch_size=None, collate_fn=_as_is, shuffle=False)


class SpellPredict(L.LightningModule):
    """predict_step(unit) = every round of one condition with the sampler and SPELL; returns the store's fields."""

    def __init__(self, model, *, sampler, steps, guidance, protected=None):
        super().__init__()
        self.model, self.sampler, self.steps, self.guidance = model, sampler, steps, guidance
        self.protected_loader = protected  # callable(device) -> shield source, or None

    def on_predict_start(self):
        self.protected = self.protected_loader(self.device) if self.protected_loader else {}

    def predict_step(self, unit, batch_idx):
        spec = unit.setting.protected
        protected = self.protected[spec_key(spec)] if spec else None
        data = run_unit(
            self.model, unit, sampler=self.sampler, steps=self.steps, guidance=self.guidance,
            protected=protected, device=self.device,
        )
        return unit, data


class StoreWriter(BasePredictionWriter):
    """Creates the store up front (rank 0, then a barrier) and writes finished units by region.

    Units are buffered and written `flush_units` at a time (consecutive units as one region per array: writing
    one unit at a time cost about 6% of generating it); each unit is marked complete only after its data. On Ctrl-C,
    SIGTERM or an error the buffer is written before the run stops (`on_exception`), so every finished unit is kept;
    only a hard crash loses the buffered units, which a re-run redoes.
    """

    def __init__(self, path: Path, create_kwargs: dict, flush_units: int = 8):
        super().__init__(write_interval="batch")
        self.path, self.create_kwargs, self.flush_units = Path(path), create_kwargs, flush_units
        self.root, self.buffer, self.written, self.seen = None, [], 0, 0

    def setup(self, trainer, pl_module, stage):
        if trainer.is_global_zero and not self.path.exists():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            store.create_store(self.path, **self.create_kwargs)
        trainer.strategy.barrier("spell_lab-store-created")
        self.root = zarr.open_group(str(self.path), mode="r+")

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0):
        unit, data = prediction
        self.buffer.append((unit, data))
        self.seen += 1
        if len(self.buffer) >= self.flush_units or os.environ.get(CRASH_AFTER):
            self.flush()
        if os.environ.get(CRASH_AFTER) and self.written >= int(os.environ[CRASH_AFTER]):
            os._exit(17)  # a crash, not a clean stop: no teardown beyond the units already written
        if os.environ.get(INTERRUPT_AFTER) and self.seen == int(os.environ[INTERRUPT_AFTER]):
            sig = getattr(signal, os.environ.get(INTERRUPT_SIGNAL, "SIGINT"))
            os.kill(os.getpid(), sig)  # as if the user pressed Ctrl-C (or the job was stopped), units still buffered

    def flush(self):
        by_setting = {}
        for unit, data in self.buffer:
            by_setting.setdefault(unit.setting.name, []).append((unit.index, unit.start, data))
        for name, units in by_setting.items():
            store.write_units(self.root, name, units)
        self.written += len(self.buffer)
        self.buffer = []

    def on_predict_end(self, trainer, pl_module):
        self.flush()
        trainer.strategy.barrier("spell_lab-units-written")  # rank 0 analyses only once every rank has written

    def on_exception(self, trainer, pl_module, exception):
        if self.root is not None and self.buffer:
            self.flush()  # Ctrl-C, SIGTERM or an error: the finished units are written and marked complete
