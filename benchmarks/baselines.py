"""NetAdapt against simpler ways to reach the same measured latency (issue #11).

Reads a finished `netadapt all` (its pretrained network and its fine-tuned final network, from the
same settings) and builds three baselines, each at a measured latency no higher than the adapted
network's (every network timed interleaved with the adapted one on `platform.name`):

- **uniform**: the pretrained network with every group cut to one width ratio (the width
  multiplier applied to the trained network, filters kept by L2 norm), the widest ratio on the LUT
  grid that is as fast as the adapted network; then the same long-term fine-tuning;
- **width multiplier from scratch**: the same architecture built with `width_mult`, the widest
  multiplier (steps of 0.025) that is as fast, trained from scratch for the pipeline's training
  budget (pretraining + long-term fine-tuning epochs, the same recipe);
- **global magnitude** (Torch-Pruning `MagnitudePruner`, global L2 ranking across layers, channels
  rounded to `lut.channel_step`): one-shot pruning of the pretrained network, the ratio bisected to
  the adapted network's measured latency; then the same long-term fine-tuning.

Prints one table: measured latency, MACs, parameters and test accuracy of each, with the CPU::

    .venv/bin/netadapt all && .venv/bin/python benchmarks/baselines.py
    .venv/bin/python benchmarks/baselines.py --params examples/onnxruntime_cpu.yaml   # another platform
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch
import torch_pruning as tp

from netadapt_core.checkpoint import load_checkpoint
from netadapt_core.config import load_params
from netadapt_core.data import load_data
from netadapt_core.lut import LatencyLUT, uniform_variant
from netadapt_core.models import build_model
from netadapt_core.models.sources import output_layer
from netadapt_core.platforms import cpu_model, make_platform, measure_relative
from netadapt_core.resources import count_macs_params
from netadapt_core.stages import finetuned_checkpoint
from netadapt_core.training import evaluate, steps_for_epochs, train


def ratios_to(platform, shape, reference, candidates):
    """Each candidate's latency as a share of ``reference``'s, timed interleaved."""
    return [own.median_ms / ref.median_ms for own, ref in measure_relative(platform, candidates, reference, shape)]


def widest_as_fast(platform, shape, reference, build, knobs, log):
    """The largest knob whose network is measured no slower than ``reference`` (knobs ascending)."""
    nets = [build(k) for k in knobs]
    ratios = ratios_to(platform, shape, reference, nets)
    log("  " + ", ".join(f"{k:.3f}: x{r:.3f}" for k, r in zip(knobs, ratios)))
    fitting = [i for i, r in enumerate(ratios) if r <= 1.0]
    if not fitting:
        return None
    i = max(fitting)
    return knobs[i], nets[i], ratios[i]


def magnitude_pruned(model, shape, ratio, step):
    net = copy.deepcopy(model).eval()
    pruner = tp.pruner.MagnitudePruner(
        net, torch.zeros(1, *shape), importance=tp.importance.MagnitudeImportance(p=2), pruning_ratio=ratio,
        global_pruning=True, ignored_layers=[output_layer(net, shape)], round_to=step)
    pruner.step()
    return net


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default=str(ROOT / "params.yaml"))
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--out", default=str(ROOT / "reports" / "baselines.json"))
    args = parser.parse_args()
    params = load_params(args.params, args.overrides)
    log = print
    data = load_data(params.data)
    shape = data.input_shape
    platform = make_platform(params.platform)
    start, arch, _ = load_checkpoint(params.pretrain.checkpoint)
    final_path, final_record, _ = finetuned_checkpoint(params)
    adapted, _, _ = load_checkpoint(final_path)
    adapted.eval()
    grid = LatencyLUT.load(params.lut.path).grid
    ft = params.finetune
    ft_steps = steps_for_epochs(data.train, ft.batch_size, ft.epochs)

    def finetuned(net, seed_offset=0):
        started = time.perf_counter()
        train(net, data.train, ft, ft_steps, seed=ft.seed + seed_offset, cosine=True)
        return evaluate(net, data.test, threads=ft.threads, channels_last=ft.channels_last), time.perf_counter() - started

    rows = []

    def row(name, net, ratio, accuracy, seconds, note):
        counts = count_macs_params(net, shape)
        rows.append({"method": name, "latency_vs_adapted": ratio, "macs": counts["macs"], "params": counts["params"],
                     "test_accuracy": accuracy, "train_s": seconds, "note": note})
        log(f"{name}: x{ratio:.3f} of the adapted latency, {counts['macs'] / 1e6:.1f} M MACs, test {accuracy:.4f} ({note})")

    row("netadapt (this run)", adapted, 1.0, final_record["test_accuracy"], 0.0,
        f"final iteration, {ft.epochs:g} epoch(s) long-term fine-tuning")

    log("uniform width of the pretrained network (ratio: latency vs adapted):")
    found = widest_as_fast(platform, shape, adapted, lambda r: uniform_variant(start, shape, grid, r),
                           [round(0.2 + 0.025 * k, 3) for k in range(25)], log)
    if found:
        ratio, net, rel = found
        acc, secs = finetuned(net)
        row("uniform (pretrained, L2)", net, rel, acc, secs, f"every group at {ratio:.3f} of its width, fine-tuned")

    log("width multiplier from scratch (multiplier: latency vs adapted):")
    kwargs = {k: v for k, v in arch.kwargs.items() if k != "width_mult"}
    if arch.name in ("mobilenet_v1", "mobilenet_v2"):
        found = widest_as_fast(platform, shape, adapted, lambda w: build_model(arch.name, width_mult=w, **kwargs).eval(),
                               [round(0.2 + 0.025 * k, 3) for k in range(33)], log)
        if found:
            width, net, rel = found
            torch.manual_seed(params.pretrain.seed)
            net = build_model(arch.name, width_mult=width, **kwargs)
            epochs = params.pretrain.epochs + ft.epochs
            pre = params.pretrain
            started = time.perf_counter()
            train(net, data.train, pre, steps_for_epochs(data.train, pre.batch_size, epochs), seed=pre.seed, cosine=True)
            acc = evaluate(net, data.test, threads=pre.threads, channels_last=pre.channels_last)
            row("width multiplier (scratch)", net, rel, acc, time.perf_counter() - started,
                f"width_mult {width:.3f}, {epochs:g} epochs from scratch (pretraining + fine-tuning budget)")
    else:
        log(f"  {arch.name} has no width multiplier here; skipped")

    log("global magnitude pruning (Torch-Pruning), ratio bisected to the adapted latency:")
    lo, hi, best = 0.0, 0.95, None
    for _ in range(7):
        mid = (lo + hi) / 2
        net = magnitude_pruned(start, shape, mid, params.lut.channel_step)
        rel = ratios_to(platform, shape, adapted, [net])[0]
        log(f"  ratio {mid:.3f}: x{rel:.3f}")
        if rel <= 1.0:
            best, hi = (mid, net, rel), mid
        else:
            lo = mid
    if best:
        ratio, net, rel = best
        acc, secs = finetuned(net)
        row("global magnitude (Torch-Pruning)", net, rel, acc, secs, f"pruning ratio {ratio:.3f}, fine-tuned")

    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"cpu": cpu_model(), "platform": params.platform.name, "rows": rows}, indent=2))
    print(f"\n{cpu_model()}, {params.platform.name}, {params.platform.threads} thread(s), batch {params.platform.batch_size}; "
          f"start test accuracy {json.loads(Path(params.report.metrics).read_text())['baseline']['test_accuracy']:.4f}")
    print("| method | latency vs adapted (measured, interleaved) | MACs | parameters | test accuracy | note |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['method']} | x{r['latency_vs_adapted']:.3f} | {r['macs'] / 1e6:.1f} M | {r['params'] / 1e6:.2f} M | "
              f"{100 * r['test_accuracy']:.2f}% | {r['note']} |")


if __name__ == "__main__":
    main()
