"""Platforms that time exported ONNX graphs: the export (``export_onnx``) and ``OnnxGraphPlatform``."""

from __future__ import annotations

import importlib.util
import io
import warnings
from typing import Any, ClassVar

import torch
from pydantic import Field
from torch import nn

from ..config import PlatformConfig, PlatformSettings
from .base import Measurement, PlatformError
from .graph import GraphPlatform


class OnnxSettings(PlatformSettings):
    """Settings of a platform that exports ONNX graphs."""

    onnx_opset: int = Field(17, ge=9, le=23, description="ONNX opset of the export")


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


class OnnxGraphPlatform(GraphPlatform):
    """Times modules as exported ONNX graphs (subclasses implement ``_time_graphs``); layers are
    corrected for the graph's boundary and fusion as ``graph.GraphPlatform`` does."""

    Settings: ClassVar[type[PlatformSettings]] = OnnxSettings

    def __init__(self, cfg: PlatformConfig) -> None:
        if importlib.util.find_spec("onnx") is None:
            raise PlatformError(f"platform {self.name!r} exports to ONNX, which needs the onnx package. "
                                "Fix: .venv/bin/pip install onnx")
        super().__init__(cfg)

    def _time_graphs(self, graphs: list[bytes], input_shape: tuple[int, ...], repeats: int,
                     cold_weights: bool, probe: bool = False) -> list[Measurement]:
        raise NotImplementedError

    def _export(self, module: nn.Module, shape: tuple[int, ...]) -> bytes:
        """``module`` as the file the runtime times (an ONNX model here)."""
        return export_onnx(module, shape, self.options.onnx_opset)

    def _run(self, modules: list[nn.Module], input_shape: tuple[int, ...], repeats: int,
             cold_weights: bool = False, probe: bool = False) -> list[Measurement]:
        """Time ``modules`` as graphs; ``probe``: a pair of one-layer graphs (shorter interleaved blocks)."""
        shape = (self.cfg.batch_size, *input_shape[1:])
        return self._time_graphs([self._export(m, shape) for m in modules], shape, repeats, cold_weights, probe)

    def metadata(self) -> dict[str, Any]:
        # the exporter (torch) and opset shape the graph; entries timed another way do not compare
        return {"onnx_opset": self.options.onnx_opset, "torch": torch.__version__,
                "layer_timing": self.layer_timing}
