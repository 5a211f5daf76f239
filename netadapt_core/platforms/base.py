"""What every platform shares: the ``Platform`` protocol, ``Measurement``, the error, host facts, and
timing networks against a reference.

A platform times one layer (for the lookup table) and whole networks (direct measurement). To add
one (TensorRT, TFLite, ExecuTorch, a phone), write a module with a class that satisfies
``Platform`` — usually a subclass of ``PlatformBase`` that implements ``_run`` — give it a
``Settings`` model (a ``PlatformSettings`` subclass: the keys under ``platform.<its name>`` in
params.yaml) and register it with ``@PLATFORMS.register("<its name>")`` (``netadapt_core.platforms``).
"""

from __future__ import annotations

import os
import platform as pyplatform
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch
from torch import nn

from ..config import PlatformConfig, PlatformSettings
from ..errors import NetAdaptError

# glibc's allocator otherwise returns large blocks to the OS between calls, which made the same
# network measure 50 ms in one process and 64-70 ms in another. The CLI re-executes itself with these.
ALLOCATOR_ENV = {"MALLOC_MMAP_THRESHOLD_": "67108864", "MALLOC_TRIM_THRESHOLD_": "268435456"}


class PlatformError(NetAdaptError, RuntimeError):
    """A platform cannot measure here (no GPU, missing runtime) or its device command failed."""


@dataclass(frozen=True)
class Measurement:
    median_ms: float
    iqr_ms: float
    samples: int

    def to_dict(self) -> dict[str, float]:
        return {"ms": self.median_ms, "iqr_ms": self.iqr_ms, "samples": self.samples}


@runtime_checkable
class Platform(Protocol):
    """What the LUT, the adaptation loop and the reports need from a target platform."""

    name: str
    cfg: PlatformConfig  # the common settings (``platform.*``); ``cfg.options`` are the platform's own
    dtype: torch.dtype

    def metadata(self) -> dict[str, Any]:
        """What a measurement depends on (device, runtime versions, threads, batch): a LUT measured
        with other values is refused."""
        ...

    def environment(self) -> dict[str, Any]:
        """Informational context, recorded beside the LUT but not compared."""
        ...

    def measure_layer(self, module: nn.Module, input_shape: tuple[int, ...]) -> Measurement:
        """One layer's cost inside a network, on ``input_shape`` with the batch replaced by ours."""
        ...

    def measure_networks(self, models: list[nn.Module], input_shape: tuple[int, ...],
                         repeats: int | None = None) -> list[Measurement]:
        """Whole networks, timed interleaved where the platform can (``input_shape`` (C, H, W) or
        (N, C, H, W); ``repeats`` default ``platform.network_repeats``)."""
        ...


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return pyplatform.processor() or pyplatform.machine()


def host_metadata(name: str, cfg: PlatformConfig) -> dict[str, Any]:
    """The keys every CPU platform's LUTs are tied to: platform, threads, batch, dtype, CPU."""
    return {
        "platform": name,
        "threads": cfg.threads,
        "batch_size": cfg.batch_size,
        "dtype": cfg.dtype,
        "cpu": cpu_model(),
        "machine": pyplatform.machine(),
    }


class PlatformBase:
    """The usual implementation of ``Platform``: subclasses implement ``_run`` (time modules at a full
    input shape) and ``metadata``; ``Settings`` is the model of their own ``platform.<name>`` keys."""

    name = ""
    Settings: ClassVar[type[PlatformSettings]] = PlatformSettings

    def __init__(self, cfg: PlatformConfig) -> None:
        self.cfg = cfg
        self.options = cfg.options  # this platform's own settings, validated by ``Settings``
        self.dtype = getattr(torch, cfg.dtype)

    def _method(self) -> dict[str, Any]:
        return {
            "warmup": self.cfg.warmup,
            "repeats": self.cfg.repeats,
            "network_repeats": self.cfg.network_repeats,
            "min_sample_ms": self.cfg.min_sample_ms,
        }

    def environment(self) -> dict[str, Any]:
        """Informational context, recorded but not compared."""
        return {
            "hostname": pyplatform.node(),
            "cpu_count": os.cpu_count(),
            "allocator_env": {k: os.environ.get(k) for k in ALLOCATOR_ENV},
            "python": pyplatform.python_version(),
            "method": self._method(),
        }

    def _run(self, modules: list[nn.Module], input_shape: tuple[int, ...], repeats: int) -> list[Measurement]:
        raise NotImplementedError

    def measure_layer(self, module: nn.Module, input_shape: tuple[int, ...]) -> Measurement:
        """Latency of one layer on an input of ``input_shape`` (its batch is replaced by ours)."""
        return self._run([module], input_shape, self.cfg.repeats)[0]

    def measure_networks(self, models: list[nn.Module], input_shape: tuple[int, ...],
                         repeats: int | None = None) -> list[Measurement]:
        """Latency of whole networks, interleaved; ``input_shape`` is (C, H, W) or (N, C, H, W).
        ``repeats``: timed samples (default ``platform.network_repeats``)."""
        shape = input_shape if len(input_shape) == 4 else (1, *input_shape)
        return self._run(models, shape, repeats or self.cfg.network_repeats)

    def measure_network(self, model: nn.Module, input_shape: tuple[int, ...]) -> Measurement:
        return self.measure_networks([model], input_shape)[0]


RELATIVE_BATCH = 8  # networks timed together with their reference in one interleaved measurement


def measure_relative(platform: Platform, models: list[nn.Module], reference: nn.Module,
                     input_shape: tuple[int, ...], repeats: int | None = None,
                     batch: int = RELATIVE_BATCH) -> list[tuple[Measurement, Measurement]]:
    """Each of ``models`` timed interleaved with ``reference``: (its measurement, the reference's
    in the same session) per model, in order.

    Up to ``batch`` models share one session with the reference, so the reference is timed once
    per batch instead of once per model (a batch of 8 costs 9 network timings, not 16) and every
    model of the batch sees the same drift of the machine as its reference."""
    pairs: list[tuple[Measurement, Measurement]] = []
    for i in range(0, len(models), batch):
        *owns, ref = platform.measure_networks([*models[i:i + batch], reference], input_shape, repeats)
        pairs.extend((own, ref) for own in owns)
    return pairs
