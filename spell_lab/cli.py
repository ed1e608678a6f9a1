"""Every command's parsing and its error convention, on one library (jsonargparse).

`parser(prog, description)` is the parser of every `python -m spell_lab...` command (experiments, re-renders, the
store viewer); `run(main, argv)` runs one: a user error (a bad flag, a ValueError such as a refused configuration, a
missing file, an unwritable target) prints one line `error: ...` on stderr and returns exit code 2; a fault of the
machine (disk full, out of memory) prints one line and returns 1. Commands check their input before they create
anything, so a refused command leaves nothing behind; a fault keeps what was finished.
"""

from __future__ import annotations

import argparse
import errno
import sys
from typing import Callable

from jsonargparse import ActionConfigFile, ArgumentParser

USER_ERRORS = (argparse.ArgumentError, ValueError, FileNotFoundError)
MACHINE_FAULTS = (errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.ENOMEM)  # exit 1; other OSErrors are the target's: 2
OS_HINTS = {
    errno.ENOSPC: "the disk is full; free space (finished work is kept) and run the same command again",
    errno.EDQUOT: "the disk quota is exceeded; free space (finished work is kept) and run the same command again",
    errno.EACCES: "it is not writable; choose another --out or fix its permissions",
    errno.EPERM: "it is not writable; choose another --out or fix its permissions",
    errno.EROFS: "the file system is read-only; choose another --out",
    errno.ENOTDIR: "a part of the path is a file; give a directory",
    errno.EEXIST: "it exists and is not a directory; give a directory",
    errno.EISDIR: "it is a directory; give a file",
}


def parser(prog: str, description: str, *, config_help: str | None = None) -> ArgumentParser:
    """A parser that raises on a bad flag (turned into one line by `run`); `config_help`: add `--config FILE.yaml`."""
    p = ArgumentParser(prog=prog, description=description, env_prefix="SPELL_LAB", exit_on_error=False)
    if config_help is not None:
        p.add_argument("--config", action=ActionConfigFile, help=config_help)
    return p


def one_line(err: BaseException | str) -> str:
    text = " ".join(line.strip() for line in str(err).splitlines() if line.strip())
    return f"{text} (see --help)" if isinstance(err, argparse.ArgumentError) else text


def os_line(err: OSError) -> str:
    """An OSError as one line that names the file and says what to change."""
    where = f"{err.filename}: " if err.filename else ""
    hint = OS_HINTS.get(err.errno)
    return f"{where}{err.strerror or err}" + (f" ({hint})" if hint else "")


def run(main: Callable[[list[str] | None], int], argv: list[str] | None = None,
        handlers: dict[type, Callable[[BaseException], int]] | None = None) -> int:
    """main(argv); a user error: one line on stderr, exit code 2; a fault of the machine (disk full, out of
    memory): one line, exit code 1. `handlers`: more exceptions, each mapped to the exit code its handler returns
    (e.g. an interrupted run)."""
    handlers = handlers or {}
    try:
        return main(argv)
    except tuple(handlers) as err:
        return next(h for t, h in handlers.items() if isinstance(err, t))(err)
    except USER_ERRORS as err:
        print(f"error: {one_line(err)}", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"error: {one_line(os_line(err))}", file=sys.stderr)
        return 1 if err.errno in MACHINE_FAULTS else 2
    except MemoryError:
        print("error: out of memory; choose a smaller size (--quick, --per_condition, --batch) or a machine with more "
              "memory", file=sys.stderr)
        return 1
