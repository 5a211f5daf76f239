"""Each platform's adapted network measured on every platform (issue #14): is the network adapted
for a platform the fastest of them there?

Reads finished `netadapt all` runs (one settings file each, e.g. params.yaml,
examples/onnxruntime_cpu.yaml, examples/executorch_cpu.yaml) and times every run's final network
on every run's platform, each interleaved with that run's start network (the same pretrained
network), printing latency as a share of the start (lower is faster) and in ms, with the CPU::

    .venv/bin/python benchmarks/cross_platform.py params.yaml examples/onnxruntime_cpu.yaml \\
        examples/executorch_cpu.yaml

A run that is missing is left out with a note.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from netadapt_core.adapt import STATE_FILE, RunState, architecture
from netadapt_core.checkpoint import load_checkpoint
from netadapt_core.config import load_params
from netadapt_core.platforms import ALLOCATOR_ENV, cpu_model, make_platform


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("params", nargs="+", help="settings files of finished runs, one per platform")
    parser.add_argument("--sessions", type=int, default=3, help="interleaved sessions per pair (median kept)")
    args = parser.parse_args()
    runs = []
    for path in args.params:
        params = load_params(path)
        state_path = Path(params.adapt.run_dir) / STATE_FILE
        if not state_path.is_file():
            print(f"{path}: no finished adaptation in {params.adapt.run_dir}; left out")
            continue
        state = RunState.load(state_path)
        if not state.iterations:
            print(f"{path}: the adaptation ended before its first iteration; left out")
            continue
        final, _, _ = load_checkpoint(state.current.checkpoint)
        start, _, _ = load_checkpoint(state.baseline.checkpoint)
        runs.append((params.platform.name, params, final.eval(), start.eval(), architecture(params)[1]))
    if not runs:
        sys.exit("no finished runs to compare")
    steady = all(os.environ.get(k) == v for k, v in ALLOCATOR_ENV.items())
    print(f"CPU: {cpu_model()}; glibc allocator settings {'set' if steady else 'NOT set (see ALLOCATOR_ENV)'}")
    names = [name for name, *_ in runs]
    header = "adapted for \\ measured on | " + " | ".join(names)
    print(header)
    print("|".join("---" for _ in range(len(names) + 1)))
    for adapted_for, _, final, start, shape in runs:
        cells = []
        for _, params, _, _, _ in runs:
            platform = make_platform(params.platform)
            sessions = [platform.measure_networks([final, start], shape) for _ in range(args.sessions)]
            ratio = statistics.median(own.median_ms / ref.median_ms for own, ref in sessions)
            ms = statistics.median(own.median_ms for own, _ in sessions)
            cells.append(f"x{ratio:.3f} ({ms:.3f} ms)")
        print(f"{adapted_for} | " + " | ".join(cells), flush=True)


if __name__ == "__main__":
    main()
