"""``onnxruntime-cpu``: the network exported to ONNX, run by an ONNX Runtime CPU session."""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable
from typing import Any, Literal

from pydantic import Field

from ..config import PlatformConfig
from .base import Measurement, PlatformError, host_metadata
from .onnx import OnnxGraphPlatform, OnnxSettings
from .timing import INTERLEAVED_MIN_SAMPLE_MS, PROBE_MIN_SAMPLE_MS, time_callables


class OnnxRuntimeSettings(OnnxSettings):
    """``platform.onnxruntime-cpu``."""

    graph_optimization: Literal["disable", "basic", "extended", "all"] = Field(
        "all", description="ONNX Runtime's graph optimisation level"
    )


def ort_session_options(cfg: PlatformConfig, options: OnnxRuntimeSettings) -> Any:
    import onnxruntime as ort

    session = ort.SessionOptions()
    session.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[options.graph_optimization]
    session.intra_op_num_threads = cfg.threads
    session.inter_op_num_threads = 1
    session.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    session.log_severity_level = 3  # warnings about unused initialisers are noise here
    return session


class OnnxRuntimeCPU(OnnxGraphPlatform):
    """ONNX Runtime's CPU execution provider on this machine, fed through I/O binding (input and
    output buffers allocated once) so that a timed call is the graph run, not Python conversions.

    Inside a network whose weights outgrow L2, each layer reads its weights from L3: timed alone
    in a loop, the same layer kept them in L2 and measured 20-40% faster (256-channel 1x1 convs
    on 4x4 maps). A layer is therefore timed round-robin over copies of its session (each with
    its own weight buffers) that together fill twice the L2 cache, when that takes at most
    ``MAX_WEIGHT_COPIES``; smaller weights stay single (they cost little from L3, and cycling many
    sessions would instead chill the sessions' activation buffers).
    """

    name = "onnxruntime-cpu"
    Settings = OnnxRuntimeSettings
    layer_timing = OnnxGraphPlatform.layer_timing + "; weights cycled over session copies filling 2x L2"

    def __init__(self, cfg: PlatformConfig) -> None:
        try:
            import onnxruntime
        except ImportError:
            raise PlatformError(
                "platform 'onnxruntime-cpu' needs onnxruntime. Fix: .venv/bin/pip install onnxruntime onnx"
            ) from None
        self._ort = onnxruntime
        super().__init__(cfg)

    def metadata(self) -> dict[str, Any]:
        """What a measurement depends on; a LUT from a platform with other values is refused."""
        return {
            **host_metadata(self.name, self.cfg),
            "onnxruntime": self._ort.__version__,
            "graph_optimization": self.options.graph_optimization,
            **super().metadata(),  # opset, exporter (torch) version, layer timing method
        }

    def _time_graphs(self, graphs: list[bytes], input_shape: tuple[int, ...], repeats: int,
                     cold_weights: bool, probe: bool = False) -> list[Measurement]:
        import numpy as np

        ort = self._ort
        x = np.random.default_rng(0).standard_normal(input_shape, dtype=np.float32)
        fns: list[Callable[[], Any]] = []
        keep: list[Any] = []  # sessions and output buffers must outlive the timing
        for graph in graphs:
            copies = self.weight_copies(len(graph), cold_weights)  # the serialised graph is nearly all weights
            runs = []
            output = None
            for _ in range(copies):
                session = ort.InferenceSession(graph, ort_session_options(self.cfg, self.options),
                                               providers=["CPUExecutionProvider"])
                if output is None:
                    output = np.empty_like(session.run(None, {"input": x})[0])
                binding = session.io_binding()
                binding.bind_cpu_input("input", x)
                binding.bind_ortvalue_output("output", ort.OrtValue.ortvalue_from_numpy(output))
                session.run_with_iobinding(binding)  # each session's first run allocates
                runs.append(functools.partial(session.run_with_iobinding, binding))
            keep.append((runs, output))
            # every graph goes through the same cycling call, so its cost cancels in differences
            fns.append(lambda cycle=itertools.cycle(runs): next(cycle)())  # noqa: B008
        return time_callables(fns, self.cfg.warmup, repeats, self.cfg.min_sample_ms,
                              PROBE_MIN_SAMPLE_MS if probe else INTERLEAVED_MIN_SAMPLE_MS)
