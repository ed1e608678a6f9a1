"""Every command's parsing and its error convention, on one library (jsonargparse).

`parser(prog, description)` is the parser of every `python -m spell_lab...` command (experiments, re-renders, the
store viewer); `run(main, argv)` runs one: a user error (a bad flag, a ValueError such as a refused configuration, a
missing file) prints one line `error: ...` on stderr and returns exit code 2. Commands check their input before they
create anything, so a refused command leaves nothing behind.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable

from jsonargparse import ActionConfigFile, ArgumentParser

USER_ERRORS = (argparse.ArgumentError, ValueError, FileNotFoundError)


def parser(prog: str, description: str, *, config_help: str | None = None) -> ArgumentParser:
    """A parser that raises on a bad flag (turned into one line by `run`); `config_help`: add `--config FILE.yaml`."""
    p = ArgumentParser(prog=prog, description=description, env_prefix="SPELL_LAB", exit_on_error=False)
    if config_help is not None:
        p.add_argument("--config", action=ActionConfigFile, help=config_help)
    return p


def one_line(err: BaseException) -> str:
    text = " ".join(line.strip() for line in str(err).splitlines() if line.strip())
    return f"{text} (see --help)" if isinstance(err, argparse.ArgumentError) else text


def run(main: Callable[[list[str] | None], int], argv: list[str] | None = None,
        handlers: dict[type, Callable[[BaseException], int]] | None = None) -> int:
    """main(argv); a user error: one line on stderr, exit code 2. `handlers`: more exceptions, each mapped to the
    exit code its handler returns (e.g. an interrupted run)."""
    handlers = handlers or {}
    try:
        return main(argv)
    except USER_ERRORS as err:
        print(f"error: {one_line(err)}", file=sys.stderr)
        return 2
    except tuple(handlers) as err:
        return next(h for t, h in handlers.items() if isinstance(err, t))(err)
