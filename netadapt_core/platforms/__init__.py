"""Target platforms: where and how latency is measured, directly, never by proxy.

One module a platform, all satisfying ``base.Platform``:

- ``torch_eager``: ``torch-cpu`` (eager PyTorch on this CPU), ``torch-cuda`` (on a GPU,
  ``platform.torch-cuda.device``).
- ``onnxruntime``: ``onnxruntime-cpu``, the module exported to ONNX and run by an ONNX Runtime CPU
  session (``platform.onnxruntime-cpu.*``); ``onnx`` holds the export and the one-layer-graph
  correction every ONNX platform shares.
- ``executorch_cpu``: ``executorch``, PyTorch's on-device runtime: the module lowered to ExecuTorch's
  XNNPACK backend and run in its Python runtime on this CPU (``platform.executorch.backend``).
- ``command``: the module exported to ONNX and timed by a user command (a phone over adb, a board
  over ssh) that prints the latency (``platform.command.*``).

``graph`` holds the one-layer-graph correction every compiled-graph platform shares (ONNX,
ExecuTorch); ``timing`` is the shared harness (warm-up, samples of at least ``min_sample_ms``, interleaving,
medians). A new platform is one module: a ``PlatformBase`` subclass with its ``Settings`` model,
registered here or by a plug-in with ``@PLATFORMS.register("name")``.
"""

from __future__ import annotations

from ..config import PlatformConfig
from ..registry import Registry
from .base import (
    ALLOCATOR_ENV,
    Measurement,
    Platform,
    PlatformBase,
    PlatformError,
    cpu_model,
    host_metadata,
    measure_relative,
)
from .command import CommandPlatform, CommandSettings, parse_latency
from .executorch_cpu import ExecuTorchCPU, ExecuTorchSettings, LoadedProgram, lower_to_executorch
from .graph import GraphPlatform, l2_cache_bytes
from .onnx import OnnxGraphPlatform, OnnxSettings, export_onnx
from .onnxruntime import OnnxRuntimeCPU, OnnxRuntimeSettings
from .timing import time_callable, time_callables
from .torch_eager import TorchCPU, TorchCUDA, TorchCUDASettings

PLATFORMS: Registry = Registry("platform")
PLATFORMS.register("torch-cpu")(TorchCPU)
PLATFORMS.register("torch-cuda")(TorchCUDA)
PLATFORMS.register("onnxruntime-cpu")(OnnxRuntimeCPU)
PLATFORMS.register("command")(CommandPlatform)
PLATFORMS.register("executorch")(ExecuTorchCPU)


def make_platform(cfg: PlatformConfig) -> Platform:
    return PLATFORMS.get(cfg.name)(cfg)


__all__ = [
    "ALLOCATOR_ENV",
    "PLATFORMS",
    "CommandPlatform",
    "CommandSettings",
    "ExecuTorchCPU",
    "ExecuTorchSettings",
    "GraphPlatform",
    "LoadedProgram",
    "Measurement",
    "OnnxGraphPlatform",
    "OnnxRuntimeCPU",
    "OnnxRuntimeSettings",
    "OnnxSettings",
    "Platform",
    "PlatformBase",
    "PlatformError",
    "TorchCPU",
    "TorchCUDA",
    "TorchCUDASettings",
    "cpu_model",
    "export_onnx",
    "host_metadata",
    "l2_cache_bytes",
    "lower_to_executorch",
    "make_platform",
    "measure_relative",
    "parse_latency",
    "time_callable",
    "time_callables",
]
