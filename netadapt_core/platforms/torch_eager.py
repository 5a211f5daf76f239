"""Eager PyTorch: ``torch-cpu`` on this machine's CPU, ``torch-cuda`` on a GPU."""

from __future__ import annotations

import copy
from typing import Any

import torch
from pydantic import Field
from torch import nn

from ..config import PlatformConfig, PlatformSettings
from .base import Measurement, PlatformBase, PlatformError, cpu_model, host_metadata
from .timing import time_callables


class TorchCPU(PlatformBase):
    """Eager PyTorch on this machine's CPU."""

    name = "torch-cpu"

    def metadata(self) -> dict[str, Any]:
        """What a measurement depends on; a LUT from a platform with other values is refused."""
        return {**host_metadata(self.name, self.cfg), "torch": torch.__version__}

    def _run(self, modules: list[nn.Module], input_shape: tuple[int, ...], repeats: int) -> list[Measurement]:
        previous_threads = torch.get_num_threads()
        torch.set_num_threads(self.cfg.threads)
        modes = [m.training for m in modules]
        try:
            x = torch.randn(self.cfg.batch_size, *input_shape[1:], dtype=self.dtype)
            fns = []
            for module in modules:
                module.eval()
                fns.append(lambda module=module: module(x))
            with torch.inference_mode():
                return time_callables(fns, self.cfg.warmup, repeats, self.cfg.min_sample_ms)
        finally:
            for module, mode in zip(modules, modes):
                module.train(mode)
            torch.set_num_threads(previous_threads)


class TorchCUDASettings(PlatformSettings):
    """``platform.torch-cuda``: which GPU."""

    device: str = Field("cuda:0", pattern=r"^cuda(:\d+)?$", description="the GPU, e.g. cuda:1")


class TorchCUDA(PlatformBase):
    """Eager PyTorch on a CUDA GPU; each timed call ends with a device synchronisation, so a sample
    is the latency until the result is ready (kernel launches included), not the launch rate."""

    name = "torch-cuda"
    Settings = TorchCUDASettings

    def __init__(self, cfg: PlatformConfig) -> None:
        if not torch.cuda.is_available():
            raise PlatformError(
                f"platform 'torch-cuda' needs a CUDA GPU, but torch {torch.__version__} sees none "
                f"(built for CUDA {torch.version.cuda}). Fix: run on a machine with an NVIDIA GPU and a "
                "CUDA build of torch, or set platform.name to torch-cpu or onnxruntime-cpu."
            )
        self.device = torch.device(cfg.options.device)
        if (self.device.index or 0) >= torch.cuda.device_count():
            raise PlatformError(
                f"platform.torch-cuda.device={cfg.options.device}, but only {torch.cuda.device_count()} GPU(s) are visible. "
                "Fix: set platform.torch-cuda.device to cuda:0 ... or check CUDA_VISIBLE_DEVICES."
            )
        super().__init__(cfg)

    def metadata(self) -> dict[str, Any]:
        """What a measurement depends on; a LUT from a platform with other values is refused."""
        return {
            "platform": self.name,
            "batch_size": self.cfg.batch_size,
            "dtype": self.cfg.dtype,
            "gpu": torch.cuda.get_device_name(self.device),
            "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(),
            "cudnn_benchmark": torch.backends.cudnn.benchmark,
            "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
            "cpu": cpu_model(),  # launch overhead dominates small layers
            "torch": torch.__version__,
        }

    def environment(self) -> dict[str, Any]:
        return {**super().environment(), "device": str(self.device),
                "device_count": torch.cuda.device_count()}

    def _run(self, modules: list[nn.Module], input_shape: tuple[int, ...], repeats: int) -> list[Measurement]:
        # copies, so that measuring a network never moves the caller's model off the CPU
        copies = [copy.deepcopy(m).to(self.device).eval() for m in modules]
        x = torch.randn(self.cfg.batch_size, *input_shape[1:], dtype=self.dtype, device=self.device)

        def call(module: nn.Module) -> None:
            module(x)
            torch.cuda.synchronize(self.device)

        with torch.inference_mode():
            return time_callables([lambda m=m: call(m) for m in copies], self.cfg.warmup, repeats,
                                  self.cfg.min_sample_ms)
