"""A sample of the model matrix (benchmarks/model_matrix.py): each network is adapted end to end
(surgery check, pretraining steps, LUT, one iteration, measured check, export) or refused up front
with a named-layer error. ``NETADAPT_MATRIX=all`` runs every torchvision builder and the timm sample
(hours on 2 cores)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("model_matrix", ROOT / "benchmarks" / "model_matrix.py")
matrix = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(matrix)

EXPECTED = {  # the sample: what each network shows
    "torchvision:resnet18": "adapted",  # residual adds
    "torchvision:mobilenet_v3_small": "adapted",  # squeeze-and-excitation, Hardswish, depthwise
    "torchvision:squeezenet1_1": "adapted",  # concatenations, a conv classifier
    "torchvision:regnet_x_400mf": "adapted",  # grouped convs: their groups skipped, the rest pruned
    "torchvision:shufflenet_v2_x0_5": "refused",  # channel shuffle
    "torchvision:swin_t": "refused",  # attention blocks
    "timm:mobilenetv3_small_050": "adapted",
}
assert set(EXPECTED) == set(matrix.SAMPLE)


def _networks() -> list[str]:
    if os.environ.get("NETADAPT_MATRIX") == "all":
        from netadapt_core.models.sources import torchvision_builders

        return [f"torchvision:{b}" for b in torchvision_builders()] + matrix.TIMM_SAMPLE
    return matrix.SAMPLE


@pytest.mark.slow
@pytest.mark.parametrize("name", _networks())
def test_network_adapts_or_is_refused_up_front(name, data_root):
    row = matrix.try_network(name, data_root)
    assert row["status"] in ("adapted", "refused"), (
        f"{name} failed at {row['step']}: {row.get('reason')}\n{row.get('traceback', '')}")
    if name in EXPECTED:
        assert row["status"] == EXPECTED[name], row
    if row["status"] == "adapted":
        assert row["groups"] > 0 and row["groups_exact"] > 0
        assert row["macs_ratio"] < 1 and row["export_max_diff"] >= 0  # the export check itself passed
    else:
        assert row["step"] in ("build", "surgery check") and ("layer" in row["reason"] or "trace" in row["reason"])
