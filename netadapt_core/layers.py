"""Per-layer-type knowledge: how to describe a layer's channels, resize it, and key it in the LUT.

A plug-in point by op type (as Torch-Pruning's ``customized_pruners``): register a ``LayerKind`` for
a new parametrised layer type and the checkpoint format, surgery and LUT all handle it. Layers
without parameters (activations, pooling, dropout, flatten...) need no entry: their LUT key is their
type, settings and input shape.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from .errors import NetAdaptError


class UnsupportedLayerError(NetAdaptError, TypeError):
    """The network holds a layer type netadapt cannot resize or measure."""


@dataclass(frozen=True)
class LayerKind:
    """How netadapt handles one parametrised layer type.

    Attributes:
        channels: the layer's channel-dependent settings, as a small JSON-able dict.
        rebuild: a fresh layer of the same type and settings but the given channels.
    """

    channels: Callable[[nn.Module], dict[str, int]]
    rebuild: Callable[[nn.Module, dict[str, int]], nn.Module]


LAYER_KINDS: dict[type[nn.Module], LayerKind] = {}


def register_layer_kind(layer_type: type[nn.Module], kind: LayerKind) -> None:
    if layer_type in LAYER_KINDS:
        raise KeyError(f"layer kind {layer_type.__name__} is registered twice")
    LAYER_KINDS[layer_type] = kind


def _conv_rebuild(conv: nn.Conv2d, ch: dict[str, int]) -> nn.Conv2d:
    return nn.Conv2d(
        ch["in_channels"],
        ch["out_channels"],
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.dilation,
        ch["groups"],
        conv.bias is not None,
        conv.padding_mode,
    )


register_layer_kind(
    nn.Conv2d,
    LayerKind(
        channels=lambda m: {"in_channels": m.in_channels, "out_channels": m.out_channels, "groups": m.groups},
        rebuild=_conv_rebuild,
    ),
)
register_layer_kind(
    nn.BatchNorm2d,
    LayerKind(
        channels=lambda m: {"num_features": m.num_features},
        rebuild=lambda m, ch: nn.BatchNorm2d(
            ch["num_features"], m.eps, m.momentum, m.affine, m.track_running_stats
        ),
    ),
)
register_layer_kind(
    nn.Linear,
    LayerKind(
        channels=lambda m: {"in_features": m.in_features, "out_features": m.out_features},
        rebuild=lambda m, ch: nn.Linear(ch["in_features"], ch["out_features"], m.bias is not None),
    ),
)


def layer_kind(module: nn.Module, name: str = "") -> LayerKind | None:
    """The kind of a parametrised layer, None for a parameter-free one; raises for unknown types."""
    kind = LAYER_KINDS.get(type(module))
    if kind is not None:
        if isinstance(module, nn.Conv2d) and module.groups not in (1, module.in_channels):
            raise UnsupportedLayerError(
                f"layer {name!r} is a grouped Conv2d (groups={module.groups}); netadapt handles plain "
                "and depthwise convolutions only"
            )
        return kind
    if any(True for _ in module.parameters(recurse=False)) or any(True for _ in module.buffers(recurse=False)):
        known = ", ".join(t.__name__ for t in LAYER_KINDS)
        raise UnsupportedLayerError(
            f"layer {name!r} of type {type(module).__name__} has parameters netadapt cannot resize or "
            f"measure (supported: {known} and parameter-free layers). Fix: register a LayerKind for it "
            "with netadapt_core.layers.register_layer_kind, or replace the layer."
        )
    return None


def leaf_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(name, m) for name, m in model.named_modules() if not any(True for _ in m.children())]


def channel_spec(model: nn.Module) -> dict[str, dict[str, int]]:
    """Per-layer channels of every parametrised layer: with the state dict, all a checkpoint needs."""
    spec = {}
    for name, module in leaf_modules(model):
        kind = layer_kind(module, name)
        if kind is not None:
            spec[name] = kind.channels(module)
    return spec


def apply_channel_spec(model: nn.Module, spec: dict[str, dict[str, int]]) -> nn.Module:
    """Resize, in place, each layer of ``model`` named in ``spec`` (a freshly built network)."""
    modules = dict(model.named_modules())
    for name, channels in spec.items():
        module = modules.get(name)
        if module is None:
            raise KeyError(f"layer {name!r} of the channel spec is not in the network")
        kind = layer_kind(module, name)
        if kind is None:
            raise KeyError(f"layer {name!r} of the channel spec has no channels to set")
        if kind.channels(module) == channels:
            continue
        parent_name, _, child = name.rpartition(".")
        setattr(modules[parent_name] if parent_name else model, child, kind.rebuild(module, channels))
    return model


def signature(module: nn.Module, input_shape: tuple[int, ...], dtype: torch.dtype) -> str:
    """The LUT key of a layer: type, settings (channels included) and input shape.

    Identical layers anywhere in any network get the same key, so they share one measurement.
    """
    shape = "x".join(str(s) for s in input_shape)
    return f"{type(module).__name__}({module.extra_repr()})@{shape}:{str(dtype).removeprefix('torch.')}"
