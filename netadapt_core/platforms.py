"""Target platforms: where and how latency is measured, directly, never by proxy.

A platform times a single layer (for the lookup table) and a whole network (direct measurement).
Register one with ``@PLATFORMS.register("name")`` on a class taking a ``PlatformConfig``:

- ``torch-cpu``: eager PyTorch on this CPU.
- ``torch-cuda``: eager PyTorch on a GPU (``platform.device``).
- ``onnxruntime-cpu``: the module exported to ONNX, run by an ONNX Runtime CPU session.
- ``command``: the module exported to ONNX and timed by a user command (a phone over adb, a board
  over ssh); the command prints the latency, see ``CommandPlatform``.

Timing method (shared): fixed thread count and batch size, eval mode, warm-up calls, then
``repeats`` samples each looping the module until it lasts ``min_sample_ms`` (so timer resolution
and scheduler noise average out), garbage collection paused; the median per-call time is kept with
its inter-quartile range.

ONNX platforms time one-layer graphs, but a LUT entry must be what the layer costs *inside* a
network: the graph's run overhead and layout reorders at its ends are subtracted, and a BatchNorm
or activation, which the runtime folds or fuses into the conv before it, is timed as its added cost
after a conv (see ``_OnnxPlatform``; ``OnnxRuntimeCPU`` also keeps big weights out of L2).
"""

from __future__ import annotations

import copy
import functools
import gc
import importlib.util
import io
import itertools
import math
import os
import platform as pyplatform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import PlatformConfig
from .errors import NetAdaptError
from .registry import Registry

PLATFORMS: Registry = Registry("platform")

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


INTERLEAVED_MIN_SAMPLE_MS = 20.0
# interleaved pairs of one-layer probe graphs (ONNX boundary and fused-layer costs): one layer's
# working set re-warms within the untimed call, and 20 ms blocks made these pairs 90% of an ONNX
# Runtime LUT build (464 distinct shapes for MobileNetV1)
PROBE_MIN_SAMPLE_MS = 2.0


def time_callables(fns: list, warmup: int, repeats: int, min_sample_ms: float,
                   interleaved_min_ms: float = INTERLEAVED_MIN_SAMPLE_MS) -> list[Measurement]:
    """Median per-call wall time (ms) of each of ``fns``, their samples interleaved.

    Interleaving (A B A B ...) exposes every callable to the same drift in machine speed, so the
    ratio of two results is far steadier than two measurements taken one after the other. Each
    sample is preceded by one untimed call and lasts at least ``interleaved_min_ms``, so that
    the cache misses after a switch are amortised and each callable is timed as if it ran alone
    (with 0.5 ms samples a pruned MobileNetV1 measured 10% slower interleaved than alone).
    """
    if len(fns) > 1:
        min_sample_ms = max(min_sample_ms, interleaved_min_ms)
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
                if len(fns) > 1:
                    fn()  # re-warm caches the other callable evicted: time each as it runs alone
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


class _Platform:
    """The shared interface: subclasses implement ``_run`` (time modules at a full input shape)."""

    name = ""

    def __init__(self, cfg: PlatformConfig) -> None:
        self.cfg = cfg
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


def measure_relative(platform: _Platform, models: list[nn.Module], reference: nn.Module,
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


class TorchCPU(_Platform):
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


class TorchCUDA(_Platform):
    """Eager PyTorch on a CUDA GPU; each timed call ends with a device synchronisation, so a sample
    is the latency until the result is ready (kernel launches included), not the launch rate."""

    name = "torch-cuda"

    def __init__(self, cfg: PlatformConfig) -> None:
        if not torch.cuda.is_available():
            raise PlatformError(
                f"platform 'torch-cuda' needs a CUDA GPU, but torch {torch.__version__} sees none "
                f"(built for CUDA {torch.version.cuda}). Fix: run on a machine with an NVIDIA GPU and a "
                "CUDA build of torch, or set platform.name to torch-cpu or onnxruntime-cpu."
            )
        self.device = torch.device(cfg.device)
        if (self.device.index or 0) >= torch.cuda.device_count():
            raise PlatformError(
                f"platform.device={cfg.device}, but only {torch.cuda.device_count()} GPU(s) are visible. "
                "Fix: set platform.device to cuda:0 ... or check CUDA_VISIBLE_DEVICES."
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


# layers a runtime folds or fuses into the conv before them (BatchNorm folding, Conv+Relu/Clip)
FUSED_AFTER_CONV: tuple[type[nn.Module], ...] = (nn.BatchNorm2d, nn.ReLU, nn.ReLU6)
MAX_WEIGHT_COPIES = 32


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


class _OnnxPlatform(_Platform):
    """Times modules as exported ONNX graphs; subclasses implement ``_time_graphs``.

    A one-layer graph pays at its input and output what the layer does not pay inside a network:
    the per-run overhead and, on ONNX Runtime's default level, a reorder into and out of its
    blocked (NCHWc) layout; summed, these made MobileNetV1's layers 60% slower than the network.
    So a layer's entry is its graph's time minus the *boundary* cost at its input and output
    shapes, ``B(S) = 2 T[P] - T[P, P]`` for a probe ``P`` (a depthwise 3x3 conv) on shape ``S``:
    half of ``B(in)`` plus half of ``B(out)``. A BatchNorm or activation, folded into the conv
    before it in a network, is timed as ``T[P, layer] - T[P]``. Both are floored at 0.
    """

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
        graphs = [export_onnx(m, shape, self.cfg.onnx_opset) for m in modules]
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
        return {"onnx_opset": self.cfg.onnx_opset, "torch": torch.__version__,
                "layer_timing": self.layer_timing}


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


def ort_session_options(cfg: PlatformConfig) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[cfg.graph_optimization]
    options.intra_op_num_threads = cfg.threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3  # warnings about unused initialisers are noise here
    return options


class OnnxRuntimeCPU(_OnnxPlatform):
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
    layer_timing = _OnnxPlatform.layer_timing + "; weights cycled over session copies filling 2x L2"

    def __init__(self, cfg: PlatformConfig) -> None:
        try:
            import onnxruntime
        except ImportError:
            raise PlatformError(
                "platform 'onnxruntime-cpu' needs onnxruntime. Fix: .venv/bin/pip install onnxruntime onnx"
            ) from None
        self._ort = onnxruntime
        self._working_set = 2 * l2_cache_bytes()
        super().__init__(cfg)

    def metadata(self) -> dict[str, Any]:
        """What a measurement depends on; a LUT from a platform with other values is refused."""
        return {
            **host_metadata(self.name, self.cfg),
            "onnxruntime": self._ort.__version__,
            "graph_optimization": self.cfg.graph_optimization,
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
            # the serialised graph is nearly all weights; smaller weights than working_set / MAX copies
            # cost little from L3, and cycling that many sessions would chill their activation buffers
            copies = math.ceil(self._working_set / len(graph)) if cold_weights else 1
            copies = 1 if copies > MAX_WEIGHT_COPIES else copies
            runs = []
            output = None
            for _ in range(copies):
                session = ort.InferenceSession(graph, ort_session_options(self.cfg),
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


LATENCY_LINE = re.compile(
    r"^\s*latency_ms:\s*(?P<ms>[-+0-9.eE]+)"
    r"(?:\s+iqr_ms:\s*(?P<iqr>[-+0-9.eE]+))?(?:\s+samples:\s*(?P<n>\d+))?\s*$",
    re.MULTILINE,
)


def parse_latency(stdout: str) -> Measurement | None:
    """The last ``latency_ms: <median> [iqr_ms: <iqr>] [samples: <n>]`` line of ``stdout``, if any."""
    matches = list(LATENCY_LINE.finditer(stdout))
    if not matches:
        return None
    last = matches[-1]
    try:
        ms = float(last["ms"])
        iqr = float(last["iqr"]) if last["iqr"] else 0.0
    except ValueError:
        return None
    if not (math.isfinite(ms) and ms > 0 and math.isfinite(iqr) and iqr >= 0):
        return None
    return Measurement(ms, iqr, int(last["n"]) if last["n"] else 0)


class CommandPlatform(_OnnxPlatform):
    """A device the pipeline cannot run on, timed by a user command (``platform.command``).

    Per measurement the module is written to a temporary ``.onnx`` file (input ``input``, output
    ``output``, fixed shape) and the argv is run with these placeholders filled in: ``{onnx}`` the file,
    ``{batch}``, ``{input_shape}`` (``N,C,H,W``), ``{repeats}``, ``{warmup}``, ``{threads}``,
    ``{min_sample_ms}`` (the ``platform.*`` settings) and ``{python}`` (this interpreter). Write a
    literal brace as ``{{`` or ``}}``.

    Output format: the command prints, on its stdout, a line::

        latency_ms: <median ms> [iqr_ms: <inter-quartile range ms>] [samples: <n>]

    (the last such line counts; anything else is ignored). A non-zero exit, no such line, or a run
    longer than ``platform.command_timeout_s`` is an error. Networks are timed one after another, not
    interleaved: each is a separate command run. ``scripts/stand_in_device.py`` is a local example.
    """

    name = "command"

    def __init__(self, cfg: PlatformConfig) -> None:
        if not cfg.command:
            raise PlatformError("platform 'command' needs platform.command (examples/command_platform.yaml)")
        super().__init__(cfg)
        self.program()  # a program that cannot run is refused now, before any export or measurement

    def program(self) -> str:
        """The executable ``platform.command[0]`` names (placeholders filled in), or a PlatformError."""
        name = self.argv(Path("model.onnx"), (self.cfg.batch_size, 1, 1, 1), self.cfg.repeats)[0]
        found = shutil.which(name) if os.sep not in name else (name if Path(name).is_file() else None)
        if found is None:
            where = "does not exist" if os.sep in name else "is not a program on PATH"
            raise PlatformError(
                f"platform.command[0] {name!r} {where}. Fix: set platform.command to an argv whose first "
                "element is a program on PATH or a path to one, e.g. [\"{python}\", scripts/stand_in_device.py, "
                "\"{onnx}\"] (examples/command_platform.yaml)"
            )
        if not os.access(found, os.X_OK):
            raise PlatformError(
                f"platform.command[0] {found!r} is not executable. Fix: `chmod +x {found}`, or start "
                "platform.command with its interpreter, e.g. [\"{python}\", script.py, ...]"
            )
        return found

    def metadata(self) -> dict[str, Any]:
        """The command itself (with placeholders) and the device label key the LUT, not this host."""
        return {
            "platform": self.name,
            "device_name": self.cfg.device_name,
            "command": list(self.cfg.command or []),
            "threads": self.cfg.threads,
            "batch_size": self.cfg.batch_size,
            "dtype": self.cfg.dtype,
            **super().metadata(),
        }

    def environment(self) -> dict[str, Any]:
        return {**super().environment(), "command_timeout_s": self.cfg.command_timeout_s}

    def _time_graphs(self, graphs: list[bytes], input_shape: tuple[int, ...], repeats: int,
                     cold_weights: bool, probe: bool = False) -> list[Measurement]:
        # cold weights are the device command's business: it gets one file and times it as it sees fit
        results = []
        with tempfile.TemporaryDirectory(prefix="netadapt-command-") as tmp:
            for i, graph in enumerate(graphs):
                path = Path(tmp) / f"model{i}.onnx"
                path.write_bytes(graph)
                results.append(self._run_command(path, input_shape, repeats))
        return results

    def argv(self, onnx: Path, input_shape: tuple[int, ...], repeats: int) -> list[str]:
        values = {
            "onnx": str(onnx), "batch": input_shape[0], "input_shape": ",".join(map(str, input_shape)),
            "repeats": repeats, "warmup": self.cfg.warmup, "threads": self.cfg.threads,
            "min_sample_ms": self.cfg.min_sample_ms, "python": sys.executable,
        }
        return [arg.format(**values) for arg in self.cfg.command or []]

    def _run_command(self, onnx: Path, input_shape: tuple[int, ...], repeats: int) -> Measurement:
        argv = self.argv(onnx, input_shape, repeats)
        timeout = self.cfg.command_timeout_s
        try:
            # own process group: a timeout then also ends what a shell wrapper started (adb, ssh)
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                    start_new_session=True)
        except OSError as exc:
            raise PlatformError(
                f"platform.command {argv!r} could not start: {exc}. Fix: platform.command[0] must be a "
                "program on PATH or a path to one."
            ) from None
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.communicate()
            raise PlatformError(
                f"platform.command {argv!r} timed out after {timeout:g} s. Fix: check the device is "
                "reachable, or raise platform.command_timeout_s."
            ) from None
        if proc.returncode != 0:
            raise PlatformError(
                f"platform.command {argv!r} failed with exit status {proc.returncode}; "
                f"stderr: {stderr.strip()[-2000:] or '(empty)'}"
            )
        measurement = parse_latency(stdout)
        if measurement is None:
            raise PlatformError(
                f"platform.command {argv!r} printed no latency: expected a line "
                f"'latency_ms: <median> [iqr_ms: <iqr>]' with a positive number; stdout ended: "
                f"{stdout.strip()[-500:] or '(empty)'}"
            )
        return measurement


PLATFORMS.register("torch-cpu")(TorchCPU)
PLATFORMS.register("torch-cuda")(TorchCUDA)
PLATFORMS.register("onnxruntime-cpu")(OnnxRuntimeCPU)
PLATFORMS.register("command")(CommandPlatform)


def make_platform(cfg: PlatformConfig):
    return PLATFORMS.get(cfg.name)(cfg)
