"""The resource schedule: the budget, and how much latency each iteration must remove.

Iteration i (from 0) targets ``resource(net_i) - delta_i`` with ``delta_i = delta_0 * decay**i``;
``delta_0`` is absolute (``adapt.initial_reduction_ms``) or a share of the starting latency.
"""

from __future__ import annotations

from .config import AdaptConfig


def budget_ms(start_ms: float, cfg: AdaptConfig) -> float:
    """The latency the adapted network must reach."""
    return cfg.budget_ms if cfg.budget_ms is not None else start_ms * float(cfg.budget_ratio)


def reduction_ms(iteration: int, start_ms: float, cfg: AdaptConfig) -> float:
    """delta_i: latency iteration ``iteration`` (0-based) must remove."""
    if cfg.initial_reduction_ms is not None:
        delta0 = cfg.initial_reduction_ms
    else:
        delta0 = start_ms * float(cfg.initial_reduction_ratio)
    return delta0 * cfg.reduction_decay**iteration


def budget_met(latency_ms: float, start_ms: float, cfg: AdaptConfig) -> bool:
    return latency_ms <= budget_ms(start_ms, cfg)
