#!/usr/bin/env python3
"""A stand-in "device" for the ``command`` platform: times an ONNX file with ONNX Runtime, or an
ExecuTorch program (``.pte``, ``platform.command.format: pte``) with ExecuTorch's runtime, on this
machine and prints the line that platform parses::

    latency_ms: <median> iqr_ms: <inter-quartile range> samples: <n>

It needs no netadapt: numpy and onnxruntime for ONNX, torch and executorch for ``.pte``; so the same
file can be copied to a board that has Python and be run there over ssh. Method: fixed threads,
warm-up runs, then ``--repeats`` samples, each looping the model until it lasts
``--min-sample-ms``; the median is printed.

    python scripts/stand_in_device.py model.onnx --warmup 10 --repeats 21 --threads 1
    python scripts/stand_in_device.py model.pte --threads 1
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time

LEVELS = ("disable", "basic", "extended", "all")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="the model file (.onnx or .pte); its single input must have a fixed shape")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--min-sample-ms", type=float, default=0.5)
    parser.add_argument("--graph-optimization", choices=LEVELS, default="all")
    args = parser.parse_args(argv)
    run = _pte_runner(args) if args.model.endswith(".pte") else _onnx_runner(args)
    if run is None:
        return 2
    for _ in range(max(1, args.warmup)):
        run()
    start = time.perf_counter()
    run()
    loops = max(1, math.ceil(args.min_sample_ms / 1e3 / max(time.perf_counter() - start, 1e-7)))
    samples = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        for _ in range(loops):
            run()
        samples.append((time.perf_counter() - start) / loops * 1e3)
    quartiles = statistics.quantiles(samples, n=4) if len(samples) > 1 else [samples[0]] * 3
    print(f"latency_ms: {statistics.median(samples):.6f} iqr_ms: {quartiles[2] - quartiles[0]:.6f} "
          f"samples: {len(samples)}")
    return 0


def _pte_runner(args):
    """One run of the program's ``forward`` in ExecuTorch's runtime, ``--threads`` threads."""
    import torch
    from executorch.extension.pybindings import portable_lib
    from executorch.runtime import Runtime

    if portable_lib._threadpool_get_thread_count() != args.threads:
        portable_lib._unsafe_reset_threadpool(args.threads)
    program = Runtime.get().load_program(args.model)
    method = program.load_method("forward")
    meta = method.metadata.input_tensor_meta(0)
    x = torch.randn(list(meta.sizes()), generator=torch.Generator().manual_seed(0))
    return lambda: method.execute([x])


def _onnx_runner(args):
    """One run of the ONNX model in an ONNX Runtime session, outputs bound once."""
    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[args.graph_optimization]
    options.intra_op_num_threads = args.threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    session = ort.InferenceSession(args.model, options, providers=["CPUExecutionProvider"])
    (model_input,) = session.get_inputs()
    if not all(isinstance(d, int) for d in model_input.shape):
        print(f"input {model_input.name} has a dynamic shape {model_input.shape}", file=sys.stderr)
        return None
    x = np.random.default_rng(0).standard_normal(model_input.shape, dtype=np.float32)
    binding = session.io_binding()
    binding.bind_cpu_input(model_input.name, x)
    buffers = []  # outputs allocated once, as the platform in the pipeline does
    for output in session.get_outputs():
        if all(isinstance(d, int) for d in output.shape):
            buffers.append(np.empty(output.shape, dtype=np.float32))
            binding.bind_ortvalue_output(output.name, ort.OrtValue.ortvalue_from_numpy(buffers[-1]))
        else:
            binding.bind_output(output.name)
    return lambda: session.run_with_iobinding(binding)


if __name__ == "__main__":
    sys.exit(main())
