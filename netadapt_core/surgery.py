"""Structured pruning of whole filters, with Torch-Pruning's dependency graph fixing coupled layers.

A *group* is one NetAdapt "layer": a set of channels that must be removed together (a conv's
filters plus its BN, the next depthwise conv and the next layer's inputs; every conv feeding one
residual add; the channels a concatenation passes on). Groups are named by their first conv/linear
layer in module order, a name that stays stable as the network shrinks.

Not every group can be pruned: the classes (the last layer's outputs), groups matching
``adapt.exclude`` patterns, and groups whose channels pass through a grouped (non-depthwise)
convolution, which Torch-Pruning cannot shrink consistently. ``check_surgery`` proves, before any
training, that pruning each remaining group keeps the network's function: it silences the channels
it will remove (zero scale and shift in the group's normalisation layers) and checks that removing
them leaves the output unchanged.
"""

from __future__ import annotations

import copy
import fnmatch
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import nn

from .errors import NetAdaptError
from .importance import IMPORTANCE, least_important
from .layers import UnsupportedLayerError, channel_spec
from .models import output_layer


class SurgeryError(NetAdaptError, RuntimeError):
    """Pruning a group breaks the network; the message names the group and how to exclude it."""


@dataclass(frozen=True)
class PrunableGroup:
    id: str
    channels: int
    members: tuple[str, ...]  # layers whose output channels the group removes


def _is_grouped(module: nn.Module) -> bool:
    return isinstance(module, nn.Conv2d) and 1 < module.groups and not (
        module.groups == module.in_channels and module.out_channels % module.groups == 0
    )


def excluded(members: Iterable[str], patterns: Iterable[str]) -> bool:
    """Whether any member layer name matches any ``adapt.exclude`` pattern (shell-style, ``*``)."""
    return any(fnmatch.fnmatchcase(m, p) for m in members for p in patterns)


class _Graph:
    """A dependency graph of ``model`` traced in eval mode (tracing must not touch BN statistics)."""

    def __init__(self, model: nn.Module, input_shape: tuple[int, ...], exclude: Iterable[str] = ()) -> None:
        channel_spec(model)  # fails early, with a clear message, on unsupported layers
        self.model = model
        self.exclude = tuple(exclude)
        self.names = {m: n for n, m in model.named_modules()}
        self.order = {n: i for i, n in enumerate(self.names.values())}
        self.output = output_layer(model, input_shape)
        was_training = model.training
        model.eval()
        try:
            with torch.enable_grad():
                self.graph = tp.DependencyGraph().build_dependency(
                    model, example_inputs=torch.zeros(1, *input_shape), verbose=False
                )
        except Exception as exc:  # noqa: BLE001 - Torch-Pruning's tracer fails with many types on what it cannot follow
            raise UnsupportedLayerError(
                f"Torch-Pruning cannot trace this network's channel dependencies ({type(exc).__name__}: "
                f"{str(exc)[:200]}); typical causes are channel shuffles and reshapes that mix channels "
                "(e.g. ShuffleNet). Fix: a network without them"
            ) from None
        finally:
            model.train(was_training)
        self.skipped: dict[str, str] = {}

    def _describe(self, group) -> tuple[PrunableGroup, list[str]]:
        members = sorted(
            {
                self.names[item.dep.target.module]
                for item in group
                if self.graph.is_out_channel_pruning_fn(item.dep.handler)
                and isinstance(item.dep.target.module, (nn.Conv2d, nn.Linear))
            },
            key=self.order.__getitem__,
        )
        grouped = sorted({self.names[item.dep.target.module] for item in group
                          if _is_grouped(item.dep.target.module)}, key=self.order.__getitem__)
        return PrunableGroup(members[0], len(group[0].idxs), tuple(members)), grouped

    def groups(self) -> dict[str, tuple[PrunableGroup, object]]:
        found = {}
        for group in self.graph.get_all_groups(ignored_layers=[self.output], root_module_types=(nn.Conv2d, nn.Linear)):
            info, grouped = self._describe(group)
            if grouped:
                self.skipped[info.id] = f"its channels pass through grouped conv {grouped[0]}"
            elif excluded(info.members, self.exclude):
                self.skipped[info.id] = "adapt.exclude"
            else:
                found[info.id] = (info, group)
        return dict(sorted(found.items(), key=lambda kv: self.order[kv[0]]))


def dependency_graph(model: nn.Module, input_shape: tuple[int, ...]) -> _Graph:
    """The traced dependency graph of ``model``, to prune it several times (``prune_group(graph=...)``)."""
    return _Graph(model, input_shape)


def prunable_groups(model: nn.Module, input_shape: tuple[int, ...], exclude: Iterable[str] = ()) -> list[PrunableGroup]:
    """Every prunable group of ``model`` (input ``input_shape`` = C, H, W), in module order."""
    return [info for info, _ in _Graph(model, input_shape, exclude).groups().values()]


def skipped_groups(model: nn.Module, input_shape: tuple[int, ...], exclude: Iterable[str] = ()) -> dict[str, str]:
    """Groups that will not be pruned, with the reason (grouped convolution, ``adapt.exclude``)."""
    graph = _Graph(model, input_shape, exclude)
    graph.groups()
    return graph.skipped


def prune_group(
    model: nn.Module,
    group_id: str,
    n_remove: int,
    input_shape: tuple[int, ...],
    importance: str = "l2_norm",
    channels: list[int] | None = None,
    graph: _Graph | None = None,
) -> list[int]:
    """Remove, in place, the ``n_remove`` least important filters of group ``group_id`` (or exactly
    the group's ``channels``, if given).

    Returns the removed channel indices (of the group's current channels). Every coupled layer is
    fixed; a forward pass then checks the network still runs and keeps its output shape. ``graph``
    (``dependency_graph(model, ...)``) saves tracing the network again when one model is pruned
    repeatedly: the graph stays valid through pruning.
    """
    if graph is None:
        graph = _Graph(model, input_shape)
    elif graph.model is not model:
        raise ValueError("the dependency graph given to prune_group was traced on another model")
    groups = graph.groups()
    if group_id not in groups:
        raise KeyError(f"no prunable group {group_id!r}; groups: {', '.join(groups)}")
    info, full_group = groups[group_id]
    if not 0 < n_remove < info.channels:
        raise ValueError(f"group {group_id} has {info.channels} channels; cannot remove {n_remove}")
    if channels is None:
        scores = IMPORTANCE.get(importance)(full_group, graph.graph)
        removed = least_important(scores, n_remove)
    else:
        removed = sorted(channels)
    root = full_group[0].dep.target.module
    pruning_fn = full_group[0].dep.handler
    group = graph.graph.get_pruning_group(root, pruning_fn, idxs=removed)
    group.prune()
    check_forward(model, input_shape)
    return removed


def check_forward(model: nn.Module, input_shape: tuple[int, ...]) -> None:
    """Run one forward pass (eval mode, batch 2) and check the output is finite."""
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        out = model(torch.randn(2, *input_shape, generator=torch.Generator().manual_seed(0)))
    model.train(was_training)
    if out.ndim != 2 or out.shape[0] != 2 or not torch.isfinite(out).all():
        raise RuntimeError(f"network output after surgery is malformed: shape {tuple(out.shape)}")


def _silence(graph: _Graph, group, idxs: list[int]) -> bool:
    """Make channels ``idxs`` of ``group`` output exact zeros (zero weight, bias and shift in every
    layer that writes them). False when a layer normalises across channels (LayerNorm, GroupNorm):
    removing channels then changes the others, so only the shapes can be checked."""
    pruning = graph.graph.get_pruning_group(group[0].dep.target.module, group[0].dep.handler, idxs=idxs)
    for item in pruning:
        module, handler, channels = item.dep.target.module, item.dep.handler, item.idxs
        if isinstance(module, (nn.LayerNorm, nn.GroupNorm)):
            return False
        if not graph.graph.is_out_channel_pruning_fn(handler) or not isinstance(module, (nn.Conv2d, nn.Linear,
                                                                                       nn.BatchNorm2d)):
            continue
        with torch.no_grad():
            if isinstance(module, nn.BatchNorm2d):
                if module.weight is not None:
                    module.weight[channels] = 0
                    module.bias[channels] = 0
                else:
                    return False
            else:  # dim 0 of a conv's (also a depthwise one's) or a linear layer's weight is its outputs
                module.weight[channels] = 0
                if module.bias is not None:
                    module.bias[channels] = 0
    return True


def check_surgery(model: nn.Module, input_shape: tuple[int, ...], exclude: Iterable[str] = (),
                  fraction: float = 0.25, atol: float = 1e-4) -> dict[str, str]:
    """Prune each prunable group of a copy of ``model`` by ``fraction`` of its channels and prove the
    network is intact: the output keeps its shape, and where the removed channels can be silenced
    first, the output does not change. Raises SurgeryError naming the first group that fails.

    Returns how each group was checked ("function" or "shape") plus the skipped groups and why.
    """
    report: dict[str, str] = {}
    x = torch.randn(2, *input_shape, generator=torch.Generator().manual_seed(0))
    base_graph = _Graph(model, input_shape, exclude)
    groups = base_graph.groups()
    report.update({g: f"skipped: {why}" for g, why in base_graph.skipped.items()})
    for group_id, (info, _) in groups.items():
        if info.channels < 2:
            report[group_id] = "skipped: one channel"
            continue
        variant = copy.deepcopy(model).eval()
        graph = _Graph(variant, input_shape, exclude)
        group = graph.groups()[group_id][1]
        n_remove = max(1, int(info.channels * fraction))
        idxs = list(range(n_remove))  # the first ones: a surgery that loses track shifts every index
        silenced = _silence(graph, group, idxs)
        with torch.no_grad():
            before = variant(x)
        try:
            prune_group(variant, group_id, n_remove, input_shape, channels=idxs)
            with torch.no_grad():
                after = variant(x)
        except Exception as exc:  # noqa: BLE001 - the pruned network does not run
            raise SurgeryError(_surgery_message(info, f"the pruned network fails ({type(exc).__name__}: "
                                                      f"{str(exc)[:200]})")) from None
        if after.shape != before.shape:
            raise SurgeryError(_surgery_message(info, f"the output shape changes {tuple(before.shape)} -> "
                                                      f"{tuple(after.shape)}"))
        diff = (before - after).abs().max().item()
        scale = before.abs().max().item()  # float sums in another order differ in proportion to the output
        if silenced and not diff <= atol + 1e-3 * scale:
            raise SurgeryError(_surgery_message(
                info, f"removing silenced channels changes the output by {diff:.3g} (outputs up to {scale:.3g})"))
        report[group_id] = "function" if silenced else "shape"
    return report


def _surgery_message(info: PrunableGroup, why: str) -> str:
    return (f"pruning group {info.id} (layers {', '.join(info.members)}) breaks the network: {why}. "
            f"Fix: exclude it, e.g. --set 'adapt.exclude=[\"{info.id}\"]', or report the network to netadapt")
