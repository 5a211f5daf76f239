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

Modules: ``signatures`` (keys, the channel grid, variants, width templates), ``table``
(``LatencyLUT``, ``LatencyEstimator``), ``build`` (``build_lut`` and its calibration).
"""

from __future__ import annotations

from .build import CALIBRATION_NETWORKS, build_lut
from .signatures import (
    ChannelGrid,
    GroupGrid,
    LayerUse,
    WidthTemplate,
    channel_grid,
    layer_uses,
    min_channels,
    network_fingerprint,
    random_variant,
    uniform_variant,
)
from .table import LUT_FORMAT, OVERLAY_FORMAT, LatencyEstimator, LatencyLUT, LutError

__all__ = [
    "CALIBRATION_NETWORKS",
    "LUT_FORMAT",
    "OVERLAY_FORMAT",
    "ChannelGrid",
    "GroupGrid",
    "LatencyEstimator",
    "LatencyLUT",
    "LayerUse",
    "LutError",
    "WidthTemplate",
    "build_lut",
    "channel_grid",
    "layer_uses",
    "min_channels",
    "network_fingerprint",
    "random_variant",
    "uniform_variant",
]
