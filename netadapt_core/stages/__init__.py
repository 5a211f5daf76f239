"""The stages around the adaptation, one module a stage, as plain functions of the settings:
``data``, ``pretrain``, ``lut``, ``lut_check`` (``netadapt lut --check``), ``finetune``, ``export``,
``report``
(the adaptation itself is ``netadapt_core.adapt``). ``checks`` holds what runs before any stage
(inputs, outputs, a reachable budget) and ``common`` what they share. The Prefect tasks in
``tasks/stages.py`` wrap these; each reads and writes the files ``params.yaml`` names and returns a
small JSON-able record. Each DVC stage depends on its own module here.
"""

from __future__ import annotations

from .checks import OUTPUTS, check_budgets_reachable, check_inputs, load_run_state
from .common import Log, write_csv
from .data import run_data
from .export import finetuned_checkpoint, run_export
from .finetune import run_finetune
from .lut import run_lut
from .lut_check import error_summary, rank_correlation, run_lut_check
from .pretrain import run_pretrain
from .report import layer_widths, run_report

__all__ = [
    "OUTPUTS",
    "Log",
    "check_budgets_reachable",
    "check_inputs",
    "error_summary",
    "finetuned_checkpoint",
    "layer_widths",
    "load_run_state",
    "rank_correlation",
    "run_data",
    "run_export",
    "run_finetune",
    "run_lut",
    "run_lut_check",
    "run_pretrain",
    "run_report",
    "write_csv",
]
