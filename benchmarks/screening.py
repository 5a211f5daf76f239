"""Successive halving against full short-term fine-tuning on the default adaptation (issue #13).

Runs ``netadapt all`` twice from the same pretrained network and LUT (the default job's, made if
missing): ``adapt.screening: full`` (every proposal gets ``adapt.short_term_steps``) and
``halving``. Prints, per mode: iterations, proposal-training seconds per iteration (mean), adapt
wall time, measured speedup, test accuracy after long-term fine-tuning, and the picks::

    .venv/bin/python benchmarks/screening.py            # about 2 x the default job's adapt + finetune
    .venv/bin/python benchmarks/screening.py --set adapt.halving_rounds=2
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from netadapt_core.adapt import STATE_FILE, RunState
from netadapt_core.platforms import cpu_model


def run_mode(mode: str, out: Path, extra: list[str]) -> dict:
    overrides = [f"adapt.screening={mode}", f"adapt.run_dir={out}/run", f"finetune.out_dir={out}/finetuned",
                 f"export.out_dir={out}/export", f"report.metrics={out}/metrics.json",
                 f"report.tradeoff={out}/tradeoff.csv", f"report.lut_check={out}/lut_check.csv",
                 f"report.layers={out}/layers.csv", f"report.data={out}/data.json",
                 f"report.plots_dir={out}/plots", *extra]
    command = [sys.executable, "-m", "flows.cli", "all", *(a for o in overrides for a in ("--set", o))]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, check=False)
    wall = time.perf_counter() - started
    if done.returncode not in (0, 3):
        sys.exit(f"{mode}: netadapt all failed (exit {done.returncode})")
    metrics = json.loads((out / "metrics.json").read_text())
    its = RunState.load(out / "run" / STATE_FILE).iterations
    return {
        "mode": mode, "iterations": len(its), "wall_min": wall / 60,
        "adapt_min": sum(r.seconds for r in its) / 60,
        "train_s_per_iteration": statistics.mean(r.timing["proposals_s"] for r in its) if its else 0.0,
        "proposals": sum(len(r.proposals) + len(r.screened_out) for r in its),
        "speedup": metrics["baseline"]["measured_ms"] / metrics["final"]["measured_ms"],
        "start_test": metrics["baseline"]["test_accuracy"], "final_test": metrics["final"].get("test_accuracy"),
        "budget_met": metrics["budget_met_measured"],
        "picks": [f"{r['group']}->{r['channels_after']}" for r in its],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(ROOT / "runs" / "screening"))
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    args = parser.parse_args()
    rows = [run_mode(mode, Path(args.out) / mode, args.overrides) for mode in ("full", "halving")]
    print(f"\nscreening benchmark, default job, {cpu_model()}")
    print("| screening | iterations | proposal training / iteration | adapt | speedup (measured) "
          "| test accuracy (start -> final) | budget met |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['mode']} | {r['iterations']} | {r['train_s_per_iteration']:.1f} s | {r['adapt_min']:.1f} min "
              f"| {r['speedup']:.2f}x | {100 * r['start_test']:.2f}% -> {100 * r['final_test']:.2f}% "
              f"| {r['budget_met']} |")
    full, halving = rows
    same = sum(a == b for a, b in zip(full["picks"], halving["picks"], strict=False))
    print(f"picks: {same} of {min(len(full['picks']), len(halving['picks']))} iterations pick the same group and "
          f"width\n  full:    {' '.join(full['picks'])}\n  halving: {' '.join(halving['picks'])}")
    print(f"proposal training per iteration: halving / full = "
          f"{halving['train_s_per_iteration'] / max(full['train_s_per_iteration'], 1e-9):.2f}")


if __name__ == "__main__":
    main()
