"""One family for every error a user can fix: ``NetAdaptError``.

Each subclass also derives from the built-in exception it refines (a ``ConfigError`` is a
``ValueError``), so callers that catch the built-in keep working. The CLI catches ``NetAdaptError``
alone and prints its message on one line (``-v`` adds the traceback); anything else is a bug in
netadapt and shows as one, traceback included.

Messages name the problem and the fix. Subclasses live beside the code that raises them
(``config.ConfigError``, ``lut.LutError``, ``platforms.PlatformError``...).
"""

from __future__ import annotations


class NetAdaptError(Exception):
    """Base of every error a user can fix: bad settings, missing or damaged files, unreachable budgets."""


class StageOrderError(NetAdaptError, FileNotFoundError):
    """A stage needs the output of an earlier stage that has not run (the message names it)."""


class ProposalsFailedError(NetAdaptError, RuntimeError):
    """Every proposal of an iteration failed; finished work is kept and a re-run resumes."""
