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
import math
import numbers
import os
import re
import sys
from pathlib import Path
from typing import Callable

from jsonargparse import ActionConfigFile, ArgumentParser

USER_ERRORS = (argparse.ArgumentError, ValueError, FileNotFoundError)
MACHINE_FAULTS = (errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.ENOMEM)  # exit 1; other OSErrors are the target's: 2
OS_HINTS = {
    errno.ENOSPC: "the disk is full; free space (finished work is kept) and run the same command again",
    errno.EDQUOT: "the disk quota is exceeded; free space (finished work is kept) and run the same command again",
    errno.EACCES: "choose another path (--out) or fix its permissions",
    errno.EPERM: "choose another path (--out) or fix its permissions",
    errno.EROFS: "the file system is read-only; choose another --out",
    errno.ENOTDIR: "a part of the path is a file; give a directory",
    errno.EEXIST: "it exists and is not a directory; give a directory",
    errno.EISDIR: "it is a directory; give a file",
}


SEED_LIMIT = 2**63  # torch's generators take seeds below 2**64; sample i uses seed + i


def _at_least(n: int):
    return (lambda v: v >= n), f">= {n}"


_FINITE_POSITIVE = (lambda v: math.isfinite(v) and v > 0), "> 0 (and finite)"
_FINITE_NONNEGATIVE = (lambda v: math.isfinite(v) and v >= 0), ">= 0 (and finite)"
_SEED = (lambda v: 0 <= v < SEED_LIMIT), "between 0 and 2**63 - 1"
# One range per flag (by its name), checked by every command's parser after parsing (`check_ranges`): a size of 0 is
# refused, never read as "the default". A command may ask for more (e.g. --per_condition >= 6 for k = 5 neighbours).
RANGES: dict[str, tuple[Callable[[float], bool], str]] = {
    **{name: _at_least(1) for name in (
        "steps", "classifier_steps", "per_condition", "per_class", "batch", "threads", "devices", "num_nodes",
        "set_size", "seed_sets", "resolution", "vae_steps", "vae_batch", "dit_steps", "dit_batch", "clf_steps",
        "clf_batch")},
    "calibration_per_condition": _at_least(2),
    "grid_size": _at_least(2),
    **{name: _FINITE_POSITIVE for name in ("radius", "overcomp", "lr", "scale", "vae_lr", "dit_lr", "clf_lr")},
    **{name: _FINITE_NONNEGATIVE for name in ("guidance", "guidance_grid", "radii", "default_guidance", "kl_weight")},
    **{name: _SEED for name in ("seed", "augment_seed")},
    "too_close": ((lambda v: 0 < v < 1), "a share strictly between 0 and 1"),
}
HINTS = {"guidance": "; 1 is the conditional model alone, 0 the unconditional one",
         "radius": "; SPELL off is another setting (the baseline group), not radius 0",
         "overcomp": "; 1 is the exact correction"}


def _numbers(value):
    """The numbers a flag's value holds (itself, a list's items, a dict's values); text and flags hold none."""
    if isinstance(value, bool) or value is None:
        return []
    if isinstance(value, numbers.Real):
        return [value]
    if isinstance(value, (list, tuple)):
        return [v for item in value for v in _numbers(item)]
    if isinstance(value, dict):
        return [v for item in value.values() for v in _numbers(item)]
    return []


def check_ranges(cfg) -> None:
    """Raise a ValueError naming the first flag outside its range (RANGES) and what it must be."""
    for name, (ok, text) in RANGES.items():
        bad = [v for v in _numbers(getattr(cfg, name, None)) if not ok(v)]
        if bad:
            got = bad[0] if len(_numbers(getattr(cfg, name))) == 1 else bad
            raise ValueError(f"--{name} must be {text} (got {got}){HINTS.get(name, '')}.")


TYPE_WORDS = {"int": "an integer", "float": "a finite number", "bool": "true or false", "str": "text",
              "dict": "a JSON object, e.g. '{\"a\": 1}'"}


def plain_type_error(err: argparse.ArgumentError, options: dict[str, str]) -> argparse.ArgumentError:
    """jsonargparse's type error (its Union subtypes, Python class names) as 'FLAG expects WHAT (got VALUE)'."""
    text = " ".join(str(err).split())
    key = re.match(r'Parser key "([^"]+)"( element \d+)?:', text)
    expected = re.search(r"Expected a <class '(\w+)'>", text)
    given = re.search(r"(?:Given value|Got value): (.*?)(?: \(see --help\))?$", text)
    if not (key and expected and given):
        return err
    flag = options.get(key.group(1), f"--{key.group(1)}")
    what = TYPE_WORDS.get(expected.group(1), expected.group(1))
    each = " for each value" if key.group(2) else ""  # a list flag: one element failed
    return argparse.ArgumentError(None, f"{flag} expects {what}{each} (got {given.group(1)!r})")


class Parser(ArgumentParser):
    """jsonargparse's parser, plus: type errors in plain words, and every flag's range checked (RANGES)."""

    def parse_args(self, *args, **kwargs):
        try:
            cfg = super().parse_args(*args, **kwargs)
        except argparse.ArgumentError as err:
            options = {a.dest: a.option_strings[-1] for a in self._actions if a.option_strings}
            raise plain_type_error(err, options) from None
        check_ranges(cfg)
        return cfg


def check_writable_dir(path, flag: str = "--out") -> None:
    """Refuse, creating nothing, a target folder that is a file or cannot be created or written by this user."""
    path = Path(path)
    existing = next(p for p in [path, *path.absolute().parents] if p.exists())
    if not existing.is_dir():
        raise ValueError(f"{flag} {path}: {existing} is a file; give a folder (it is created if missing).")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{flag} {path}: {existing} is not writable (read-only); choose another {flag}.")


def parser(prog: str, description: str, *, config_help: str | None = None) -> ArgumentParser:
    """A parser that raises on a bad flag (turned into one line by `run`); `config_help`: add `--config FILE.yaml`."""
    p = Parser(prog=prog, description=description, env_prefix="SPELL_LAB", exit_on_error=False)
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
