"""Building the table: every layer shape a single-group pruning can reach, measured on the
platform, checked for monotonic widths, then ``scale`` and ``rest_ms`` fitted on the start and
random non-uniform variants timed interleaved with it (``_calibrate``)."""

from __future__ import annotations

import copy
import itertools
import random
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from ..checkpoint import Architecture
from ..config import LutConfig
from ..layers import layer_kind, resized
from ..platforms import measure_relative
from ..surgery import dependency_graph, prunable_groups, prune_group
from .signatures import GroupGrid, LayerUse, network_fingerprint, random_variant
from .table import LatencyEstimator, LatencyLUT


def _non_monotonic(lut: LatencyLUT, series: dict[Any, list[tuple[int, str]]], tolerance: float) -> set[str]:
    """Signatures where more channels measured faster than fewer, beyond ``tolerance``."""
    suspects: set[str] = set()
    for points in series.values():
        points = sorted(points)
        for (_, small), (_, large) in itertools.pairwise(points):
            if small == large:
                continue
            if lut.entries[large]["ms"] < lut.entries[small]["ms"] * (1 - tolerance):
                suspects.update((small, large))
    return suspects


def build_lut(
    model: nn.Module,
    arch: Architecture,
    input_shape: tuple[int, ...],
    platform,
    cfg: LutConfig,
    existing: LatencyLUT | None = None,
    log: Callable[[str], None] = print,
) -> LatencyLUT:
    """Measure the LUT for ``model``: every layer at every grid point of every group, then ``rest_ms``.

    Entries of ``existing`` (same platform and network) are reused, so an interrupted build resumes.
    """
    started = time.perf_counter()
    meta = platform.metadata()
    network = network_fingerprint(arch, input_shape)
    groups = prunable_groups(model, input_shape)
    grid = {g.id: GroupGrid.of(g.channels, cfg.channel_step, cfg.min_channel_ratio) for g in groups}
    lut = existing or LatencyLUT(meta, network, grid)
    lut.check_compatible(meta, network, "(existing)")
    lut.grid = grid
    estimator = LatencyEstimator(lut, platform, input_shape, measure_missing=True)
    measured_before = len(lut.entries)
    base_uses = estimator.uses(model)
    base_sig = {u.name: u.signature for u in base_uses}
    series: dict[tuple[str, str], list[tuple[int, str]]] = defaultdict(list)
    remeasure: dict[str, _LayerRecipe] = {}
    templates = dict(model.named_modules())
    variants = 0
    estimator.fill(base_uses)
    for group in groups:
        variant = copy.deepcopy(model)
        graph = dependency_graph(variant, input_shape)  # traced once, pruned step by step
        current = group.channels
        for channels in grid[group.id].widths():
            if channels < current:
                prune_group(variant, group.id, current - channels, input_shape, graph=graph)
                current = channels
            uses = estimator.uses(variant)
            estimator.fill(uses)
            variants += 1
            for use in uses:
                if use.signature != base_sig.get(use.name) or channels == group.channels:
                    series[(group.id, use.name)].append((channels, use.signature))
                    remeasure.setdefault(use.signature, _LayerRecipe.of(use))
        log(f"  lut: group {group.id} ({group.channels} ch) done, {len(lut.entries)} entries")
    if existing is not None and existing.rest_ms is not None and len(lut.entries) == measured_before:
        # nothing new was measured: keep the rest term timed right after the entries it complements
        log(f"  lut: the existing table already covers the grid ({len(lut.entries)} entries); kept")
        return lut
    suspects = _non_monotonic(lut, series, cfg.monotonic_tolerance)
    first_suspects = len(suspects)
    for _ in range(cfg.remeasure_rounds):
        if not suspects:
            break
        for sig in sorted(suspects):
            module, shape = _fresh_layer(remeasure[sig], templates)
            lut.record(sig, platform.measure_layer(module, shape))
        suspects = _non_monotonic(lut, series, cfg.monotonic_tolerance)
    pairs = sum(max(len({s for _, s in p}) - 1, 0) for p in series.values())
    network_ms, fit = _calibrate(lut, estimator, model, input_shape, platform, cfg, log)
    lut.environment = platform.environment()
    lut.stats = {
        "entries": len(lut.entries),
        "variants": variants,
        "neighbour_pairs": pairs,
        "non_monotonic_first": first_suspects,
        "non_monotonic_after_remeasure": len(suspects),
        "network_ms": network_ms,
        "calibration": fit,
        "build_seconds": round(time.perf_counter() - started, 1),
    }
    log(
        f"  lut: {len(lut.entries)} entries, network {network_ms:.3f} ms, estimate = {lut.scale:.3f} x layers "
        f"+ {lut.rest_ms:.3f} ms, "
        f"non-monotonic signatures {first_suspects} -> {len(suspects)} after re-measuring"
    )
    return lut


CALIBRATION_NETWORKS = 5  # random non-uniform networks the estimate is fitted on, besides the start


CALIBRATION_SEED = 0


def _calibrate(lut: LatencyLUT, estimator: LatencyEstimator, model: nn.Module, input_shape, platform,
               cfg: LutConfig, log: Callable[[str], None] = print) -> tuple[float, list[dict[str, float]]]:
    """Fit ``network = scale * sum(layers) + rest`` on the start network and ``CALIBRATION_NETWORKS``
    random non-uniform variants (networks like an adaptation's, kept apart from the uniform-width
    networks ``lut --check`` tests on).

    Layers timed alone in a loop run with hot caches and without the calls between them, so the sum
    falls short of the network by a share of itself plus a fixed cost. Each variant is timed
    *interleaved* with the start network and taken as that ratio times the start's own time: timed
    one after another, minutes apart, a shared CPU's drift (6-20% here) tilted the fitted line, and
    the estimate of small networks fell 10-20% short.
    """
    rng = random.Random(CALIBRATION_SEED)
    variants = [random_variant(model, input_shape, lut.grid, rng, (k + 1) / CALIBRATION_NETWORKS)
                for k in range(CALIBRATION_NETWORKS)]
    sums = []
    for network in [model, *variants]:
        uses = estimator.uses(network)
        estimator.fill(uses)
        sums.append(lut.layer_sum_ms(uses))
    # the start alone, as it runs when deployed; the fastest of two passes (noise only adds time)
    start_ms = min(platform.measure_network(model, input_shape).median_ms for _ in range(2))
    measured = [start_ms]
    measured += [own.median_ms / ref.median_ms * start_ms
                 for own, ref in measure_relative(platform, variants, model, input_shape)]
    n = len(sums)
    mean_s, mean_m = sum(sums) / n, sum(measured) / n
    var = sum((s - mean_s) ** 2 for s in sums)
    scale = sum((s - mean_s) * (m - mean_m) for s, m in zip(sums, measured)) / var if var > 0 else 1.0
    rest = mean_m - scale * mean_s
    # A slope far from 1, or a negative fixed cost beyond a quarter of the network, is noise: it would
    # send small networks' estimates toward zero or below. Fall back to a plain ratio (no fixed cost).
    if not 0.5 <= scale <= 2.0 or rest < -0.25 * start_ms:
        ratio = sum(s * m for s, m in zip(sums, measured)) / sum(s * s for s in sums)
        log(f"  lut: calibration {scale:.3f} x layers {rest:+.3f} ms is implausible (noise?); "
            f"using {ratio:.3f} x layers")
        scale, rest = ratio, 0.0
    lut.scale = scale
    lut.rest_ms = rest
    if lut.rest_ms < -0.05 * start_ms or not 0.8 <= scale <= 1.3:
        log(f"  lut: warning: calibration {scale:.3f} x layers {lut.rest_ms:+.3f} ms is unusual for a CPU; if "
            "the machine was busy, rebuild the LUT on an idle one (the adaptation re-fits its own slope)")
    fit = [{"network": "start" if i == 0 else f"random_{i}", "layer_sum_ms": s, "measured_ms": m}
           for i, (s, m) in enumerate(zip(sums, measured))]
    return start_ms, fit


@dataclass(frozen=True)
class _LayerRecipe:
    """Enough to rebuild a measured layer later without keeping its weights alive."""

    name: str
    channels: dict[str, int] | None
    input_shape: tuple[int, ...]

    @classmethod
    def of(cls, use: LayerUse) -> _LayerRecipe:
        kind = layer_kind(use.module, use.name)
        return cls(use.name, kind.channels(use.module) if kind else None, use.input_shape)


def _fresh_layer(recipe: _LayerRecipe, templates: dict[str, nn.Module]) -> tuple[nn.Module, tuple[int, ...]]:
    template = templates[recipe.name]
    if recipe.channels is None:
        return copy.deepcopy(template), recipe.input_shape
    return resized(template, recipe.channels, recipe.name), recipe.input_shape

