"""One record of what is current, shared by ``netadapt STAGE`` and ``dvc repro``.

After ``netadapt STAGE`` (or ``all``) finishes, the DVC stages it ran are committed to ``dvc.lock``
(``dvc commit``): ``dvc status`` then reports them up to date and ``dvc repro`` does not redo them;
a later change of code or settings re-runs exactly what it touches. Only where that record would be
true: in a DVC repository, with the settings DVC reads (``./params.yaml``, no ``--set``), and not
inside ``dvc repro`` (which records its stages itself). Anything else, or a failing ``dvc commit``,
is said in one line and changes nothing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import yaml

# the dvc.yaml stage a CLI stage writes where the names differ (``all``: every stage of dvc.yaml)
DVC_NAMES = {"lut --check": "lut_check"}


def record_in_dvc(stage: str, params_path: str | None, overrides: list[str], export_done: bool = True,
                  log: Callable[[str], None] = print) -> bool:
    """Commit the DVC stages that ``netadapt stage`` wrote; True when ``dvc.lock`` was updated."""
    root = Path.cwd()
    if os.environ.get("DVC_ROOT") or os.environ.get("DVC_STAGE"):
        return False  # running as a stage of `dvc repro`, which records it
    if not (root / "dvc.yaml").is_file() or not (root / ".dvc").is_dir():
        return False
    try:
        stages = list(yaml.safe_load((root / "dvc.yaml").read_text())["stages"])
    except (OSError, yaml.YAMLError, KeyError, TypeError) as exc:
        log(f"dvc: dvc.lock not updated: dvc.yaml cannot be read ({type(exc).__name__}: {exc})")
        return False
    names = stages if stage == "all" else [n for n in [DVC_NAMES.get(stage, stage)] if n in stages]
    names = [n for n in names if export_done or n != "export"]
    if not names:
        return False
    if overrides or params_path is None or Path(params_path).resolve() != (root / "params.yaml").resolve():
        log("dvc: dvc.lock not updated: these outputs were made with other settings than ./params.yaml "
            "(--params or --set), which `dvc repro` reads")
        return False
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    dvc = shutil.which("dvc", path=path)
    if dvc is None:
        log("dvc: not installed in this environment; dvc.lock not updated")
        return False
    done = subprocess.run([dvc, "commit", "--force", "--quiet", *names], cwd=root, capture_output=True, text=True,
                          timeout=900, check=False)
    if done.returncode != 0:
        why = (done.stderr.strip() or done.stdout.strip() or f"exit status {done.returncode}").splitlines()[-1]
        log(f"dvc: dvc.lock not updated ({why}); `dvc status` will show {', '.join(names)} as changed")
        return False
    log(f"dvc: {', '.join(names)} recorded in dvc.lock (`dvc status` sees them up to date)")
    return True
