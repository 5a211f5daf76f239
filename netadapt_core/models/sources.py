"""Where the starting network comes from: ``model.name`` names a source and a builder.

- ``mobilenet_v1``, ``mobilenet_v2``, ``tiny_cnn`` (built in) and names registered from Python
  with ``MODELS.register``;
- ``torchvision:<builder>``: every classification builder of ``torchvision.models``
  (``torchvision.models.list_models(module=torchvision.models)``);
- ``timm:<name>``: every model of ``timm.list_models()``;
- any other name: a factory that an installed package declares in the entry-point group
  ``netadapt.models`` of its own ``pyproject.toml`` (nothing from the settings is evaluated)::

      [project.entry-points."netadapt.models"]
      my_net = "my_package.models:build_my_net"

``model.kwargs`` holds the builder's own keyword arguments. netadapt adds the number of classes
and input channels of the data set: torchvision and timm builders take them as arguments
(``num_classes``, timm's ``in_chans``); a factory gets ``num_classes`` / ``in_channels`` /
``image_size`` when its signature accepts them. Whatever a builder leaves unfitted (a 3-channel
stem on grey images, a 1000-class head) is replaced by ``fit_io``; ``check_network`` then proves
the network runs on the configured input and returns one logit per class.
"""

from __future__ import annotations

import importlib
import inspect
from functools import cache
from importlib.metadata import entry_points
from typing import Any

import torch
from torch import nn

from ..errors import NetAdaptError
from ..resources import forward_with_hooks
from .builtin import MODELS

ENTRY_POINT_GROUP = "netadapt.models"
RESERVED_KWARGS = ("num_classes", "in_channels", "image_size")
# builder arguments that make a torchvision network fit small images or train as a plain classifier
TORCHVISION_DEFAULTS: dict[str, dict[str, Any]] = {
    "googlenet": {"aux_logits": False, "init_weights": True},  # no auxiliary heads in training mode
    "inception_v3": {"aux_logits": False, "init_weights": True},
}


class ModelError(NetAdaptError, ValueError):
    """The configured network cannot be found, built or fitted to the data set; the message says why."""


def split_name(name: str) -> tuple[str, str]:
    """(source, builder) of a ``model.name``: source is builtin, torchvision, timm or entry_point."""
    source, sep, builder = name.partition(":")
    if sep:
        if source not in ("torchvision", "timm") or not builder:
            raise ModelError(
                f"model {name!r}: the prefix must be torchvision: or timm: followed by a model name "
                "(e.g. torchvision:resnet18, timm:resnet18)"
            )
        return source, builder
    if name in MODELS:
        return "builtin", name
    return "entry_point", name


@cache
def torchvision_builders() -> tuple[str, ...]:
    import torchvision.models as tvm

    return tuple(tvm.list_models(module=tvm))


@cache
def model_entry_points() -> dict[str, Any]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def _timm():
    try:
        import timm
    except ImportError:  # pragma: no cover - timm is a dependency
        raise ModelError("model timm:...: the timm package is not installed; `pip install timm`") from None
    return timm


def _fresh_entry_points(name: str) -> dict:
    """The plug-in models, looked up again if ``name`` is missing (a package installed since the
    first look in this process)."""
    if name not in model_entry_points():
        importlib.invalidate_caches()
        model_entry_points.cache_clear()
    return model_entry_points()


def _first_line(exc: Exception) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"


def check_model_name(name: str) -> str:
    """``name`` if some source provides it; otherwise a ModelError listing what is available."""
    source, builder = split_name(name)
    if source == "torchvision" and builder not in torchvision_builders():
        raise ModelError(
            f"model {name!r}: torchvision has no classification builder {builder!r}; "
            f"known: {', '.join(torchvision_builders())}"
        )
    if source == "timm" and builder not in _timm().list_models():
        close = _timm().list_models(f"*{builder}*")[:10]
        raise ModelError(
            f"model {name!r}: timm has no model {builder!r}"
            + (f"; similar: {', '.join(close)}" if close else "; see timm.list_models()")
        )
    if source == "entry_point" and builder not in _fresh_entry_points(builder):
        plugins = ", ".join(sorted(model_entry_points())) or "none installed"
        raise ModelError(
            f"unknown model {name!r}; built in: {', '.join(MODELS.names())}; from installed packages "
            f"(entry-point group {ENTRY_POINT_GROUP!r}): {plugins}; or torchvision:<builder> / timm:<name>"
        )
    return name


def _accepted(factory: Any, offered: dict[str, Any]) -> dict[str, Any]:
    """The entries of ``offered`` that ``factory``'s signature accepts (all, if it takes **kwargs)."""
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return {}
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return dict(offered)
    names = {p.name for p in params}
    return {k: v for k, v in offered.items() if k in names}


def factory_defaults(name: str) -> dict[str, Any]:
    """Keyword defaults of a built-in factory: written into the architecture record, so that a
    checkpoint names every argument it was built with."""
    params = inspect.signature(MODELS.get(name)).parameters.values()
    return {p.name: p.default for p in params if p.default is not p.empty and p.name not in RESERVED_KWARGS}


def _call(label: str, factory: Any, kwargs: dict[str, Any]) -> nn.Module:
    try:
        model = factory(**kwargs)
    except TypeError as exc:
        raise ModelError(f"model {label}: its builder refused the arguments {sorted(kwargs)}: {exc}. "
                         "Fix: correct model.kwargs") from None
    except Exception as exc:  # noqa: BLE001 - a builder may reject the input size or arguments any way
        raise ModelError(f"model {label}: its builder failed with {sorted(kwargs)} ({_first_line(exc)}). "
                         "Fix: model.kwargs, or a data.image_size the network supports") from None
    if not isinstance(model, nn.Module):
        raise ModelError(f"model {label}: the builder returned {type(model).__name__}, not a torch.nn.Module")
    return model


def build_model(name: str, num_classes: int, in_channels: int, image_size: int | None = None,
                **kwargs: Any) -> nn.Module:
    """Build ``name`` with fresh weights, fitted to ``in_channels`` x ``image_size`` images and
    ``num_classes`` classes. ``kwargs`` are the builder's own arguments (``model.kwargs``)."""
    clash = sorted(set(kwargs) & set(RESERVED_KWARGS))
    if clash:
        raise ModelError(f"model.kwargs may not set {clash}: netadapt sets them from the data set")
    source, builder = split_name(name)
    if source == "builtin":
        return _call(name, MODELS.get(builder), {"num_classes": num_classes, "in_channels": in_channels, **kwargs})
    if source == "torchvision":
        import torchvision.models as tvm

        check_model_name(name)
        args = {**TORCHVISION_DEFAULTS.get(builder, {}), **kwargs}
        if builder.startswith("vit_") and image_size and "image_size" not in args:
            args["image_size"] = image_size
        if builder.startswith("maxvit") and image_size and "input_size" not in args:
            args["input_size"] = (image_size, image_size)
        model = _call(name, lambda **kw: tvm.get_model(builder, weights=None, **kw),
                      {"num_classes": num_classes, **args})
        return fit_io(model, in_channels, num_classes, name)
    if source == "timm":
        timm = _timm()
        check_model_name(name)
        args = {"num_classes": num_classes, "in_chans": in_channels, **kwargs}
        if image_size and "img_size" not in kwargs:
            try:  # vision transformers need the input size; convolutional networks refuse the argument
                return fit_io(timm.create_model(builder, pretrained=False, img_size=image_size, **args),
                              in_channels, num_classes, name)
            except TypeError as exc:
                if "img_size" not in str(exc):
                    raise ModelError(f"model {name}: timm refused model.kwargs: {exc}") from None
            except Exception as exc:  # noqa: BLE001 - e.g. an input size the model cannot take
                raise ModelError(f"model {name}: timm failed to build it for {image_size} px images "
                                 f"({_first_line(exc)}). Fix: model.kwargs, or a data.image_size the network "
                                 "supports") from None
        return fit_io(_call(name, lambda **kw: timm.create_model(builder, pretrained=False, **kw), args),
                      in_channels, num_classes, name)
    check_model_name(name)
    factory = model_entry_points()[builder].load()
    offered = {"num_classes": num_classes, "in_channels": in_channels, "image_size": image_size}
    model = _call(name, factory, {**_accepted(factory, {k: v for k, v in offered.items() if v is not None}),
                                  **kwargs})
    return fit_io(model, in_channels, num_classes, name, image_size)


def fit_io(model: nn.Module, in_channels: int, num_classes: int, label: str = "",
           image_size: int | None = None) -> nn.Module:
    """Replace, in place, a stem conv made for other input channels and, given ``image_size``, a
    last Linear layer whose outputs are the network's output but not ``num_classes`` wide. The new
    layers have fresh weights: the network is then trained, or loaded from a weights file."""
    stem_name, stem = next(((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)), (None, None))
    if stem is not None and stem.in_channels != in_channels:
        if stem.groups != 1:
            raise ModelError(f"model {label}: its first conv {stem_name!r} is grouped; cannot fit it to "
                             f"{in_channels} input channels. Fix: a builder argument for the input channels")
        _replace(model, stem_name, nn.Conv2d(
            in_channels, stem.out_channels, stem.kernel_size, stem.stride, stem.padding, stem.dilation, 1,
            stem.bias is not None, stem.padding_mode))
    if image_size is None:
        return model
    head_name, head = next(((n, m) for n, m in reversed(list(model.named_modules())) if isinstance(m, nn.Linear)),
                           (None, None))
    if head is not None and head.out_features != num_classes:
        was_training = model.training
        try:
            with torch.no_grad():
                out = model.eval()(torch.zeros(1, in_channels, image_size, image_size))
        except Exception:  # noqa: BLE001 - check_network reports a failing forward pass with the fix
            return model
        finally:
            model.train(was_training)
        if isinstance(out, torch.Tensor) and out.shape[-1] == head.out_features:
            _replace(model, head_name, nn.Linear(head.in_features, num_classes, head.bias is not None))
    return model


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def check_network(model: nn.Module, input_shape: tuple[int, ...], num_classes: int, label: str = "") -> None:
    """The network takes a (2, *input_shape) batch and returns (2, num_classes) logits, in eval and
    in training mode; otherwise a ModelError saying what to change."""
    was_training = model.training
    x = torch.randn(2, *input_shape, generator=torch.Generator().manual_seed(0))
    try:
        for training in (False, True):
            model.train(training)
            try:
                with torch.no_grad():
                    out = model(x)
            except Exception as exc:  # noqa: BLE001 - any failure of the user's network on this input
                raise ModelError(
                    f"model {label}: a forward pass on input {tuple(x.shape)} failed ({type(exc).__name__}: "
                    f"{str(exc)[:300]}). Fix: a larger data.image_size, or model.kwargs for the input size"
                ) from None
            mode = "training" if training else "eval"
            if not isinstance(out, torch.Tensor):
                raise ModelError(
                    f"model {label}: in {mode} mode it returns {type(out).__name__}, not one logits tensor "
                    "(auxiliary heads?). Fix: a model.kwargs argument that turns them off, e.g. aux_logits: false"
                )
            if tuple(out.shape) != (2, num_classes):
                raise ModelError(
                    f"model {label}: its output has shape {tuple(out.shape)} for a batch of 2; expected "
                    f"(2, {num_classes}) for the data set's {num_classes} classes. Fix: the builder's "
                    "num_classes argument, or a last Linear layer netadapt can replace"
                )
    finally:
        model.train(was_training)


OUTPUT_LAYER_ATTR = "_netadapt_output_layer"  # the name, remembered on the model (copies keep it)


def output_layer(model: nn.Module, input_shape: tuple[int, ...]) -> nn.Module:
    """The last Conv2d/Linear layer a forward pass runs: its outputs are the classes, never pruned."""
    known = getattr(model, OUTPUT_LAYER_ATTR, None)
    if known is not None:
        return model.get_submodule(known)
    order: list[nn.Module] = []
    forward_with_hooks(model, input_shape, lambda mod, _i, _o: order.append(mod))
    if not order:
        raise ModelError("the network has no Conv2d or Linear layer; netadapt prunes their filters")
    name = next(n for n, m in model.named_modules() if m is order[-1])
    object.__setattr__(model, OUTPUT_LAYER_ATTR, name)
    return order[-1]
