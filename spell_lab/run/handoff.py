"""Rank 0's decisions, handed to the DDP ranks it launches: one mechanism for every experiment.

Lightning's DDP launcher runs the command line again in a child process per rank. Whatever rank 0 decided before
the launch (the run directory, the number of processes, a calibrated radius grid, a radius rule's result) must
reach those ranks bit for bit and without being computed again. An experiment's command opens one `launch(folder)`
around its generation, `folder` being where its run directory goes (the parent of `--out`, or runs/<experiment>):
the run directory cannot hold the files, since it is itself one of the decisions (a calibrated grid names it, and
--fresh picks the next free one). Inside it, `rank_zero(key, compute)` computes on rank 0 and writes the JSON value
to `folder/.handoff-<rank 0's pid>/<key>.json`; a launched rank, running the same command line, opens the same
folder and reads its parent's file instead of computing. Rank 0 removes its files when the launch ends (the ranks
have read them before they join the run it waits for). No environment variable carries a decision.
"""

from __future__ import annotations

import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable

_OPEN: list[Path] = []  # the folder of the launch this process is in (at most one: an inner launch joins it)
_READY: set[Path] = set()  # rank 0's own handoff folders emptied in this launch


def is_child_rank() -> bool:
    """A process Lightning's DDP launcher started (local rank > 0, or a node other than the first)."""
    return int(os.environ.get("LOCAL_RANK", "0")) != 0 or int(os.environ.get("NODE_RANK", "0")) != 0


def _folder(pid: int) -> Path | None:
    return _OPEN[0] / f".handoff-{pid}" if _OPEN else None


@contextmanager
def launch(folder):
    """Hand rank 0's decisions made in this block through files in `folder` (where the run directory goes). A
    launch already open (an experiment's command around `run_generation`) keeps its folder; rank 0's files are
    removed when the outermost launch ends."""
    if _OPEN:
        yield
        return
    _OPEN.append(Path(folder))
    try:
        yield
    finally:
        own = _folder(os.getpid())
        _OPEN.clear()
        if own in _READY:
            _READY.discard(own)
            shutil.rmtree(own, ignore_errors=True)


def received(key: str) -> Any | None:
    """On a launched rank, the value rank 0 handed over under `key`; None on rank 0, outside a launch, or where none
    was handed."""
    if not is_child_rank() or not _OPEN:
        return None
    path = _folder(os.getppid()) / f"{key}.json"
    return json.loads(path.read_text()) if path.exists() else None


def hand(key: str, value: Any) -> Any:
    """On rank 0 inside a launch: hand `value` (JSON data) to the ranks this process launches; returns it."""
    own = _folder(os.getpid())
    if own is not None and not is_child_rank():
        if own not in _READY:  # emptied on first use: a dead process with the same pid may have left one
            shutil.rmtree(own, ignore_errors=True)
            own.mkdir(parents=True)
            _READY.add(own)
        tmp = own / f"{key}.tmp"
        tmp.write_text(json.dumps(value))
        tmp.replace(own / f"{key}.json")
    return value


def rank_zero(key: str, compute: Callable[[], Any]) -> Any:
    """Rank 0 computes the value and hands it over; a launched rank receives it (computing only when rank 0 did not
    hand one, e.g. a rank on another node)."""
    got = received(key)
    return got if got is not None else hand(key, compute())
