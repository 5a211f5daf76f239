"""``netadapt``: the command line. Each stage reads ``params.yaml`` (``--params``) plus
``--set section.key=value`` overrides, and fails before any work on a bad setting.

    netadapt all                      # pretrain, lut, adapt, finetune, report
    netadapt lut --check              # LUT estimate against measurement
    netadapt adapt --set adapt.budget_ratio=0.6
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from .adapt import BudgetUnreachableError
from .checkpoint import CheckpointError
from .config import ConfigError, Params, load_params
from .data import DataMissingError
from .layers import UnsupportedLayerError
from .lut import LutError
from .platforms import ALLOCATOR_ENV

STAGES = ("pretrain", "lut", "adapt", "finetune", "report", "all")
USER_ERRORS = (
    ConfigError, DataMissingError, CheckpointError, LutError, BudgetUnreachableError, UnsupportedLayerError,
    FileNotFoundError, KeyError,
)


def _reexec_with_allocator_settings(argv: list[str]) -> None:
    """Latency measurements need a steady allocator; glibc reads its settings only at start-up."""
    if all(os.environ.get(k) == v for k, v in ALLOCATOR_ENV.items()) or os.environ.get("NETADAPT_NO_REEXEC"):
        return
    env = {**os.environ, **ALLOCATOR_ENV}
    os.execve(sys.executable, [sys.executable, "-m", "netadapt_core.cli", *argv], env)


def run_stage(stage: str, params: Params, check: bool = False) -> None:
    from . import pipeline

    if stage == "pretrain":
        pipeline.run_pretrain(params)
    elif stage == "lut":
        pipeline.run_lut_check(params) if check else pipeline.run_lut(params)
    elif stage == "adapt":
        pipeline.run_adapt(params)
    elif stage == "finetune":
        pipeline.run_finetune(params)
    elif stage == "report":
        pipeline.run_report(params)
    elif stage == "all":
        for step in ("pretrain", "lut", "adapt", "finetune", "report"):
            started = time.perf_counter()
            run_stage(step, params)
            print(f"== {step} done in {time.perf_counter() - started:.0f}s", flush=True)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="netadapt", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stage", choices=STAGES)
    parser.add_argument("--params", default=None, help="settings file (default: ./params.yaml if present)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--check", action="store_true", help="with lut: compare estimates to measurements")
    args = parser.parse_args(argv)
    params_path = args.params or ("params.yaml" if Path("params.yaml").is_file() else None)
    try:
        params = load_params(params_path, args.overrides)
        if args.stage in ("lut", "adapt", "all"):
            _reexec_with_allocator_settings(argv)
        run_stage(args.stage, params, args.check)
    except USER_ERRORS as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"netadapt {args.stage}: error: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
