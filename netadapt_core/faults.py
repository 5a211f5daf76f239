"""Named points where a test can kill the process (``SIGKILL``: no cleanup, as a crash or an OOM
kill would), to prove that a run resumes from any of them with nothing lost or half written.

``NETADAPT_FAULT=NAME`` kills at the first pass through point NAME, ``NAME@K`` at the K-th;
``NETADAPT_HANG`` (same form) hangs there instead, as a stuck worker would. With
``NETADAPT_FAULT_ONCE=PATH`` only the first process to create PATH is killed: the workers of a pool
all inherit the variables, and one dead worker (not each in turn) is the fault to test. Unset (always, outside
tests), a point costs two dictionary lookups.
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter

POINTS = (
    "plan-saved",          # an iteration's plan is saved, no proposal has run
    "proposal-trained",    # a proposal has trained, nothing of it is saved
    "proposal-saved",      # a proposal's checkpoint is saved, its record is not
    "pick-measured",       # the pick is measured, the iteration is not committed
    "iteration-saved",     # the iteration is committed (state saved), its hooks have not run
    "checkpoint-write",    # a checkpoint's temporary file is written, not yet renamed into place
    "file-write",          # any other file (state, records, LUT overlay) likewise
    "finetune-trained",    # long-term fine-tuning is done, its checkpoint is not saved
)
_passes: Counter = Counter()


def _due(variable: str, name: str) -> bool:
    spec = os.environ.get(variable)
    if not spec:
        return False
    target, _, nth = spec.partition("@")
    if target != name:
        return False
    _passes[variable, name] += 1
    return _passes[variable, name] == int(nth or 1)


def _claimed() -> bool:
    path = os.environ.get("NETADAPT_FAULT_ONCE")
    if not path:
        return True
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


def point(name: str) -> None:
    if _due("NETADAPT_FAULT", name) and _claimed():
        os.kill(os.getpid(), signal.SIGKILL)
    if _due("NETADAPT_HANG", name):  # a hung worker: never returns, in small interruptible sleeps
        while True:
            time.sleep(0.05)
