"""Terminal output shared by ``edge-agent``, ``cloud-relay`` and ``scripts/demo.py``:
sub-command dispatch, a quiet end on a closed pipe, plain-text tables, text cut at word
boundaries."""

from __future__ import annotations

import argparse
import functools
import os
import shutil
import sys
import textwrap
from collections.abc import Callable, Collection, Sequence
from typing import ParamSpec

P = ParamSpec("P")

#: What a shell reports for a program killed by SIGPIPE (128 + 13), as ``seq 1 100000 |
#: head -1`` does. Not 0: the output was cut short, and a ``set -o pipefail`` script should
#: see that the same way it does for coreutils.
EXIT_CLOSED_PIPE = 141

SEP = "  "


def run_command(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run the sub-command's ``func`` (its ``set_defaults``); what it
    returns is the exit code."""
    args = parser.parse_args(argv)
    code: int = args.func(args)
    return code


def quiet_on_closed_pipe(main: Callable[P, int]) -> Callable[P, int]:
    """Wrap an entry point so ``... | head -1`` ends with :data:`EXIT_CLOSED_PIPE` and no
    traceback. Python ignores SIGPIPE, so a write to a closed pipe raises
    BrokenPipeError instead; it is not re-enabled (SIG_DFL) because these commands
    also write to sockets, where it would kill them silently (Python docs, "Note on
    SIGPIPE")."""

    @functools.wraps(main)
    def run(*args: P.args, **kwargs: P.kwargs) -> int:
        try:
            try:
                return main(*args, **kwargs)
            finally:
                sys.stdout.flush()  # with little output, the pipe error shows only here
        except BrokenPipeError:
            # The interpreter flushes stdout again at exit: point it at devnull first.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            return EXIT_CLOSED_PIPE

    return run


def line(cells: Sequence[str], widths: Sequence[int], *, right: Collection[int] = ()) -> str:
    """One row: each cell padded to its width (right-aligned for the indexes in ``right``),
    columns two spaces apart, no trailing blanks. Cells are not cut: use :func:`shorten`."""
    padded = (
        c.rjust(w) if i in right else c.ljust(w)
        for i, (c, w) in enumerate(zip(cells, widths, strict=True))
    )
    return SEP.join(padded).rstrip()


def table(
    headers: Sequence[str], rows: Sequence[Sequence[str]], *, right: Collection[int] = ()
) -> str:
    """Headers and rows, each column as wide as its widest cell."""
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    return "\n".join(line(r, widths, right=right) for r in [headers, *rows])


def shorten(text: str, width: int, *, placeholder: str = "…") -> str:
    """``text`` on one line, at most ``width`` characters, cut at a word boundary with
    ``placeholder`` at the end; a first word longer than ``width`` is cut inside it."""
    flat = " ".join(text.split())
    if len(flat) <= width:
        return flat
    cut = textwrap.shorten(flat, width, placeholder=placeholder)
    if cut == placeholder.strip():  # no whole word fits
        return flat[: max(width - len(placeholder), 0)] + placeholder
    return cut


def terminal_width(fallback: int) -> int:
    """Columns of the terminal (or ``$COLUMNS``); ``fallback`` when stdout is not one."""
    return shutil.get_terminal_size((fallback, 24)).columns
