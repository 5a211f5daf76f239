"""Platforms that time exported ONNX graphs: the export, and the one-layer-graph correction that
turns a graph's time into what the layer costs inside a network (``OnnxGraphPlatform``)."""

from __future__ import annotations

import copy
import importlib.util
import io
import warnings
from typing import Any, ClassVar

import torch
from pydantic import Field
from torch import nn

from ..config import PlatformConfig, PlatformSettings
from .base import Measurement, PlatformBase, PlatformError


class OnnxSettings(PlatformSettings):
    """Settings of a platform that exports ONNX graphs."""

    onnx_opset: int = Field(17, ge=9, le=23, description="ONNX opset of the export")


# layers a runtime folds or fuses into the conv before them (BatchNorm folding, Conv+Relu/Clip)
FUSED_AFTER_CONV: tuple[type[nn.Module], ...] = (nn.BatchNorm2d, nn.ReLU, nn.ReLU6)


def export_onnx(module: nn.Module, input_shape: tuple[int, ...], opset: int, dynamic_batch: bool = False) -> bytes:
    """``module`` (eval mode) as an ONNX model with input ``input`` of a fixed shape, in memory.

    The TorchScript exporter (``dynamo=False``) needs no onnxscript, and in eval mode it folds
    BatchNorm into a preceding conv, as a deployment export does. ``dynamic_batch``: the first
    dimension of ``input`` and ``output`` is a symbol (``batch``) instead of ``input_shape[0]``.
    """
    was_training = module.training
    buffer = io.BytesIO()
    try:
        module.eval()
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice
            torch.onnx.export(
                module, (torch.zeros(input_shape),), buffer, dynamo=False, opset_version=opset,
                input_names=["input"], output_names=["output"], do_constant_folding=True,
                dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}} if dynamic_batch else None,
            )
    finally:
        module.train(was_training)
    return buffer.getvalue()


def _probe(shape: tuple[int, ...]) -> nn.Module:
    """A cheap shape-preserving layer that a runtime lays out like a network's convs."""
    if len(shape) == 4:
        return nn.Conv2d(shape[1], shape[1], 3, padding=1, groups=shape[1], bias=False)
    return nn.ReLU()


class OnnxGraphPlatform(PlatformBase):
    """Times modules as exported ONNX graphs; subclasses implement ``_time_graphs``.

    A one-layer graph pays at its input and output what the layer does not pay inside a network:
    the per-run overhead and, on ONNX Runtime's default level, a reorder into and out of its
    blocked (NCHWc) layout; summed, these made MobileNetV1's layers 60% slower than the network.
    So a layer's entry is its graph's time minus the *boundary* cost at its input and output
    shapes, ``B(S) = 2 T[P] - T[P, P]`` for a probe ``P`` (a depthwise 3x3 conv) on shape ``S``:
    half of ``B(in)`` plus half of ``B(out)``. A BatchNorm or activation, folded into the conv
    before it in a network, is timed as ``T[P, layer] - T[P]``. Both are floored at 0.
    """

    Settings: ClassVar[type[PlatformSettings]] = OnnxSettings
    layer_timing = "graph minus boundary 2T[P]-T[PP]; BatchNorm2d, ReLU, ReLU6 as T[P,layer]-T[P]"

    def __init__(self, cfg: PlatformConfig) -> None:
        if importlib.util.find_spec("onnx") is None:
            raise PlatformError(f"platform {self.name!r} exports to ONNX, which needs the onnx package. "
                                "Fix: .venv/bin/pip install onnx")
        super().__init__(cfg)
        self._boundary: dict[tuple[int, ...], float] = {}

    def _time_graphs(self, graphs: list[bytes], input_shape: tuple[int, ...], repeats: int,
                     cold_weights: bool, probe: bool = False) -> list[Measurement]:
        raise NotImplementedError

    def _run(self, modules: list[nn.Module], input_shape: tuple[int, ...], repeats: int,
             cold_weights: bool = False, probe: bool = False) -> list[Measurement]:
        """Time ``modules`` as graphs; ``probe``: a pair of one-layer graphs (shorter interleaved blocks)."""
        shape = (self.cfg.batch_size, *input_shape[1:])
        graphs = [export_onnx(m, shape, self.options.onnx_opset) for m in modules]
        return self._time_graphs(graphs, shape, repeats, cold_weights, probe)

    def boundary_ms(self, shape: tuple[int, ...]) -> float:
        """Cost of a graph's input and output at ``shape`` (cached per shape): ``2 T[P] - T[P, P]``."""
        shape = (self.cfg.batch_size, *shape[1:])
        if shape not in self._boundary:
            probe = _probe(shape)
            once, twice = self._run([probe, nn.Sequential(probe, probe)], shape, self.cfg.repeats, probe=True)
            self._boundary[shape] = max(0.0, 2 * once.median_ms - twice.median_ms)
        return self._boundary[shape]

    def measure_layer(self, module: nn.Module, input_shape: tuple[int, ...]) -> Measurement:
        """The layer's cost inside a network (see the class docstring)."""
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

    def metadata(self) -> dict[str, Any]:
        # the exporter (torch) and opset shape the graph; entries timed another way do not compare
        return {"onnx_opset": self.options.onnx_opset, "torch": torch.__version__,
                "layer_timing": self.layer_timing}
