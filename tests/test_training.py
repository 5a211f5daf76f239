"""Training and evaluation in the channels-last memory format (``*.channels_last``, the default):
the same network as the contiguous path computes, and checkpoints stay contiguous."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from netadapt_core.config import load_params
from netadapt_core.models import build_model
from netadapt_core.training import evaluate, train


def _stage(channels_last: bool):
    return load_params(None, ["pretrain.threads=1", "pretrain.batch_size=32", "pretrain.lr=0.05",
                              f"pretrain.channels_last={channels_last}"]).pretrain


def test_channels_last_trains_the_same_network_and_leaves_it_contiguous(tiny_data):
    """One SGD step from the same start with either layout gives the same weights to float rounding
    (later steps amplify rounding, as any change of kernel does); every parameter is contiguous
    afterwards (checkpoints, surgery and latency see no difference); after 5 steps both networks
    score the same holdout accuracy, and evaluating in either layout gives the same score."""
    torch.manual_seed(0)
    start = build_model("tiny_cnn", num_classes=10, in_channels=1)

    def trained(layout: bool, steps: int) -> nn.Module:
        net = build_model("tiny_cnn", num_classes=10, in_channels=1)
        net.load_state_dict(start.state_dict())
        train(net, tiny_data.train, _stage(layout), steps=steps, seed=3)
        assert all(t.is_contiguous() for t in net.state_dict().values())
        return net

    one = {layout: trained(layout, 1) for layout in (False, True)}
    for (key, a), b in zip(one[False].state_dict().items(), one[True].state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4, msg=key)
    five = {layout: trained(layout, 5) for layout in (False, True)}
    scores = {layout: evaluate(net, tiny_data.holdout, channels_last=layout) for layout, net in five.items()}
    assert scores[True] == pytest.approx(scores[False], abs=0.02)
    assert evaluate(five[True], tiny_data.holdout, channels_last=False) == pytest.approx(scores[True], abs=0.004)
    assert all(t.is_contiguous() for t in five[True].state_dict().values())


def test_channels_last_passes_non_image_inputs_through():
    """A network on flat features (2-D batches) trains and evaluates with channels_last on."""
    torch.manual_seed(0)
    features = torch.randn(64, 12)
    labels = (features[:, 0] > 0).long()
    data = TensorDataset(features, labels)
    net = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 2))
    train(net, data, _stage(True), steps=40, seed=0)
    assert evaluate(net, data, channels_last=True) > 0.8
