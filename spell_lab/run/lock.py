"""One writer per run directory (docs/design.md section 5): a command that generates into a run directory holds
`RUN_DIR/.spell_lab.lock` (filelock: an flock on Linux, which the kernel releases when the holder dies, so the lock of
a killed command is taken over, never stale) while it decides what to generate and generates it. A second command
into the same directory says so in one line and waits for the first; then it sees the finished store and resumes it
(usually: nothing left to do). Only the launching process (DDP's rank 0) holds it; the ranks it launches write their
own regions under it. In one process the lock is reentrant, so a notebook or a test may run into a directory again.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from filelock import FileLock, Timeout

LOCK_NAME = ".spell_lab.lock"
_LOCKS: dict[Path, FileLock] = {}  # one lock object per directory in this process: reentrant


def _lock_of(run_dir: Path) -> FileLock:
    key = run_dir.resolve()
    if key not in _LOCKS:
        _LOCKS[key] = FileLock(str(key / LOCK_NAME), thread_local=False)
    return _LOCKS[key]


@contextmanager
def holding(run_dir: Path, *, wait: bool = True) -> Iterator[None]:
    """Hold the run directory's lock (creating the directory); another process holding it: one line on stderr, then
    wait (wait=False: refuse with a ValueError that says so)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = _lock_of(run_dir)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        if not wait:
            raise ValueError(f"another command is writing into {run_dir}; wait for it to finish or choose another "
                             "--out.") from None
        print(f"another command is writing into {run_dir}; waiting for it to finish (Ctrl-C stops waiting, nothing "
              "is lost)", file=sys.stderr, flush=True)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()
