"""Filter-importance criteria: which filters of a group to keep.

NetAdapt keeps the filters with the largest L2 norm. A criterion maps a Torch-Pruning group (all the
layers coupled to one prunable set of channels) to one score per channel; higher means keep.
Register more with ``@IMPORTANCE.register("name")``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .registry import Registry

ImportanceFn = Callable[..., torch.Tensor]
IMPORTANCE: Registry[ImportanceFn] = Registry("importance criterion")


def _is_depthwise(module: nn.Module) -> bool:
    return isinstance(module, nn.Conv2d) and module.groups > 1 and module.groups == module.in_channels


def _filter_norm_scores(group, graph, p: float) -> torch.Tensor:
    """Per root channel: the p-norm of its filters over every coupled conv/linear that outputs it.

    Depthwise filters only count when the group has no ordinary conv (their 9 weights say little).
    """
    n_channels = len(group[0].root_idxs)
    items = [
        item
        for item in group
        if graph.is_out_channel_pruning_fn(item.dep.handler)
        and isinstance(item.dep.target.module, (nn.Conv2d, nn.Linear))
    ]
    ordinary = [item for item in items if not _is_depthwise(item.dep.target.module)]
    scores = torch.zeros(n_channels, dtype=torch.float64)
    for item in ordinary or items:
        weight = item.dep.target.module.weight.detach().flatten(1).double()
        norms = weight[torch.as_tensor(item.idxs)].abs().pow(p).sum(1)
        scores.index_add_(0, torch.as_tensor(item.root_idxs), norms)
    return scores.pow(1.0 / p)


@IMPORTANCE.register("l2_norm")
def l2_norm(group, graph) -> torch.Tensor:
    """The paper's criterion: L2 norm of each filter."""
    return _filter_norm_scores(group, graph, 2.0)


@IMPORTANCE.register("l1_norm")
def l1_norm(group, graph) -> torch.Tensor:
    """L1 norm of each filter (Li et al., 2017)."""
    return _filter_norm_scores(group, graph, 1.0)


def least_important(scores: torch.Tensor, n_remove: int) -> list[int]:
    """Indices of the ``n_remove`` lowest scores; ties go to the higher index (deterministic)."""
    order = sorted(range(len(scores)), key=lambda i: (float(scores[i]), -i))
    return sorted(order[:n_remove])
