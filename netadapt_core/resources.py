"""Resources an adaptation can budget: latency (measured, or the LUT's), MACs and parameters.

MACs are the multiply-accumulates of convolutions and fully connected layers at batch 1, the
"Mult-Adds" of the MobileNet papers (BatchNorm, activations and adds are not counted). They are
counted with forward hooks, one forward pass, which agrees with ``torch.utils.flop_counter`` (FLOPs
/ 2, see the tests) at a tenth of its cost: planning counts a few hundred candidate networks per
iteration. Parameters are every trainable and frozen tensor of ``model.parameters()``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

RESOURCES = ("latency", "macs", "params")
UNITS = {"latency": "ms", "macs": "MACs", "params": "parameters"}


def count_macs_params(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, int]:
    """MACs of one image (conv + linear) and the parameter count of ``model``."""
    macs = 0

    def hook(module: nn.Module, _inputs: Any, output: torch.Tensor) -> None:
        nonlocal macs
        if isinstance(module, nn.Conv2d):
            kh, kw = module.kernel_size
            macs += output.numel() * (module.in_channels // module.groups) * kh * kw
        else:
            macs += output.numel() * module.in_features

    forward_with_hooks(model, input_shape, hook)
    return {"macs": int(macs), "params": sum(p.numel() for p in model.parameters())}


def forward_with_hooks(model: nn.Module, input_shape: tuple[int, ...], hook: Any,
                       types: tuple[type[nn.Module], ...] = (nn.Conv2d, nn.Linear)) -> None:
    """One eval-mode forward pass of a zero image with ``hook`` (a forward hook) on every layer of
    ``types``; the model's mode and hooks are restored after."""
    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, types)]
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, *input_shape))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()


def format_value(resource: str, value: float) -> str:
    if resource == "latency":
        return f"{value:.3f} ms"
    if value >= 1e6:
        return f"{value / 1e6:.2f} M {UNITS[resource]}"
    return f"{value / 1e3:.1f} k {UNITS[resource]}" if value >= 1e4 else f"{value:.0f} {UNITS[resource]}"


@dataclass(frozen=True)
class Budget:
    """``resource`` of the adapted network must be at most ``limit`` (ms, MACs or parameters)."""

    resource: str
    limit: float
    primary: bool

    def met(self, value: float) -> bool:
        return value <= self.limit

    def describe(self) -> str:
        return f"{self.resource} <= {format_value(self.resource, self.limit)}"
