"""Layer-wise latency lookup table (LUT), measured on the target platform.

Each entry is keyed by a layer *signature* (type, settings, channels, input shape, dtype), so
identical layers share one measurement. A network's estimate is ``scale`` times the sum of its
layers' entries plus ``rest_ms``, both fitted at build time on the starting network and random
non-uniform variants, each timed interleaved with the start (see ``_calibrate``). An adaptation
uses the table's *differences*, anchored on measured networks (``latency_model``).

``build_lut`` measures, for every prunable group, every channel count an adaptation can reach by
pruning that group alone (a grid with ``lut.channel_step`` spacing down to
``lut.min_channel_ratio``). Combinations met later during adaptation are measured on demand by
``LatencyEstimator`` (``lut.measure_missing``) and saved in an overlay file beside it.
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import random
import re
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .checkpoint import Architecture, atomic_write_json
from .config import LutConfig
from .errors import NetAdaptError
from .layers import layer_kind, leaf_modules, resized, signature
from .platforms import measure_relative
from .surgery import dependency_graph, prunable_groups, prune_group

LUT_FORMAT = "netadapt-lut/1"
OVERLAY_FORMAT = "netadapt-lut-on-demand/1"


class LutError(NetAdaptError, RuntimeError):
    """The LUT is corrupt, from another platform or network, or lacks entries."""


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


def uniform_variant(model, input_shape, grid: dict[str, dict[str, int]], ratio: float):
    """A copy of ``model`` with every group cut to the grid width nearest ``ratio`` of the original."""
    variant = copy.deepcopy(model)
    for group in prunable_groups(variant, input_shape):
        g = grid[group.id]
        options = channel_grid(g["original"], g["step"], g["min"])
        want = min(options, key=lambda c: abs(c - ratio * g["original"]))
        if want < group.channels:
            prune_group(variant, group.id, group.channels - want, input_shape)
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


class LatencyLUT:
    """The table itself: platform metadata, network fingerprint, grid, entries, rest term."""

    def __init__(
        self,
        platform: dict[str, Any],
        network: dict[str, Any],
        grid: dict[str, dict[str, int]],
        entries: dict[str, dict[str, Any]] | None = None,
        rest_ms: float | None = None,
        scale: float = 1.0,
        environment: dict[str, Any] | None = None,
        stats: dict[str, Any] | None = None,
    ) -> None:
        self.platform = platform
        self.network = network
        self.grid = grid
        self.entries = entries or {}
        self.rest_ms = rest_ms
        self.scale = scale
        self.environment = environment or {}
        self.stats = stats or {}

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": LUT_FORMAT,
            "platform": self.platform,
            "network": self.network,
            "grid": self.grid,
            "rest_ms": self.rest_ms,
            "scale": self.scale,
            "environment": self.environment,
            "stats": self.stats,
            "entries": self.entries,
        }

    def save(self, path: str | Path) -> None:
        atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> LatencyLUT:
        path = Path(path)
        if not path.is_file():
            raise LutError(f"LUT {path} does not exist; build it with `netadapt lut`")
        try:
            raw = json.loads(path.read_text())
            if raw.get("format") != LUT_FORMAT:
                raise ValueError(f"format is {raw.get('format')!r}, expected {LUT_FORMAT!r}")
            for entry in raw["entries"].values():
                if not (isinstance(entry["ms"], (int, float)) and entry["ms"] >= 0):
                    raise ValueError(f"bad entry {entry!r}")
            return cls(
                raw["platform"], raw["network"], raw["grid"], raw["entries"], raw["rest_ms"],
                raw.get("scale", 1.0), raw.get("environment"), raw.get("stats"),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise LutError(
                f"LUT {path} is corrupt ({type(exc).__name__}: {exc}). Fix: delete it and rebuild with "
                "`netadapt lut`, or restore it with `dvc checkout`."
            ) from None

    def check_compatible(self, platform_meta: dict[str, Any], network: dict[str, Any], where: str = "") -> None:
        """Refuse a table measured on another platform or for another network."""
        if self.platform != platform_meta:
            diff = {
                k: (self.platform.get(k), platform_meta.get(k))
                for k in sorted(set(self.platform) | set(platform_meta))
                if self.platform.get(k) != platform_meta.get(k)
            }
            raise LutError(
                f"LUT {where} was measured on another platform (key: LUT value, this run): {diff}. "
                "Fix: rebuild it with `netadapt lut`, or set lut.path to a table for this platform."
            )
        if self.network != network:
            raise LutError(
                f"LUT {where} was built for network {self.network}, but this run adapts {network}. "
                "Fix: rebuild it with `netadapt lut` for this model, or set lut.path accordingly."
            )

    def record(self, sig: str, measurement) -> None:
        """Store a measurement; repeated rounds keep the lowest median (CPU noise only adds time)."""
        new = measurement.to_dict()
        old = self.entries.get(sig)
        if old is not None and old["ms"] <= new["ms"]:
            old["rounds"] = old.get("rounds", 1) + 1
            return
        new["rounds"] = (old or {}).get("rounds", 0) + 1
        self.entries[sig] = new

    def layer_sum_ms(self, uses: list[LayerUse]) -> float:
        missing = [u.signature for u in uses if u.signature not in self.entries]
        if missing:
            raise LutError(
                f"LUT lacks {len(missing)} layer signature(s), e.g. {missing[0]}. Fix: enable "
                "lut.measure_missing, or rebuild the LUT with `netadapt lut` for this network."
            )
        return sum(self.entries[u.signature]["ms"] for u in uses)


class LatencyEstimator:
    """Estimates a network's latency from the LUT, measuring missing signatures when allowed.

    Entries measured on demand go to an *overlay* file (``attach``), never into the LUT file itself,
    so the LUT stays the LUT stage's output (DVC) while an adaptation keeps what it measured.
    """

    def __init__(self, lut: LatencyLUT, platform, input_shape: tuple[int, ...], measure_missing: bool) -> None:
        self.lut = lut
        self.platform = platform
        self.input_shape = tuple(input_shape)
        self.measure_missing = measure_missing
        self.overlay: Path | None = None
        self.added: dict[str, dict[str, Any]] = {}

    @property
    def measured_on_demand(self) -> int:
        return len(self.added)

    def attach(self, overlay: str | Path) -> None:
        """Read entries measured on demand earlier from ``overlay``; ``save`` writes there.

        An overlay for another platform or network (the LUT was rebuilt) is ignored and replaced.
        """
        self.overlay = Path(overlay)
        if not self.overlay.is_file():
            return
        try:
            raw = json.loads(self.overlay.read_text())
            if raw.get("format") != OVERLAY_FORMAT:
                raise ValueError(f"format is {raw.get('format')!r}")
            entries = raw["entries"]
        except (ValueError, KeyError, TypeError) as exc:
            raise LutError(f"{self.overlay} is corrupt ({exc}); delete it (its entries are re-measured)") from None
        if raw.get("platform") != self.lut.platform or raw.get("network") != self.lut.network:
            return
        for sig, entry in entries.items():
            self.lut.entries.setdefault(sig, entry)
            self.added.setdefault(sig, entry)

    def uses(self, model: nn.Module) -> list[LayerUse]:
        return layer_uses(model, self.input_shape, self.platform.cfg.batch_size, self.platform.dtype)

    def fill(self, uses: list[LayerUse]) -> int:
        """Measure the signatures of ``uses`` the table lacks; returns how many were measured."""
        todo = {u.signature: u for u in uses if u.signature not in self.lut.entries}
        if todo and not self.measure_missing:
            return 0
        for sig, use in todo.items():
            self.lut.record(sig, self.platform.measure_layer(copy.deepcopy(use.module), use.input_shape))
            self.added[sig] = self.lut.entries[sig]
        return len(todo)

    def layer_sum_ms(self, model: nn.Module) -> float:
        """The layers' share of the estimate: ``scale`` times the sum of their entries."""
        uses = self.uses(model)
        self.fill(uses)
        return self.lut.scale * self.lut.layer_sum_ms(uses)

    def signature_sum_ms(self, signatures: list[str]) -> float | None:
        """``layer_sum_ms`` of a network given by its layer signatures; None when the table lacks
        one (measuring it needs the layer: build the network instead)."""
        entries = self.lut.entries
        if any(sig not in entries for sig in signatures):
            return None
        return self.lut.scale * sum(entries[sig]["ms"] for sig in signatures)

    def estimate_ms(self, model: nn.Module) -> float:
        if self.lut.rest_ms is None:
            raise LutError("LUT has no rest term; rebuild it with `netadapt lut`")
        return self.layer_sum_ms(model) + self.lut.rest_ms

    def save(self) -> None:
        """Write the on-demand entries to the attached overlay (nothing when none is attached)."""
        if self.overlay is not None:
            atomic_write_json(self.overlay, {"format": OVERLAY_FORMAT, "platform": self.lut.platform,
                                             "network": self.lut.network, "entries": self.added})


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
    grid = {
        g.id: {"original": g.channels, "min": min_channels(g.channels, cfg.min_channel_ratio), "step": cfg.channel_step}
        for g in groups
    }
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
        for channels in channel_grid(group.channels, cfg.channel_step, grid[group.id]["min"]):
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


def random_variant(model, input_shape, grid: dict[str, dict[str, int]], rng: random.Random):
    """A copy of ``model`` where each group, with probability 1/2, is cut to a random grid width:
    non-uniform, like the networks an adaptation makes (a few groups cut, the rest untouched)."""
    variant = copy.deepcopy(model)
    for group in prunable_groups(variant, input_shape):
        g = grid[group.id]
        options = channel_grid(g["original"], g["step"], g["min"])[1:]
        if options and rng.random() < 0.5:
            prune_group(variant, group.id, group.channels - rng.choice(options), input_shape)
    return variant


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
    variants = [random_variant(model, input_shape, lut.grid, rng) for _ in range(CALIBRATION_NETWORKS)]
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
    if not 0.5 <= scale <= 2.0:  # a fit this far from 1 is noise: keep the plain offset
        log(f"  lut: calibration slope {scale:.3f} is implausible (noise?); using 1 and an offset")
        scale = 1.0
    lut.scale = scale
    lut.rest_ms = mean_m - scale * mean_s
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
