"""``executorch``: PyTorch's on-device runtime. Each module is exported (``torch.export``), lowered
to ExecuTorch's XNNPACK backend (the path a PyTorch model takes to Android and iOS; ``portable``:
ExecuTorch's own reference kernels) and run in ExecuTorch's Python runtime on this CPU, so the LUT,
every pick's measurement and the stop time what an app would run. ``lower_to_executorch`` writes
the same ``.pte`` program that ``netadapt export`` ships and that the ``command`` platform can push
to a phone.

One-layer programs pay XNNPACK's NCHW<->NHWC conversion and the runtime's call at their ends:
corrected as every graph platform does (``graph``). Layers whose weights outgrow L2 are timed
round-robin over copies of their program, as ``onnxruntime-cpu`` does.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import itertools
import logging
from typing import Any, Literal

import torch
from pydantic import Field
from torch import nn

from ..config import PlatformConfig, PlatformSettings
from .base import Measurement, PlatformError, host_metadata
from .graph import GraphPlatform
from .timing import INTERLEAVED_MIN_SAMPLE_MS, PROBE_MIN_SAMPLE_MS, time_callables

MAX_BATCH = 256  # the largest batch a program exported with a dynamic batch accepts
PROGRAM_CACHE = 64  # lowered programs kept per platform, by content (probes, networks)


class ExecuTorchSettings(PlatformSettings):
    """``platform.executorch``."""

    backend: Literal["xnnpack", "portable"] = Field(
        "xnnpack", description="xnnpack: the optimised CPU delegate apps use; portable: reference kernels"
    )


def _quiet() -> None:
    """torchao (imported by ExecuTorch) registers an enum with torch's pytree, which logs a
    deprecation warning on every import: noise for a user, not a problem of theirs."""
    logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)


def _missing() -> PlatformError:
    return PlatformError("platform 'executorch' needs the executorch package (PyTorch's on-device runtime). "
                         "Fix: .venv/bin/pip install executorch, or set platform.name to torch-cpu")


def lower_to_executorch(module: nn.Module, input_shape: tuple[int, ...], backend: str = "xnnpack",
                        dynamic_batch: bool = False) -> bytes:
    """``module`` (eval mode) as an ExecuTorch program (``.pte`` bytes) for inputs of ``input_shape``;
    ``dynamic_batch``: any batch from 1 to ``MAX_BATCH``."""
    _quiet()
    try:
        from executorch.exir import to_edge_transform_and_lower
    except ImportError:
        raise _missing() from None
    partitioners = []
    if backend == "xnnpack":
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner

        partitioners.append(XnnpackPartitioner())
    was_training = module.training
    try:
        module.eval()
        dynamic = {"x": {0: torch.export.Dim("batch", min=1, max=MAX_BATCH)}} if dynamic_batch else None
        with torch.no_grad():
            # an example batch of 1 would be specialised to the constant 1
            example = torch.zeros((2, *input_shape[1:]) if dynamic_batch else input_shape)
            program = torch.export.export(_Named(module), (example,), dynamic_shapes=dynamic)
        return to_edge_transform_and_lower(program, partitioner=partitioners).to_executorch().buffer
    finally:
        module.train(was_training)


class _Named(nn.Module):
    """The module with its input named ``x`` (the name dynamic shapes refer to)."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)


class LoadedProgram:
    """The ``forward`` method of an ExecuTorch program, ready to ``execute([input])``.

    The loaded method reads the program's memory: the program object and its bytes are kept alive
    with it (dropping them made ``execute`` crash)."""

    def __init__(self, program: bytes) -> None:
        from executorch.runtime import Runtime

        self._bytes = program
        self._program = Runtime.get().load_program(program)
        self._method = self._program.load_method("forward")

    def execute(self, inputs: list[torch.Tensor]) -> Any:
        return self._method.execute(inputs)


class ExecuTorchCPU(GraphPlatform):
    """ExecuTorch's Python runtime on this CPU, ``platform.threads`` threads in its thread pool."""

    name = "executorch"
    Settings = ExecuTorchSettings

    def __init__(self, cfg: PlatformConfig) -> None:
        _quiet()
        try:
            from executorch.extension.pybindings import portable_lib
        except ImportError:
            raise _missing() from None
        super().__init__(cfg)
        if portable_lib._threadpool_get_thread_count() != cfg.threads:
            portable_lib._unsafe_reset_threadpool(cfg.threads)
        self._programs: dict[str, bytes] = {}

    def metadata(self) -> dict[str, Any]:
        """What a measurement depends on; a LUT from a platform with other values is refused."""
        return {
            **host_metadata(self.name, self.cfg),
            "executorch": importlib.metadata.version("executorch"),
            "backend": self.options.backend,
            "torch": torch.__version__,  # the exporter shapes the program
            "layer_timing": self.layer_timing + "; weights cycled over program copies filling 2x L2",
        }

    def _program(self, module: nn.Module, shape: tuple[int, ...]) -> bytes:
        """``module`` lowered for ``shape``; the latest ``PROGRAM_CACHE`` programs are kept by content
        (lowering a network takes seconds, and the reference network is timed again and again)."""
        digest = hashlib.sha256(f"{module!r}{shape}{self.options.backend}".encode())
        for tensor in itertools.chain(module.parameters(), module.buffers()):
            digest.update(tensor.detach().contiguous().numpy().tobytes())
        key = digest.hexdigest()
        if key not in self._programs:
            self._programs[key] = lower_to_executorch(module, shape, self.options.backend)
            while len(self._programs) > PROGRAM_CACHE:
                self._programs.pop(next(iter(self._programs)))
        return self._programs[key]

    def _run(self, modules: list[nn.Module], input_shape: tuple[int, ...], repeats: int,
             cold_weights: bool = False, probe: bool = False) -> list[Measurement]:
        shape = (self.cfg.batch_size, *input_shape[1:])
        x = torch.randn(shape, dtype=self.dtype)
        fns = []
        for module in modules:
            program = self._program(module, shape)
            # a program is nearly all weights
            methods = [LoadedProgram(program) for _ in range(self.weight_copies(len(program), cold_weights))]
            for method in methods:
                method.execute([x])  # the first run allocates
            fns.append(lambda cycle=itertools.cycle(methods): next(cycle).execute([x]))  # noqa: B008
        return time_callables(fns, self.cfg.warmup, repeats, self.cfg.min_sample_ms,
                              PROBE_MIN_SAMPLE_MS if probe else INTERLEAVED_MIN_SAMPLE_MS)
