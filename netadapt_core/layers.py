"""Per-layer-type knowledge: how to describe a layer's channels, resize it, and key it in the LUT.

A plug-in point by op type (as Torch-Pruning's ``customized_pruners``): register a ``LayerKind`` for
a new parametrised layer type and the checkpoint format, surgery and LUT all handle it. Kinds are
found through the class hierarchy, so subclasses (torchvision's ``LayerNorm2d``, timm's
``BatchNormAct2d`` or ``Conv2dSame``) are handled as their base, keeping their own forward.
Layers without parameters (activations, pooling, dropout, flatten...) need no entry: their LUT
key is their type, settings and input shape.

A *unit* is what the LUT times and the checkpoint resizes: the outermost module that is either a
registered kind or has no children. A module with parameters of its own that is neither (a ViT's
class token, an attention block) is refused with its name.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

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
        resize: set, in place, the layer's settings and parameter shapes to the given channels (the
            parameters get placeholder values: a state dict is loaded after, or only timing matters).
    """

    channels: Callable[[nn.Module], dict]
    resize: Callable[[nn.Module, dict], None]


LAYER_KINDS: dict[type[nn.Module], LayerKind] = {}


def register_layer_kind(layer_type: type[nn.Module], kind: LayerKind) -> None:
    if layer_type in LAYER_KINDS:
        raise KeyError(f"layer kind {layer_type.__name__} is registered twice")
    LAYER_KINDS[layer_type] = kind


def _set(module: nn.Module, name: str, shape: tuple[int, ...], fill: float | None) -> None:
    """Replace parameter or buffer ``name`` (if present) by a tensor of ``shape``: ``fill`` or small
    random values (never uninitialised memory: NaNs and denormals would distort timing)."""
    old = getattr(module, name, None)
    if old is None:
        return
    value = torch.full(shape, fill, dtype=old.dtype) if fill is not None else torch.randn(shape, dtype=old.dtype) * 0.01
    if isinstance(old, nn.Parameter):
        setattr(module, name, nn.Parameter(value, requires_grad=old.requires_grad))
    else:
        setattr(module, name, value)


def _resize_conv(conv: nn.Conv2d, ch: dict) -> None:
    conv.in_channels, conv.out_channels, conv.groups = ch["in_channels"], ch["out_channels"], ch["groups"]
    _set(conv, "weight", (conv.out_channels, conv.in_channels // conv.groups, *conv.kernel_size), None)
    _set(conv, "bias", (conv.out_channels,), 0.0)


def _resize_norm(norm: nn.Module, ch: dict) -> None:
    n = ch["num_features"]
    norm.num_features = n
    _set(norm, "weight", (n,), 1.0)
    _set(norm, "bias", (n,), 0.0)
    _set(norm, "running_mean", (n,), 0.0)
    _set(norm, "running_var", (n,), 1.0)


def _resize_layer_norm(norm: nn.LayerNorm, ch: dict) -> None:
    norm.normalized_shape = tuple(ch["normalized_shape"])
    _set(norm, "weight", norm.normalized_shape, 1.0)
    _set(norm, "bias", norm.normalized_shape, 0.0)


def _resize_group_norm(norm: nn.GroupNorm, ch: dict) -> None:
    norm.num_channels, norm.num_groups = ch["num_channels"], ch["num_groups"]
    _set(norm, "weight", (norm.num_channels,), 1.0)
    _set(norm, "bias", (norm.num_channels,), 0.0)


def _resize_linear(linear: nn.Linear, ch: dict) -> None:
    linear.in_features, linear.out_features = ch["in_features"], ch["out_features"]
    _set(linear, "weight", (linear.out_features, linear.in_features), None)
    _set(linear, "bias", (linear.out_features,), 0.0)


register_layer_kind(nn.Conv2d, LayerKind(
    channels=lambda m: {"in_channels": m.in_channels, "out_channels": m.out_channels, "groups": m.groups},
    resize=_resize_conv,
))
register_layer_kind(nn.BatchNorm2d, LayerKind(
    channels=lambda m: {"num_features": m.num_features}, resize=_resize_norm,
))
register_layer_kind(nn.LayerNorm, LayerKind(
    channels=lambda m: {"normalized_shape": list(m.normalized_shape)}, resize=_resize_layer_norm,
))
register_layer_kind(nn.GroupNorm, LayerKind(
    channels=lambda m: {"num_channels": m.num_channels, "num_groups": m.num_groups}, resize=_resize_group_norm,
))
register_layer_kind(nn.Linear, LayerKind(
    channels=lambda m: {"in_features": m.in_features, "out_features": m.out_features}, resize=_resize_linear,
))


def _registered_kind(module: nn.Module) -> LayerKind | None:
    for cls in type(module).__mro__:
        if cls in LAYER_KINDS:
            return LAYER_KINDS[cls]
    return None


def _has_own_tensors(module: nn.Module) -> bool:
    return any(True for _ in module.parameters(recurse=False)) or any(True for _ in module.buffers(recurse=False))


def layer_kind(module: nn.Module, name: str = "") -> LayerKind | None:
    """The kind of a parametrised layer, None for a parameter-free one; raises for unknown types."""
    kind = _registered_kind(module)
    if kind is not None:
        return kind
    if _has_own_tensors(module):
        known = ", ".join(t.__name__ for t in LAYER_KINDS)
        raise UnsupportedLayerError(
            f"{f'layer {name!r}' if name else 'the network itself'}, of type {type(module).__name__}, has "
            "parameters netadapt cannot resize or "
            f"measure (supported: {known} and their subclasses, and parameter-free layers). Fix: register "
            "a LayerKind for it with netadapt_core.layers.register_layer_kind, or use a network without it."
        )
    return None


def leaf_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The units of ``model`` (see the module docstring), in module order."""
    units: list[tuple[str, nn.Module]] = []

    def visit(prefix: str, module: nn.Module) -> None:
        children = list(module.named_children())
        if not children or _registered_kind(module) is not None:
            units.append((prefix, module))
            return
        layer_kind(module, prefix)  # a container with parameters of its own: refused by name
        for child_name, child in children:
            visit(f"{prefix}.{child_name}" if prefix else child_name, child)

    visit("", model)
    return units


def channel_spec(model: nn.Module) -> dict[str, dict]:
    """Per-layer channels of every parametrised layer: with the state dict, all a checkpoint needs."""
    spec = {}
    for name, module in leaf_modules(model):
        kind = layer_kind(module, name)
        if kind is not None:
            spec[name] = kind.channels(module)
    return spec


def resized(module: nn.Module, channels: dict, name: str = "") -> nn.Module:
    """A copy of ``module`` with the given channels (placeholder weights; used to time a layer)."""
    copied = copy.deepcopy(module)
    layer_kind(copied, name).resize(copied, channels)
    return copied


def apply_channel_spec(model: nn.Module, spec: dict[str, dict]) -> nn.Module:
    """Resize, in place, each layer of ``model`` named in ``spec`` (a freshly built network)."""
    modules = dict(model.named_modules())
    for name, channels in spec.items():
        module = modules.get(name)
        if module is None:
            raise KeyError(f"layer {name!r} of the channel spec is not in the network")
        kind = layer_kind(module, name)
        if kind is None:
            raise KeyError(f"layer {name!r} of the channel spec has no channels to set")
        if kind.channels(module) != channels:
            kind.resize(module, channels)
    return model


def signature(module: nn.Module, input_shape: tuple[int, ...], dtype: torch.dtype) -> str:
    """The LUT key of a layer: type, settings (channels included) and input shape.

    Identical layers anywhere in any network get the same key, so they share one measurement.
    """
    shape = "x".join(str(s) for s in input_shape)
    return f"{type(module).__name__}({module.extra_repr()})@{shape}:{str(dtype).removeprefix('torch.')}"
