"""Flows for each stage and for the whole pipeline; ``netadapt STAGE`` and deployments run these."""

from __future__ import annotations

from typing import Any

from prefect import flow

from netadapt_core.config import load_params
from tasks import stages

from .adapt import adapt_flow


@flow(name="netadapt-pretrain", log_prints=True)
def pretrain_flow(params_path: str | None = "params.yaml", overrides: list[str] | None = None) -> dict[str, Any]:
    return stages.pretrain(load_params(params_path, overrides))


@flow(name="netadapt-lut", log_prints=True)
def lut_flow(params_path: str | None = "params.yaml", overrides: list[str] | None = None,
             check: bool = False) -> dict[str, Any]:
    params = load_params(params_path, overrides)
    return stages.check_lut(params) if check else stages.build_lut(params)


@flow(name="netadapt-finetune", log_prints=True)
def finetune_flow(params_path: str | None = "params.yaml", overrides: list[str] | None = None) -> list[dict[str, Any]]:
    return stages.finetune(load_params(params_path, overrides))


@flow(name="netadapt-report", log_prints=True)
def report_flow(params_path: str | None = "params.yaml", overrides: list[str] | None = None) -> dict[str, Any]:
    return stages.report(load_params(params_path, overrides))


@flow(name="netadapt-pipeline", log_prints=True)
def pipeline_flow(params_path: str | None = "params.yaml", overrides: list[str] | None = None) -> dict[str, Any]:
    """pretrain -> lut -> adapt -> finetune -> report."""
    pretrain_flow(params_path, overrides)
    lut_flow(params_path, overrides)
    adapt_flow(params_path, overrides)
    finetune_flow(params_path, overrides)
    return report_flow(params_path, overrides)


FLOWS = {
    "pretrain": pretrain_flow,
    "lut": lut_flow,
    "adapt": adapt_flow,
    "finetune": finetune_flow,
    "report": report_flow,
    "all": pipeline_flow,
}
