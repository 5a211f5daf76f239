"""The export stage (``netadapt export``): the adaptation's final fine-tuned network as deployable
files (``netadapt_core.export``), or, with ``--check``, the files already there checked against it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..adapt import STATE_FILE, IterationRecord, RunState
from ..checkpoint import file_sha256, load_checkpoint
from ..config import Params
from ..errors import StageOrderError
from ..export import check_export, export_network, sample_images
from ..layers import channel_spec
from .common import Log


def finetuned_checkpoint(params: Params) -> tuple[Path, dict[str, Any], IterationRecord]:
    """The fine-tuned network of the adaptation's final iteration, as ``netadapt finetune`` wrote it.

    Returns (checkpoint path, its record in ``finetune.out_dir/results.json``, the iteration's record
    in the adaptation's ``state.json``). Raises
    ``StageOrderError`` naming the stage to run when there is none (or it is of another adaptation).
    """
    state_path = Path(params.adapt.run_dir) / STATE_FILE
    if not state_path.is_file():
        raise StageOrderError(f"no adaptation in {params.adapt.run_dir}; run `netadapt adapt`, then "
                              "`netadapt finetune` first")
    state = RunState.load(state_path)
    if not state.iterations:
        raise StageOrderError(
            f"the adaptation in {params.adapt.run_dir} ended ({state.status}: {state.reason}) before "
            "its first iteration: there is no adapted network to export"
        )
    last = state.iterations[-1]
    results_path = Path(params.finetune.out_dir) / "results.json"
    try:
        results = json.loads(results_path.read_text()) if results_path.is_file() else []
        tuned = {int(r["iteration"]): r for r in results}
        record = tuned.get(last.iteration)
        found = record is not None and Path(record["checkpoint"]).is_file()
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise StageOrderError(
            f"{results_path} is damaged ({type(exc).__name__}: {exc}). Fix: run `netadapt finetune` again"
        ) from None
    if not found:
        where = (f"{results_path} has iterations {sorted(tuned)}" if results_path.is_file()
                 else f"{results_path} does not exist")
        raise StageOrderError(
            f"no fine-tuned network of the adaptation's final iteration {last.iteration} ({where}); "
            "run `netadapt finetune` first"
        )
    return Path(record["checkpoint"]), record, last


def run_export(params: Params, log: Log = print, check: bool = False) -> dict[str, Any]:
    """Export the final fine-tuned network to ``export.out_dir`` (see the module docstring).

    ``check``: write nothing; check the files already there against the fine-tuned network.
    """
    path, record, iteration = finetuned_checkpoint(params)
    model, arch, _ = load_checkpoint(path)
    if channel_spec(load_checkpoint(iteration.checkpoint)[0]) != channel_spec(model):
        raise StageOrderError(
            f"the fine-tuned network {path} has other layer widths than the adaptation's iteration "
            f"{record['iteration']} in {params.adapt.run_dir} (it was fine-tuned from another adaptation); "
            "run `netadapt finetune` again"
        )
    cfg = params.export
    samples = sample_images(params, cfg.samples)
    if check:
        return check_export(cfg.out_dir, model, samples, cfg.rtol, cfg.atol, log)
    source = {
        "checkpoint": str(path), "checkpoint_sha256": file_sha256(path), "iteration": record["iteration"],
        "test_accuracy": record.get("test_accuracy"),
        "measured_ms": record.get("measured_ms"), "macs": record.get("macs"), "params": record.get("params"),
        "adapt_run_dir": params.adapt.run_dir,
    }
    log(f"export: {path} (iteration {record['iteration']}, test accuracy {record.get('test_accuracy')}) as "
        f"{', '.join(cfg.formats)} -> {cfg.out_dir}")
    return export_network(model, arch, samples, cfg, source, log)
