"""Structured pruning of whole filters, with Torch-Pruning's dependency graph fixing coupled layers.

A *group* is one NetAdapt "layer": a set of channels that must be removed together (a conv's
filters plus its BN, the next depthwise conv and the next layer's inputs; or every conv feeding one
residual add). Groups are named by their first conv/linear layer in module order, a name that stays
stable as the network shrinks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import nn

from .importance import IMPORTANCE, least_important
from .layers import channel_spec
from .models import classifier_of


@dataclass(frozen=True)
class PrunableGroup:
    id: str
    channels: int
    members: tuple[str, ...]  # layers whose output channels the group removes


class _Graph:
    """A dependency graph of ``model`` traced in eval mode (tracing must not touch BN statistics)."""

    def __init__(self, model: nn.Module, input_shape: tuple[int, ...]) -> None:
        channel_spec(model)  # fails early, with a clear message, on unsupported layers
        self.model = model
        self.names = {m: n for n, m in model.named_modules()}
        self.order = {n: i for i, n in enumerate(self.names.values())}
        was_training = model.training
        model.eval()
        with torch.enable_grad():
            self.graph = tp.DependencyGraph().build_dependency(
                model, example_inputs=torch.zeros(1, *input_shape), verbose=False
            )
        model.train(was_training)
        self.classifier = classifier_of(model)

    def _describe(self, group) -> PrunableGroup:
        members = sorted(
            {
                self.names[item.dep.target.module]
                for item in group
                if self.graph.is_out_channel_pruning_fn(item.dep.handler)
                and isinstance(item.dep.target.module, (nn.Conv2d, nn.Linear))
            },
            key=self.order.__getitem__,
        )
        return PrunableGroup(members[0], len(group[0].idxs), tuple(members))

    def groups(self) -> dict[str, tuple[PrunableGroup, object]]:
        found = {}
        for group in self.graph.get_all_groups(
            ignored_layers=[self.classifier], root_module_types=(nn.Conv2d, nn.Linear)
        ):
            info = self._describe(group)
            found[info.id] = (info, group)
        return dict(sorted(found.items(), key=lambda kv: self.order[kv[0]]))


def prunable_groups(model: nn.Module, input_shape: tuple[int, ...]) -> list[PrunableGroup]:
    """Every prunable group of ``model`` (input ``input_shape`` = C, H, W), in module order."""
    return [info for info, _ in _Graph(model, input_shape).groups().values()]


def prune_group(
    model: nn.Module,
    group_id: str,
    n_remove: int,
    input_shape: tuple[int, ...],
    importance: str = "l2_norm",
) -> list[int]:
    """Remove, in place, the ``n_remove`` least important filters of group ``group_id``.

    Returns the removed channel indices (of the group's current channels). Every coupled layer is
    fixed; a forward pass then checks the network still runs and keeps its output shape.
    """
    graph = _Graph(model, input_shape)
    groups = graph.groups()
    if group_id not in groups:
        raise KeyError(f"no prunable group {group_id!r}; groups: {', '.join(groups)}")
    info, full_group = groups[group_id]
    if not 0 < n_remove < info.channels:
        raise ValueError(f"group {group_id} has {info.channels} channels; cannot remove {n_remove}")
    scores = IMPORTANCE.get(importance)(full_group, graph.graph)
    removed = least_important(scores, n_remove)
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
