"""Target platforms: where and how latency is measured, directly, never by proxy.

A platform times a single layer (for the lookup table) and a whole network (direct measurement).
Register one with ``@PLATFORMS.register("name")`` on a class taking a ``PlatformConfig``.

Timing method (``torch-cpu``): fixed thread count and batch size, eval mode, ``inference_mode``,
warm-up calls, then ``repeats`` samples each looping the module until it lasts ``min_sample_ms``
(so timer resolution and scheduler noise average out), garbage collection paused; the median
per-call time is kept with its inter-quartile range.
"""

from __future__ import annotations

import gc
import math
import os
import platform as pyplatform
import statistics
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .config import PlatformConfig
from .registry import Registry

PLATFORMS: Registry = Registry("platform")

# glibc's allocator otherwise returns large blocks to the OS between calls, which made the same
# network measure 50 ms in one process and 64-70 ms in another. The CLI re-executes itself with these.
ALLOCATOR_ENV = {"MALLOC_MMAP_THRESHOLD_": "67108864", "MALLOC_TRIM_THRESHOLD_": "268435456"}


@dataclass(frozen=True)
class Measurement:
    median_ms: float
    iqr_ms: float
    samples: int

    def to_dict(self) -> dict[str, float]:
        return {"ms": self.median_ms, "iqr_ms": self.iqr_ms, "samples": self.samples}


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return pyplatform.processor() or pyplatform.machine()


def time_callables(fns: list, warmup: int, repeats: int, min_sample_ms: float) -> list[Measurement]:
    """Median per-call wall time (ms) of each of ``fns``, their samples interleaved.

    Interleaving (A B A B ...) exposes every callable to the same drift in machine speed, so the
    ratio of two results is far steadier than two measurements taken one after the other.
    """
    inner = []
    for fn in fns:
        for _ in range(warmup):
            fn()
        start = time.perf_counter()
        fn()
        once = max(time.perf_counter() - start, 1e-7)
        inner.append(max(1, math.ceil(min_sample_ms / 1e3 / once)))
    samples: list[list[float]] = [[] for _ in fns]
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(repeats):
            for fn, n, out in zip(fns, inner, samples):
                start = time.perf_counter()
                for _ in range(n):
                    fn()
                out.append((time.perf_counter() - start) / n * 1e3)
    finally:
        if gc_was_enabled:
            gc.enable()
    results = []
    for out in samples:
        quartiles = statistics.quantiles(out, n=4)
        results.append(Measurement(statistics.median(out), quartiles[2] - quartiles[0], repeats))
    return results


def time_callable(fn, warmup: int, repeats: int, min_sample_ms: float) -> Measurement:
    """Median per-call wall time of ``fn`` in ms (see the module docstring for the method)."""
    return time_callables([fn], warmup, repeats, min_sample_ms)[0]


class TorchCPU:
    """Eager PyTorch on this machine's CPU."""

    name = "torch-cpu"

    def __init__(self, cfg: PlatformConfig) -> None:
        self.cfg = cfg
        self.dtype = getattr(torch, cfg.dtype)

    def metadata(self) -> dict[str, Any]:
        """What a measurement depends on; a LUT from a platform with other values is refused."""
        return {
            "platform": self.name,
            "threads": self.cfg.threads,
            "batch_size": self.cfg.batch_size,
            "dtype": self.cfg.dtype,
            "cpu": cpu_model(),
            "machine": pyplatform.machine(),
            "torch": torch.__version__,
        }

    def environment(self) -> dict[str, Any]:
        """Informational context, recorded but not compared."""
        return {
            "hostname": pyplatform.node(),
            "cpu_count": os.cpu_count(),
            "allocator_env": {k: os.environ.get(k) for k in ALLOCATOR_ENV},
            "python": pyplatform.python_version(),
            "method": {
                "warmup": self.cfg.warmup,
                "repeats": self.cfg.repeats,
                "network_repeats": self.cfg.network_repeats,
                "min_sample_ms": self.cfg.min_sample_ms,
            },
        }

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

    def measure_layer(self, module: nn.Module, input_shape: tuple[int, ...]) -> Measurement:
        """Latency of one layer on an input of ``input_shape`` (its batch is replaced by ours)."""
        return self._run([module], input_shape, self.cfg.repeats)[0]

    def measure_networks(self, models: list[nn.Module], input_shape: tuple[int, ...]) -> list[Measurement]:
        """Latency of whole networks, interleaved; ``input_shape`` is (C, H, W) or (N, C, H, W)."""
        shape = input_shape if len(input_shape) == 4 else (1, *input_shape)
        return self._run(models, shape, self.cfg.network_repeats)

    def measure_network(self, model: nn.Module, input_shape: tuple[int, ...]) -> Measurement:
        return self.measure_networks([model], input_shape)[0]


PLATFORMS.register("torch-cpu")(TorchCPU)


def make_platform(cfg: PlatformConfig):
    return PLATFORMS.get(cfg.name)(cfg)
