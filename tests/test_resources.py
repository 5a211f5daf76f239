"""MACs and parameter counts: the hook counter against PyTorch's own FLOP counter."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from netadapt_core.models import build_model
from netadapt_core.resources import Budget, count_macs_params, format_value
from netadapt_core.surgery import prunable_groups, prune_group

SHAPE = (1, 28, 28)


@pytest.mark.parametrize("name", ["mobilenet_v1", "mobilenet_v2", "tiny_cnn"])
def test_macs_match_torch_flop_counter(name):
    model = build_model(name, num_classes=10, in_channels=1).eval()
    group = prunable_groups(model, SHAPE)[1]
    prune_group(model, group.id, group.channels // 2, SHAPE)  # odd widths count too
    with torch.no_grad(), FlopCounterMode(display=False) as flops:
        model(torch.zeros(1, *SHAPE))
    counted = count_macs_params(model, SHAPE)
    assert counted["macs"] == flops.get_total_flops() // 2  # conv and matmul FLOPs are 2 per MAC
    assert counted["params"] == sum(p.numel() for p in model.parameters())


def test_counting_leaves_the_model_as_it_was():
    model = build_model("tiny_cnn", num_classes=10, in_channels=1).train()
    count_macs_params(model, SHAPE)
    assert model.training and not any(m._forward_hooks for m in model.modules())


def test_budget_and_units():
    budget = Budget("params", 5.0e5, primary=False)
    assert budget.met(5.0e5) and not budget.met(5.0e5 + 1)
    assert budget.describe() == "params <= 500.0 k parameters"
    assert format_value("macs", 4.2e7) == "42.00 M MACs" and format_value("latency", 1.5) == "1.500 ms"
    assert format_value("params", 677) == "677 parameters"
