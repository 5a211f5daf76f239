"""Flows for each stage and for the whole pipeline; ``netadapt STAGE`` and deployments run these."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prefect import flow

from netadapt_core.config import load_params
from netadapt_core.export import MANIFEST
from netadapt_core.stages import check_inputs
from tasks import stages

from .adapt import adapt_flow
from .runners import check_runner
from .tracking import AdaptTracker, check_tracking


@flow(name="netadapt-pretrain", log_prints=True)
def pretrain_flow(params_path: str | None = "params.yaml", overrides: list[str] | None = None) -> dict[str, Any]:
    return stages.pretrain(load_params(params_path, overrides))


@flow(name="netadapt-lut", log_prints=True)
def lut_flow(params_path: str | None = "params.yaml", overrides: list[str] | None = None,
             check: bool = False) -> dict[str, Any]:
    params = load_params(params_path, overrides)
    return stages.check_lut(params) if check else stages.build_lut(params)


@flow(name="netadapt-data", log_prints=True)
def data_flow(params_path: str | None = "params.yaml", overrides: list[str] | None = None) -> dict[str, Any]:
    return stages.data(load_params(params_path, overrides))


@flow(name="netadapt-finetune", log_prints=True)
def finetune_flow(params_path: str | None = "params.yaml", overrides: list[str] | None = None) -> list[dict[str, Any]]:
    params = load_params(params_path, overrides)
    check_tracking(params.tracking)
    results = stages.finetune(params)
    tracker = AdaptTracker.resume(params)
    if tracker and results:
        tracker.log_finetuned(results, results[-1]["checkpoint"])
    return results


@flow(name="netadapt-export", log_prints=True)
def export_flow(params_path: str | None = "params.yaml", overrides: list[str] | None = None,
                check: bool = False) -> dict[str, Any]:
    """The final fine-tuned network as ONNX, torch.export and TorchScript files, each checked against
    PyTorch on test images; logged as artifacts (``export/``) of the adaptation's MLflow run.
    ``check``: re-check the files already exported, writing nothing."""
    params = load_params(params_path, overrides)
    check_tracking(params.tracking)
    result = stages.export(params, check=check)
    tracker = AdaptTracker.resume(params)
    if tracker and not check:
        out = Path(params.export.out_dir)
        tracker.log_files([out / name for name in [*result["files"], MANIFEST]], "export")
    return result


@flow(name="netadapt-report", log_prints=True)
def report_flow(params_path: str | None = "params.yaml", overrides: list[str] | None = None) -> dict[str, Any]:
    params = load_params(params_path, overrides)
    check_tracking(params.tracking)
    metrics = stages.report(params)
    tracker = AdaptTracker.resume(params)
    if tracker:
        r = params.report
        plots = sorted(Path(r.plots_dir).glob("*.png")) if Path(r.plots_dir).is_dir() else []
        files = [Path(p) for p in (r.metrics, r.tradeoff, r.layers, r.lut_check, r.data, r.html, params.lut.path)]
        tracker.log_reports(files + plots)
    return metrics


@flow(name="netadapt-pipeline", log_prints=True)
def pipeline_flow(params_path: str | None = "params.yaml", overrides: list[str] | None = None) -> dict[str, Any]:
    """data -> pretrain -> lut -> adapt -> lut check -> finetune -> export -> report."""
    data_flow(params_path, overrides)
    pretrain_flow(params_path, overrides)
    lut_flow(params_path, overrides)
    adapt_flow(params_path, overrides)
    lut_flow(params_path, overrides, check=True)
    if finetune_flow(params_path, overrides):
        export_flow(params_path, overrides)
    else:
        print("export: skipped, the adaptation has no fine-tuned network (it ended before its first iteration)")
    return report_flow(params_path, overrides)


def checked(stage: str, stage_flow: Callable[..., Any]) -> Callable[..., Any]:
    """``stage_flow`` behind a check of the stage's inputs that runs before Prefect starts
    (``netadapt_core.stages.check_inputs``, and the worker pool): a bad input is refused with one
    line, before any measurement or training, instead of failing inside the flow run."""

    @functools.wraps(stage_flow)
    def run(params_path: str | None = "params.yaml", overrides: list[str] | None = None, **kwargs: Any) -> Any:
        params = load_params(params_path, overrides)
        if stage in ("adapt", "all"):
            check_runner(params.adapt)
        check_inputs(stage, params, check=kwargs.get("check", False))
        return stage_flow(params_path, overrides, **kwargs)

    return run


# what ``netadapt STAGE`` runs: each stage's flow, its inputs checked first
FLOWS = {
    stage: checked(stage, stage_flow)
    for stage, stage_flow in {
        "data": data_flow,
        "pretrain": pretrain_flow,
        "lut": lut_flow,
        "adapt": adapt_flow,
        "finetune": finetune_flow,
        "export": export_flow,
        "report": report_flow,
        "all": pipeline_flow,
    }.items()
}
