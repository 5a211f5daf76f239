"""What the table is keyed by: a layer's *signature* (type, settings, channels, input shape,
dtype; identical layers share one entry), the network fingerprint, the channel grid, variants of
the network, and width templates (a group's signatures at any width from two built networks)."""

from __future__ import annotations

import copy
import math
import random
import re
from dataclasses import dataclass
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from ..checkpoint import Architecture
from ..layers import layer_kind, leaf_modules, signature
from ..surgery import prunable_groups, prune_group


@dataclass(frozen=True)
class LayerUse:
    """One call of a leaf layer in a forward pass, with its LUT key."""

    name: str
    module: nn.Module
    input_shape: tuple[int, ...]
    signature: str


def layer_uses(model: nn.Module, input_shape: tuple[int, ...], batch_size: int, dtype=torch.float32) -> list[LayerUse]:
    """Every leaf-layer call of one forward pass of ``model`` on (batch_size, *input_shape)."""
    uses: list[LayerUse] = []
    hooks = []
    for name, module in leaf_modules(model):
        layer_kind(module, name)  # raises UnsupportedLayerError early

        def record(mod, args, _name=name):
            shape = (batch_size, *args[0].shape[1:])
            uses.append(LayerUse(_name, mod, shape, signature(mod, shape, dtype)))

        hooks.append(module.register_forward_pre_hook(record))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, *input_shape, dtype=dtype))
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    return uses


def network_fingerprint(arch: Architecture, input_shape: tuple[int, ...]) -> dict[str, Any]:
    return {"arch": arch.to_dict(), "input_shape": list(input_shape)}


def channel_grid(original: int, step: int, min_channels: int) -> list[int]:
    """Reachable channel counts of a group, largest first: original, original-step, ... >= min."""
    return list(range(original, min_channels - 1, -step)) or [original]


def min_channels(original: int, ratio: float) -> int:
    return max(1, math.ceil(original * ratio))


class GroupGrid(BaseModel):
    """The widths one group may take: ``original`` down to ``min`` in steps of ``step``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    original: int = Field(ge=1)
    step: int = Field(ge=1)
    min: int = Field(ge=1)

    @classmethod
    def of(cls, original: int, step: int, min_ratio: float) -> GroupGrid:
        return cls(original=original, step=step, min=min_channels(original, min_ratio))

    def widths(self) -> list[int]:
        """Every width of the grid, largest (the original) first."""
        return channel_grid(self.original, self.step, self.min)


ChannelGrid = dict[str, GroupGrid]  # group id -> its widths


def uniform_variant(model, input_shape, grid: ChannelGrid, ratio: float):
    """A copy of ``model`` with every group cut to the grid width nearest ``ratio`` of the original."""
    variant = copy.deepcopy(model)
    for group in prunable_groups(variant, input_shape):
        g = grid[group.id]
        want = min(g.widths(), key=lambda c: abs(c - ratio * g.original))
        if want < group.channels:
            prune_group(variant, group.id, group.channels - want, input_shape)
    return variant


def random_variant(model, input_shape, grid: ChannelGrid, rng: random.Random,
                   cut_probability: float = 0.5):
    """A copy of ``model`` where each group, with probability ``cut_probability``, is cut to a random
    grid width: non-uniform, like the networks an adaptation makes (some groups cut, the rest
    untouched); a higher probability makes a smaller network."""
    variant = copy.deepcopy(model)
    for group in prunable_groups(variant, input_shape):
        options = grid[group.id].widths()[1:]
        if options and rng.random() < cut_probability:
            prune_group(variant, group.id, group.channels - rng.choice(options), input_shape)
    return variant


_NUMBER = re.compile(r"(\d+)")


class WidthTemplate:
    """The layer signatures of a network with one group cut to any width, without building it.

    Made from the parent's signatures (group at ``channels``) and a probe's (the same group cut to
    ``probe_channels``): every number that differs between the two is a multiple ``k`` of the
    group's width (output channels, input channels, depthwise groups, flattened features) and is
    rewritten as ``k * width``. Anything else (a layer appears or vanishes, a number that is not such
    a multiple) makes no template (``make`` returns None): the caller then builds the network.
    """

    def __init__(self, parts: list[list[str | tuple[int]]]) -> None:
        self.parts = parts

    @classmethod
    def make(cls, parent: list[str], probe: list[str], channels: int, probe_channels: int) -> WidthTemplate | None:
        if len(parent) != len(probe) or channels == probe_channels:
            return None
        parts: list[list[str | tuple[int]]] = []
        for old, new in zip(parent, probe):
            if old == new:
                parts.append([old])
                continue
            a, b = _NUMBER.split(old), _NUMBER.split(new)
            if len(a) != len(b):
                return None
            row: list[str | tuple[int]] = []
            for i, (x, y) in enumerate(zip(a, b)):
                if x == y:
                    row.append(x)
                elif i % 2 == 1 and int(x) % channels == 0 and int(y) == int(x) // channels * probe_channels:
                    row.append((int(x) // channels,))
                else:
                    return None
            parts.append(row)
        return cls(parts)

    def signatures(self, width: int) -> list[str]:
        return ["".join(p if isinstance(p, str) else str(p[0] * width) for p in row) for row in self.parts]

