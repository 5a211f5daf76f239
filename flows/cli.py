"""``netadapt``: the command line. Each stage reads ``params.yaml`` (``--params``) plus
``--set section.key=value`` overrides, and fails before any work on a bad setting.

    netadapt all                      # data, pretrain, lut, adapt, lut check, finetune, export, report
    netadapt lut --check              # LUT estimate against measurement
    netadapt export                   # the fine-tuned network as ONNX, torch.export, TorchScript, checked
    netadapt adapt --set adapt.budget_ratio=0.6
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
import traceback
from pathlib import Path

from netadapt_core.adapt import STATE_FILE, RunState, check_pretrained, open_estimator
from netadapt_core.checkpoint import load_checkpoint
from netadapt_core.config import Params, load_params
from netadapt_core.errors import NetAdaptError, StageOrderError
from netadapt_core.export import MANIFEST
from netadapt_core.platforms import ALLOCATOR_ENV
from netadapt_core.stages import finetuned_checkpoint
from netadapt_core.training import resolve_device

from .dvc_lock import record_in_dvc
from .tracking import check_tracking

EXIT_UNMET = 3  # the adaptation ran to its end (files and reports written) without meeting a budget
STAGES = ("data", "pretrain", "lut", "adapt", "finetune", "export", "report", "all")


def _reexec_with_allocator_settings(argv: list[str]) -> None:
    """Latency measurements need a steady allocator; glibc reads its settings only at start-up."""
    if all(os.environ.get(k) == v for k, v in ALLOCATOR_ENV.items()) or os.environ.get("NETADAPT_NO_REEXEC"):
        return
    env = {**os.environ, **ALLOCATOR_ENV}
    os.execve(sys.executable, [sys.executable, "-m", "flows.cli", *argv], env)


def prefect_environment() -> None:
    """Prefect keeps its database and results inside the project (``.prefect/``, ignored by git)
    unless the user points PREFECT_HOME or PREFECT_API_URL elsewhere."""
    os.environ.setdefault("PREFECT_HOME", str(Path.cwd() / ".prefect"))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")


def preflight(stage: str, params: Params) -> None:
    """Check a stage's inputs before starting Prefect, so a missing or broken file is reported
    plainly (the stages check again; this only front-loads the common mistakes)."""
    if stage in ("adapt", "finetune", "export", "report", "all"):
        check_tracking(params.tracking)
    devices = {"pretrain": [("pretrain.device", params.pretrain.device)],
               "adapt": [("adapt.train_device", params.adapt.train_device)] if params.adapt.runner != "dask" else [],
               "finetune": [("finetune.device", params.finetune.device)]}
    for name, value in [d for s, found in devices.items() if stage in (s, "all") for d in found]:
        resolve_device(value, name)  # a GPU this machine lacks: refused before any work
    if stage == "adapt":
        if not Path(params.pretrain.checkpoint).is_file():
            raise StageOrderError(f"pretrained checkpoint {params.pretrain.checkpoint} (pretrain.checkpoint) does not "
                                  "exist; run `netadapt pretrain` first (or `netadapt all`)")
        _, arch, meta = load_checkpoint(params.pretrain.checkpoint)
        check_pretrained(params, arch, meta)
        open_estimator(params, arch, tuple(meta["input_shape"]))
    if stage in ("finetune", "report"):
        state = Path(params.adapt.run_dir) / STATE_FILE
        if not state.is_file():
            raise StageOrderError(f"no adaptation in {params.adapt.run_dir}; run `netadapt adapt` first")
    if stage == "report":
        load_checkpoint(params.pretrain.checkpoint)
    if stage == "export":
        load_checkpoint(finetuned_checkpoint(params)[0])


def run_stage(stage: str, params_path: str | None, overrides: list[str], check: bool = False) -> None:
    """Run the stage's Prefect flow: the one path by which every stage runs."""
    prefect_environment()
    from .pipeline import FLOWS

    kwargs = {"check": True} if stage in ("lut", "export") and check else {}
    started = time.perf_counter()
    FLOWS[stage](params_path, overrides, **kwargs)
    print(f"== netadapt {stage} done in {time.perf_counter() - started:.0f}s", flush=True)


def unmet_budget(params: Params) -> str | None:
    """Why the adaptation in ``adapt.run_dir`` ended without meeting its budgets, or None if it met them."""
    path = Path(params.adapt.run_dir) / STATE_FILE
    if not path.is_file():
        return None
    state = RunState.load(path)
    if state.status in ("unmet", "max_iterations"):
        return state.reason or state.status
    return None


EXIT_STOPPED = 130  # stopped on request (Ctrl-C, SIGTERM): files whole, the next run resumes


def _stop_on_request() -> None:
    """SIGTERM stops like Ctrl-C (KeyboardInterrupt: the stages unwind, every write is atomic);
    a second signal of either kind ends the process at once."""
    received = []

    def handler(signum, _frame):
        received.append(signum)
        if len(received) > 1:
            os._exit(EXIT_STOPPED)
        raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="netadapt", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stage", choices=STAGES)
    parser.add_argument("--params", default=None, help="settings file (default: ./params.yaml if present)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--check", action="store_true", help="with lut: compare estimates to measurements; "
                        "with export: check the exported files (sha256, outputs) without rewriting them")
    parser.add_argument("-v", "--verbose", action="store_true", help="show the traceback of an error")
    args = parser.parse_args(argv)
    params_path = args.params or ("params.yaml" if Path("params.yaml").is_file() else None)
    _stop_on_request()
    try:
        params = load_params(params_path, args.overrides)
        preflight(args.stage, params)  # fail before any work
        if args.stage in ("lut", "adapt", "all"):
            _reexec_with_allocator_settings(argv)
        run_stage(args.stage, params_path, args.overrides, args.check)
        if not (args.check and args.stage == "export"):  # export --check writes nothing
            record_in_dvc(f"{args.stage} --check" if args.check else args.stage, params_path, args.overrides,
                          export_done=Path(params.export.out_dir, MANIFEST).is_file())
        if args.stage in ("adapt", "all"):
            reason = unmet_budget(params)
            if reason:
                print(f"netadapt {args.stage}: budget not met: {reason}"
                      + (" (the closest network is fine-tuned and reported)" if args.stage == "all" else ""),
                      file=sys.stderr)
                return EXIT_UNMET
    except KeyboardInterrupt:
        print(f"netadapt {args.stage}: stopped on request; every file written is whole, and running the "
              "same command again resumes", file=sys.stderr)
        return EXIT_STOPPED
    except NetAdaptError as exc:  # a problem the user can fix: one line (-v: the traceback too)
        if args.verbose:
            traceback.print_exc()
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"netadapt {args.stage}: error: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
