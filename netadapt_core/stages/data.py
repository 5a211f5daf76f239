"""The data stage: check the data set and describe it (``report.data``)."""

from __future__ import annotations

from typing import Any

from ..checkpoint import (
    atomic_write_json,
)
from ..config import Params
from ..data import load_data
from .common import Log


def run_data(params: Params, log: Log = print) -> dict[str, Any]:
    """Stage the data set and describe the split (sizes, class counts) in ``report.data``."""
    data = load_data(params.data)
    summary = {
        "dataset": params.data.dataset,
        "input_shape": list(data.input_shape),
        "num_classes": data.num_classes,
        "train": len(data.train), "holdout": len(data.holdout), "test": len(data.test),
    }
    atomic_write_json(params.report.data, summary)
    log(f"data: {summary}")
    return summary

