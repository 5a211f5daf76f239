"""How well a platform's LUT predicts measured latency: build the table, then compare its estimate
with direct measurement on the network and its uniform-width variants.

    .venv/bin/python benchmarks/lut_fidelity.py --platform onnxruntime-cpu --width 0.5 --step 16

Networks take a 1-channel 28x28 input with a stride-1 stem (the Fashion-MNIST setting). The full
network's error is near zero by construction (the LUT's ``rest_ms`` is calibrated on it); the
variants show whether the table's *differences* are right, which is what adaptation relies on.
Printed per model: LUT build wall time, entries, then per network the measured latency, the LUT
estimate, its layer sum without ``rest_ms``, the relative error, and the *anchored* error of the
estimate NetAdapt actually uses (the measured network plus the LUT's difference to it, so the
rest term and its calibration noise cancel); then median and max errors.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from netadapt_core.checkpoint import Architecture  # noqa: E402
from netadapt_core.config import load_params  # noqa: E402
from netadapt_core.lut import LatencyEstimator, build_lut  # noqa: E402
from netadapt_core.lut import uniform_variant  # noqa: E402
from netadapt_core.platforms import ALLOCATOR_ENV, make_platform  # noqa: E402

INPUT_SHAPE = (1, 28, 28)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--platform", default="torch-cpu", help="a registered platform name")
    parser.add_argument("--model", nargs="+", default=["mobilenet_v1", "mobilenet_v2"])
    parser.add_argument("--width", type=float, default=0.5, help="width multiplier of the networks")
    parser.add_argument("--step", type=int, default=16, help="lut.channel_step")
    parser.add_argument("--min-ratio", type=float, default=0.25, help="lut.min_channel_ratio")
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.75, 0.5, 0.25],
                        help="uniform width ratios compared besides the network itself")
    parser.add_argument("--threads", type=int, default=1)
    # the timing settings default to params.yaml's
    parser.add_argument("--repeats", type=int, default=21, help="platform.repeats (per layer)")
    parser.add_argument("--network-repeats", type=int, default=61)
    parser.add_argument("--min-sample-ms", type=float, default=0.5)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="more settings, e.g. platform.onnxruntime-cpu.graph_optimization=extended")
    return parser.parse_args(argv)


def run_model(name: str, args: argparse.Namespace, params) -> list[float]:
    platform = make_platform(params.platform)
    kwargs = {"num_classes": 10, "in_channels": INPUT_SHAPE[0], "width_mult": args.width, "first_stride": 1}
    arch = Architecture(name, kwargs)
    model = arch.build().eval()
    started = time.perf_counter()
    lut = build_lut(model, arch, INPUT_SHAPE, platform, params.lut, log=lambda _: None)
    build_s = time.perf_counter() - started
    print(f"\n== {name} width {args.width:g} on {platform.name}")
    print(f"LUT build: {build_s:.1f} s wall, {len(lut.entries)} entries, rest_ms {lut.rest_ms:.4f}, "
          f"non-monotonic {lut.stats['non_monotonic_first']} -> {lut.stats['non_monotonic_after_remeasure']}")
    estimator = LatencyEstimator(lut, platform, INPUT_SHAPE, measure_missing=True)
    networks = [("network", model)] + [
        (f"uniform_{r:g}", uniform_variant(model, INPUT_SHAPE, lut.grid, r).eval()) for r in args.ratios
    ]
    estimates = [(estimator.estimate_ms(m), estimator.layer_sum_ms(m)) for _, m in networks]
    # one at a time, like the rest term's calibration and `netadapt lut --check`: interleaved with
    # other networks, each ran 5-10% slower on torch-cpu (their weights evict each other's)
    measured = [platform.measure_network(m, INPUT_SHAPE) for _, m in networks]
    print(f"on-demand measurements for the variants: {estimator.measured_on_demand}")
    print(f"{'network':<14}{'measured_ms':>12}{'iqr_ms':>9}{'lut_ms':>10}{'layer_sum':>11}"
          f"{'rel_err':>9}{'anchored_err':>14}")
    errors, anchored_errors = [], []
    full_ms, full_est = measured[0].median_ms, estimates[0][0]
    for (label, _), (est, layer_sum), meas in zip(networks, estimates, measured):
        err = abs(est - meas.median_ms) / meas.median_ms
        # how adaptation uses the table: a measured network plus the LUT's difference to it
        anchored = abs(full_ms + est - full_est - meas.median_ms) / meas.median_ms
        errors.append(err)
        anchored_errors.append(anchored)
        print(f"{label:<14}{meas.median_ms:>12.4f}{meas.iqr_ms:>9.4f}{est:>10.4f}{layer_sum:>11.4f}"
              f"{err:>9.2%}{anchored:>14.2%}")
    print(f"LUT error: median {statistics.median(errors):.2%}, max {max(errors):.2%}; anchored to the "
          f"measured network: median {statistics.median(anchored_errors[1:]):.2%}, "
          f"max {max(anchored_errors[1:]):.2%} over the variants")
    return errors


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if any(os.environ.get(k) != v for k, v in ALLOCATOR_ENV.items()):
        # the same steady allocator the CLI measures under (glibc reads it only at start-up)
        os.execve(sys.executable, [sys.executable, __file__, *argv], {**os.environ, **ALLOCATOR_ENV})
    params = load_params(None, [
        f"platform.name={args.platform}", f"platform.threads={args.threads}",
        f"platform.repeats={args.repeats}", f"platform.network_repeats={args.network_repeats}",
        f"platform.min_sample_ms={args.min_sample_ms}", f"platform.warmup={args.warmup}",
        f"lut.channel_step={args.step}", f"lut.min_channel_ratio={args.min_ratio}", *args.overrides,
    ])
    print(f"platform settings: {dict(params.platform)}; "
          f"lut: step {args.step}, min ratio {args.min_ratio}; load average {os.getloadavg()[0]:.2f}")
    torch.set_num_threads(args.threads)  # the untimed bookkeeping passes; platforms set their own
    errors = []
    for name in args.model:
        errors += run_model(name, args, params)
    print(f"\nall models: median {statistics.median(errors):.2%}, max {max(errors):.2%} "
          f"over {len(errors)} networks; load average {os.getloadavg()[0]:.2f} (other work skews timings)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
