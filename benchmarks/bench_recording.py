"""Cost of recording every step into the run store, against the same generation without recording.

    python benchmarks/bench_recording.py [--model digits|gmm] [--repeats 3]

Same seeds, same SPELL settings (the `mixed` protocol: intra-batch + memory), same model, one thread as the run
layer uses on CPU; (a) generates each work unit without the recorder and without a store, (b) runs the real path:
recorder on, per-unit fields derived, the StoreWriter creating the store and writing each unit by region. Prints the ratio b / a (issue target: <= 1.05).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import torch

from types import SimpleNamespace

from spell_lab.models import load_model
from spell_lab.repellency import Memory, Spell
from spell_lab.run.launch import evaluation_grid
from spell_lab.run.lightning import StoreWriter
from spell_lab.methods import spell_method
from spell_lab.plan import Setting, plan
from spell_lab.run.unit import run_unit
from spell_lab.samplers import generate


def without_recording(model, units, sampler, steps, guidance):
    for u in units:
        memory = Memory()
        spell = Spell.build(u.setting.radius, u.setting.overcomp, intra_batch=True, memory=memory)
        for _, seeds in u.rounds:
            cond = torch.full((len(seeds),), u.condition)
            x0 = generate(model, cond, seeds, sampler=sampler, steps=steps, guidance=guidance, spell=spell, record=False).x0
            memory.add(x0, cond)


def with_store(model, units, sampler, steps, guidance, path: Path, settings):
    """The run layer's own path: run_unit (recorder on) and the StoreWriter (store created up front, async writes)."""
    times, alphas, sigmas = evaluation_grid(model, sampler, steps)
    probe = model.to_images(torch.zeros(1, *model.sample_shape))
    content = dict(experiment="bench", model=model.name, sampler=sampler, steps=steps, guidance=guidance)
    writer = StoreWriter(path, dict(experiment="bench", settings=settings, times=times, alphas=alphas, sigmas=sigmas,
                                    sample_shape=model.sample_shape, image_shape=None if probe is None else probe.shape[1:],
                                    content=content, config={}))
    trainer = SimpleNamespace(is_global_zero=True, strategy=SimpleNamespace(barrier=lambda *a: None))
    writer.setup(trainer, None, "predict")
    for u in units:
        data = run_unit(model, u, sampler=sampler, steps=steps, guidance=guidance)
        writer.write_on_batch_end(trainer, None, (u, data), None, None, 0)
    writer.on_predict_end(trainer, None)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="digits")
    ap.add_argument("--radius", type=float, default=25.0)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)  # as the run layer does on CPU
    model = load_model(args.model)
    steps, sampler, guidance = args.steps or model.default_steps, model.default_sampler, model.default_guidance
    conditions = tuple(range(max(model.num_classes, 1)))
    settings = [Setting("mixed", spell_method(args.radius, intra_batch=True, memory=True), rounds=(2,) * 4,
                        conditions=conditions)]
    units = plan(settings)
    a, b = [], []
    for _ in range(args.repeats):  # interleaved, best of each: load on the machine hits both alike
        t = time.perf_counter()
        without_recording(model, units, sampler, steps, guidance)
        a.append(time.perf_counter() - t)
        tmp = Path(tempfile.mkdtemp())
        t = time.perf_counter()
        with_store(model, units, sampler, steps, guidance, tmp / "store.zarr", settings)
        b.append(time.perf_counter() - t)
        shutil.rmtree(tmp)
    n = sum(s.samples for s in settings)
    print(f"model {args.model}, sampler {sampler}, {steps} steps, {n} samples, best of {args.repeats}")
    print(f"(a) generation without recording: {min(a):.2f} s")
    print(f"(b) recording every step + store: {min(b):.2f} s")
    print(f"ratio b / a: {min(b) / min(a):.3f}  (target <= 1.05)")


if __name__ == "__main__":
    main()
