"""The resource schedule: the budgets, and how much of a resource each iteration must remove.

Iteration i (from 0) targets ``resource(net_i) - delta_i`` with ``delta_i = delta_0 * decay**i``;
``delta_0`` is absolute (``adapt.initial_reduction``, in the primary resource's unit; it wins over
the ratio) or a share of the start network's value (``adapt.initial_reduction_ratio``). Once the
primary budget holds, an iteration is driven by the first secondary budget (``adapt.constraints``)
still unmet, with the same share of *its* start value.
"""

from __future__ import annotations

from .config import AdaptConfig
from .resources import Budget


def budgets(start: dict[str, float], cfg: AdaptConfig) -> list[Budget]:
    """Every budget of the run, the primary first; ``start`` maps a resource to the start network's value."""
    primary = cfg.budget if cfg.budget is not None else start[cfg.resource] * float(cfg.budget_ratio)
    found = [Budget(cfg.resource, primary, primary=True)]
    for resource, spec in cfg.constraints.items():
        limit = spec.max if spec.max is not None else start[resource] * float(spec.ratio)
        found.append(Budget(resource, limit, primary=False))
    return found


def reduction(iteration: int, resource: str, start: dict[str, float], cfg: AdaptConfig) -> float:
    """delta_i: how much of ``resource`` iteration ``iteration`` (0-based) must remove."""
    if cfg.initial_reduction is None:
        delta0 = start[resource] * float(cfg.initial_reduction_ratio)
    elif resource == cfg.resource:
        delta0 = float(cfg.initial_reduction)
    else:  # absolute, in the primary's unit: the same share of this secondary's start
        delta0 = start[resource] * float(cfg.initial_reduction) / start[cfg.resource]
    return delta0 * cfg.reduction_decay**iteration


def unmet(values: dict[str, float], all_budgets: list[Budget]) -> list[Budget]:
    """The budgets ``values`` (resource -> value) do not meet, in order (primary first)."""
    return [b for b in all_budgets if not b.met(values[b.resource])]
