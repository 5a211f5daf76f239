"""Adapt a torchvision network that is not a MobileNet (default: ResNet-18) on Fashion-MNIST to 50%
of its measured latency, through the same CLI a user runs, and print the README's row::

    .venv/bin/python benchmarks/adapt_torchvision.py                       # torchvision:resnet18
    .venv/bin/python benchmarks/adapt_torchvision.py --model torchvision:mnasnet0_5 --set pretrain.epochs=2

Every file goes under ``--out`` (default ``runs/bench_<model>``): checkpoint, LUT, run, reports.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from netadapt_core.platforms import cpu_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="torchvision:resnet18")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--out", default=None)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    args = parser.parse_args()
    out = Path(args.out or ROOT / "runs" / f"bench_{args.model.replace(':', '_')}")
    overrides = [
        f"model.name={args.model}", f"data.image_size={args.image_size}",
        f"pretrain.checkpoint={out}/pretrained.pt", f"lut.path={out}/lut.json",
        f"lut.on_demand_path={out}/lut_on_demand.json", f"adapt.run_dir={out}/run",
        f"finetune.out_dir={out}/finetuned", f"export.out_dir={out}/export",
        f"report.metrics={out}/metrics.json", f"report.tradeoff={out}/tradeoff.csv",
        f"report.lut_check={out}/lut_check.csv", f"report.layers={out}/layers.csv",
        f"report.data={out}/data.json", f"report.plots_dir={out}/plots",
        *args.overrides,
    ]
    started = time.perf_counter()
    command = [sys.executable, "-m", "flows.cli", "all", *(a for o in overrides for a in ("--set", o))]
    print("$ " + " ".join(command), flush=True)
    done = subprocess.run(command, cwd=ROOT, env=os.environ, check=False)
    wall = time.perf_counter() - started
    if done.returncode not in (0, 3):  # 3: ended without meeting the budget, reports written
        sys.exit(f"netadapt all failed (exit {done.returncode}); see its output above")
    metrics = json.loads((out / "metrics.json").read_text())
    base, final = metrics["baseline"], metrics["final"]
    print(f"\n{args.model} on Fashion-MNIST {args.image_size} px, {cpu_model()}, exit {done.returncode}")
    print("| network | measured latency | speedup | test accuracy (start -> adapted) | iterations | wall time |")
    print(f"| {args.model} | {base['measured_ms']:.3f} -> {final['measured_ms']:.3f} ms "
          f"| {base['measured_ms'] / final['measured_ms']:.2f}x "
          f"| {100 * base['test_accuracy']:.2f}% -> {100 * final['test_accuracy']:.2f}% "
          f"| {metrics['iterations']} | {wall / 60:.1f} min |")


if __name__ == "__main__":
    main()
