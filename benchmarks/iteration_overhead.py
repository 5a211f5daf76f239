"""Iteration wall time with 1 and 2 workers, and the share spent outside the work itself.

    .venv/bin/python benchmarks/iteration_overhead.py [--params params.yaml] [--iterations 2]

Needs the pretrained network and LUT of the settings (`netadapt pretrain`, `netadapt lut`). Each
configuration adapts into a temporary run directory with ``latency_source=lut`` (the same picks
every time). Work = planning (LUT) + each proposal's own execution (journal: prune, train, score,
save; overlapping intervals counted once) + commit (measurement). Overhead = the rest of the
iteration's wall time: Prefect task submission, state tracking, result persistence, idle workers.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def union_seconds(intervals: list[tuple[float, float]]) -> float:
    total, end = 0.0, float("-inf")
    for start, finish in sorted(intervals):
        if finish > end:
            total += finish - max(start, end)
            end = finish
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--iterations", type=int, default=2)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    from flows.cli import prefect_environment

    prefect_environment()  # the CLI's project-local Prefect settings
    from flows.adapt import adapt_flow
    from netadapt_core.adapt import STATE_FILE, RunState

    configurations = {"1 worker x 2 threads": ["adapt.workers=1", "adapt.threads=2"],
                      "2 workers x 1 thread": ["adapt.workers=2", "adapt.threads=1"]}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, extra in configurations.items():
            run_dir = Path(tmp) / label.replace(" ", "_")
            overrides = [*args.overrides, "tracking.enabled=false", "adapt.latency_source=lut", f"adapt.max_iterations={args.iterations}",
                         f"adapt.run_dir={run_dir}", *extra]
            adapt_flow(args.params, overrides)
            state = RunState.load(run_dir / STATE_FILE)
            journal = [json.loads(line) for line in (run_dir / "executions.jsonl").read_text().splitlines()]
            for record in state.iterations:
                spans = [(e["started"], e["finished"]) for e in journal if e["iteration"] == record.iteration - 1]
                timing = record.timing
                work = timing["plan_s"] + union_seconds(spans) + timing["commit_s"]
                rows.append({"config": label, "iteration": record.iteration, "proposals": len(spans),
                             "wall_s": record.seconds, "overhead_s": record.seconds - work})
    print(f"{'configuration':22s} {'iter':>4s} {'props':>5s} {'wall s':>8s} {'overhead s':>10s} {'share':>6s}")
    for row in rows:
        print(f"{row['config']:22s} {row['iteration']:4d} {row['proposals']:5d} {row['wall_s']:8.1f} "
              f"{row['overhead_s']:10.2f} {row['overhead_s'] / row['wall_s']:6.1%}")
    for label in configurations:
        mine = [r for r in rows if r["config"] == label]
        print(f"{label}: mean iteration {statistics.mean(r['wall_s'] for r in mine):.1f} s, overhead "
              f"{sum(r['overhead_s'] for r in mine) / sum(r['wall_s'] for r in mine):.1%}")


if __name__ == "__main__":
    main()
