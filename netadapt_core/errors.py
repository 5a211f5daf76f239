"""One family for every error a user can fix: ``NetAdaptError``.

Each subclass also derives from the built-in exception it refines (a ``ConfigError`` is a
``ValueError``), so callers that catch the built-in keep working. The CLI catches ``NetAdaptError``
alone and prints its message on one line (``-v`` adds the traceback); anything else is a bug in
netadapt and shows as one, traceback included.

Messages name the problem and the fix. Subclasses live beside the code that raises them
(``config.ConfigError``, ``lut.LutError``, ``platforms.PlatformError``...).
"""

from __future__ import annotations

import re


def one_line(text: str) -> str:
    """``text`` on one line: line breaks (and the indentation after them) become ``"; "``."""
    return re.sub(r"\s*\n\s*", "; ", text.strip())


class NetAdaptError(Exception):
    """Base of every error a user can fix: bad settings, missing or damaged files, unreachable budgets.

    The message is kept on one line (a wrapped exception's multi-line text is joined with ``"; "``):
    the CLI prints it as the one line ``netadapt STAGE: error: ...``.
    """

    def __init__(self, *args: object) -> None:
        if args and isinstance(args[0], str):
            args = (one_line(args[0]), *args[1:])
        super().__init__(*args)


class StageOrderError(NetAdaptError, FileNotFoundError):
    """A stage needs the output of an earlier stage that has not run (the message names it)."""


class ProposalsFailedError(NetAdaptError, RuntimeError):
    """Every proposal of an iteration failed; finished work is kept and a re-run resumes."""


class OutputError(NetAdaptError, OSError):
    """An output file cannot be written (its folder is a file, no permission, the disk is full)."""
