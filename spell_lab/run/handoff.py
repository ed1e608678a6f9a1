"""Rank 0's decisions, handed to the DDP ranks it launches: one mechanism for every experiment.

Lightning's DDP launcher runs the command line again in a child process per rank. Whatever rank 0 decided before
the launch (the run directory, the number of processes, a calibrated radius grid, a radius rule's result) must
reach those ranks bit for bit and without being computed again: `rank_zero(key, compute)` computes on rank 0 and
writes the JSON value to a file of this launch (`spell_lab-handoff-<rank 0's pid>` in the temporary directory,
removed when rank 0 exits); a launched rank reads the file of its parent instead of computing. No environment
variable carries a decision.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable


def is_child_rank() -> bool:
    """A process Lightning's DDP launcher started (local rank > 0, or a node other than the first)."""
    return int(os.environ.get("LOCAL_RANK", "0")) != 0 or int(os.environ.get("NODE_RANK", "0")) != 0


def _folder(pid: int) -> Path:
    return Path(tempfile.gettempdir()) / f"spell_lab-handoff-{pid}"


_OWN: list[Path] = []


def _own_folder() -> Path:
    """This process's folder, emptied on first use (a dead process with the same pid may have left one)."""
    if not _OWN:
        folder = _folder(os.getpid())
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        atexit.register(shutil.rmtree, folder, True)
        _OWN.append(folder)
    return _OWN[0]


def received(key: str) -> Any | None:
    """On a launched rank, the value rank 0 handed over under `key`; None on rank 0 or where none was handed."""
    if not is_child_rank():
        return None
    path = _folder(os.getppid()) / f"{key}.json"
    return json.loads(path.read_text()) if path.exists() else None


def hand(key: str, value: Any) -> Any:
    """On rank 0: hand `value` (JSON data) to the ranks this process launches; returns it."""
    if not is_child_rank():
        tmp = _own_folder() / f"{key}.tmp"
        tmp.write_text(json.dumps(value))
        tmp.replace(_own_folder() / f"{key}.json")
    return value


def rank_zero(key: str, compute: Callable[[], Any]) -> Any:
    """Rank 0 computes the value and hands it over; a launched rank receives it (computing only when rank 0 did not
    hand one, e.g. a rank on another node)."""
    got = received(key)
    return got if got is not None else hand(key, compute())
