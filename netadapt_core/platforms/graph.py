"""Platforms that time each module as a compiled graph (an ONNX model, an ExecuTorch program), and
the correction that turns a one-layer graph's time into what the layer costs inside a network.

A one-layer graph pays at its input and output what the layer does not pay inside a network: the
per-run overhead and a reorder into and out of the runtime's own layout (ONNX Runtime's blocked
NCHWc, XNNPACK's NHWC); summed, these made MobileNetV1's layers 60% slower than the network on ONNX
Runtime. So a layer's entry is its graph's time minus the *boundary* cost at its input and output
shapes, ``B(S) = 2 T[P] - T[P, P]`` for a probe ``P`` (a depthwise 3x3 conv) on shape ``S``: half of
``B(in)`` plus half of ``B(out)``. A BatchNorm or activation, folded into the conv before it in a
network, is timed as ``T[P, layer] - T[P]``. Both are floored at 0.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import torch
from torch import nn

from ..config import PlatformConfig
from .base import Measurement, PlatformBase

MAX_WEIGHT_COPIES = 32
# layers a runtime folds or fuses into the conv before them (BatchNorm folding, Conv+Relu/Clip)
FUSED_AFTER_CONV: tuple[type[nn.Module], ...] = (nn.BatchNorm2d, nn.ReLU, nn.ReLU6)


def l2_cache_bytes() -> int:
    """This CPU's per-core L2 cache size (1 MiB when the system does not say)."""
    for index in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            if (index / "level").read_text().strip() == "2":
                size = (index / "size").read_text().strip().upper()
                units = {"K": 1 << 10, "M": 1 << 20}
                return int(size[:-1]) * units[size[-1]] if size[-1] in units else int(size)
        except (OSError, ValueError):
            break
    return 1 << 20


def _probe(shape: tuple[int, ...]) -> nn.Module:
    """A cheap shape-preserving layer that a runtime lays out like a network's convs; its weights
    are fixed, so that a platform caching compiled programs by content compiles it once per shape."""
    if len(shape) == 4:
        conv = nn.Conv2d(shape[1], shape[1], 3, padding=1, groups=shape[1], bias=False)
        with torch.no_grad():
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=torch.Generator().manual_seed(0)))
        return conv
    return nn.ReLU()


class GraphPlatform(PlatformBase):
    """Times modules as compiled graphs: subclasses implement ``_run`` with the extra keywords
    ``cold_weights`` (cycle copies of big weights, as inside a network) and ``probe`` (a pair of
    one-layer graphs: shorter interleaved blocks); layers are corrected as the module docstring says."""

    layer_timing = "graph minus boundary 2T[P]-T[PP]; BatchNorm2d, ReLU, ReLU6 as T[P,layer]-T[P]"

    def __init__(self, cfg: PlatformConfig) -> None:
        super().__init__(cfg)
        self._boundary: dict[tuple[int, ...], float] = {}
        self._working_set = 2 * l2_cache_bytes()

    def weight_copies(self, weight_bytes: int, cold_weights: bool) -> int:
        """How many copies of a compiled graph to time round-robin so that its weights come from
        beyond L2, as inside a network: enough to fill twice L2, when that takes at most
        ``MAX_WEIGHT_COPIES`` (smaller weights cost little from L3, and cycling that many copies
        would chill their activation buffers instead); 1 when ``cold_weights`` is off."""
        copies = math.ceil(self._working_set / weight_bytes) if cold_weights else 1
        return 1 if copies > MAX_WEIGHT_COPIES else copies

    def _run(self, modules: list[nn.Module], input_shape: tuple[int, ...], repeats: int,
             cold_weights: bool = False, probe: bool = False) -> list[Measurement]:
        raise NotImplementedError

    def boundary_ms(self, shape: tuple[int, ...]) -> float:
        """Cost of a graph's input and output at ``shape`` (cached per shape): ``2 T[P] - T[P, P]``."""
        shape = (self.cfg.batch_size, *shape[1:])
        if shape not in self._boundary:
            probe = _probe(shape)
            once, twice = self._run([probe, nn.Sequential(probe, probe)], shape, self.cfg.repeats, probe=True)
            self._boundary[shape] = max(0.0, 2 * once.median_ms - twice.median_ms)
        return self._boundary[shape]

    def measure_layer(self, module: nn.Module, input_shape: tuple[int, ...]) -> Measurement:
        """The layer's cost inside a network (see the module docstring)."""
        if isinstance(module, FUSED_AFTER_CONV) and len(input_shape) == 4:
            probe = _probe(input_shape)
            alone, fused = self._run([probe, nn.Sequential(probe, copy.deepcopy(module))], input_shape,
                                     self.cfg.repeats, probe=True)
            return Measurement(max(0.0, fused.median_ms - alone.median_ms), alone.iqr_ms + fused.iqr_ms,
                               fused.samples)
        was_training = module.training
        with torch.no_grad():
            output_shape = tuple(module.eval()(torch.zeros(1, *input_shape[1:])).shape)
        module.train(was_training)
        boundary = (self.boundary_ms(input_shape) + self.boundary_ms(output_shape)) / 2
        graph = self._run([module], input_shape, self.cfg.repeats, cold_weights=True)[0]
        return Measurement(max(0.0, graph.median_ms - boundary), graph.iqr_ms, graph.samples)
