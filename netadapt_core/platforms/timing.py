"""The timing harness every platform shares.

Fixed thread count and batch size are the platform's business; here: warm-up calls, then ``repeats``
samples each looping the callable until it lasts ``min_sample_ms`` (so timer resolution and
scheduler noise average out), garbage collection paused, several callables interleaved; the median
per-call time is kept with its inter-quartile range.
"""

from __future__ import annotations

import gc
import math
import statistics
import time

from .base import Measurement

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
