"""A simulated target for tests: deterministic layer costs, and whole networks that run slower than
their layers' sum by a factor that grows as the network is pruned: the shape of the drift seen
on a second machine (+15% to +28% by the end of a run).

    layer cost  = 0.002 ms + 1e-6 ms per multiply-accumulate (conv, linear); other layers by size
    network     = (sum of layer costs + 0.05 ms) * (1 + drift * (1 - sum / start sum)) * penalty

``drift`` < 1 keeps latency monotone (pruning always pays, less than the layer sum says);
``penalty`` (default 1) lets a test make chosen networks slower. ``registered()`` adds it to the platform
registry as ``simulated-drift`` for a test (the flows and the CLI can then run on it in-process).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from netadapt_core.lut import layer_uses
from netadapt_core.platforms import PLATFORMS, Measurement

SETTINGS: dict[str, Any] = {"drift": 0.5, "start_sum_ms": None, "penalty": None, "glitches": []}


def layer_cost_ms(module: nn.Module, shape: tuple[int, ...]) -> float:
    with torch.no_grad():
        out = module.eval()(torch.zeros(shape))
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        macs = out.numel() * module.in_channels // module.groups * kh * kw
    elif isinstance(module, nn.Linear):
        macs = out.numel() * module.in_features
    else:
        macs = out.numel() // 4
    return 0.002 + macs * 1e-6


class SimulatedDrift:
    name = "simulated-drift"

    def __init__(self, cfg) -> None:
        self.cfg = cfg
        self.dtype = torch.float32
        self.network_calls = 0

    def metadata(self) -> dict[str, Any]:
        return {"platform": self.name, "batch_size": self.cfg.batch_size, "dtype": self.cfg.dtype}

    def environment(self) -> dict[str, Any]:
        return {"simulated": True}

    def measure_layer(self, module: nn.Module, input_shape: tuple[int, ...]) -> Measurement:
        return Measurement(layer_cost_ms(module, input_shape), 0.0, 1)

    def layer_sum_ms(self, model: nn.Module, input_shape: tuple[int, ...]) -> float:
        shape = input_shape[1:] if len(input_shape) == 4 else input_shape
        uses = layer_uses(model, tuple(shape), self.cfg.batch_size)
        return sum(layer_cost_ms(u.module, u.input_shape) for u in uses)

    def true_ms(self, model: nn.Module, input_shape: tuple[int, ...]) -> float:
        layers = self.layer_sum_ms(model, input_shape)
        start = SETTINGS["start_sum_ms"] or layers
        penalty: Callable[[nn.Module], float] | None = SETTINGS["penalty"]
        factor = 1 + SETTINGS["drift"] * (1 - layers / start)
        return (layers + 0.05) * factor * (penalty(model) if penalty else 1.0)

    def measure_networks(self, models, input_shape, repeats=None) -> list[Measurement]:
        """``SETTINGS["glitches"]``: factors popped one per call, each slowing that call's first network
        (a busy moment of the machine)."""
        self.network_calls += 1
        glitch = SETTINGS["glitches"].pop(0) if SETTINGS["glitches"] else 1.0
        return [Measurement(self.true_ms(m, input_shape) * (glitch if i == 0 else 1.0), 0.0, repeats or 3)
                for i, m in enumerate(models)]

    def measure_network(self, model, input_shape) -> Measurement:
        return self.measure_networks([model], input_shape)[0]


@contextmanager
def registered():
    """``simulated-drift`` in the platform registry while the block runs, settings reset after."""
    PLATFORMS.register(SimulatedDrift.name)(SimulatedDrift)
    try:
        yield SETTINGS
    finally:
        PLATFORMS.unregister(SimulatedDrift.name)
        SETTINGS.update(drift=0.5, start_sum_ms=None, penalty=None, glitches=[])
