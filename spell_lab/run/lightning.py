"""Lightning pieces: work units as data, a predict module that generates one unit per predict_step, and the
prediction writer that puts each unit into the run store (each rank writes only the regions of its own units)."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import BasePredictionWriter
from torch.utils.data import DataLoader, Dataset

from .. import store
from .unit import run_unit

CRASH_AFTER = "SPELL_LAB_CRASH_AFTER_UNITS"  # fault injection for the resume test: hard exit after N units


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
        protected = self.protected.get(unit.setting.protected) if unit.setting.protected else None
        data = run_unit(
            self.model, unit, sampler=self.sampler, steps=self.steps, guidance=self.guidance,
            protected=protected, device=self.device,
        )
        return unit, data


class StoreWriter(BasePredictionWriter):
    """Creates the store up front (rank 0, then a barrier) and writes each finished unit by region.

    Writes run on one background thread, so compressing and writing a unit overlaps generating the next; each
    unit still marks itself complete only after its data (store.write_unit), so a crash loses at most the units
    in flight, which a re-run redoes.
    """

    def __init__(self, path: Path, create_kwargs: dict):
        super().__init__(write_interval="batch")
        self.path, self.create_kwargs, self.written = Path(path), create_kwargs, 0
        self.pool, self.pending = None, []

    def setup(self, trainer, pl_module, stage):
        if trainer.is_global_zero and not self.path.exists():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            store.create_store(self.path, **self.create_kwargs)
        trainer.strategy.barrier("spell_lab-store-created")
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="spell_lab-store")

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0):
        unit, data = prediction
        self.pending = [f for f in self.pending if not f.done() or f.result()]  # a failed write raises here
        self.pending.append(self.pool.submit(store.write_unit, self.path, unit.setting.name, unit.index, unit.start, data))
        self.written += 1
        if os.environ.get(CRASH_AFTER) and self.written >= int(os.environ[CRASH_AFTER]):
            self.flush()
            os._exit(17)  # a crash, not a clean stop: no teardown beyond the units already written

    def flush(self):
        for f in self.pending:
            f.result()
        self.pending = []

    def on_predict_end(self, trainer, pl_module):
        self.flush()
        self.pool.shutdown()
