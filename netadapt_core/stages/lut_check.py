"""``netadapt lut --check``: LUT estimates against direct measurements, on uniform-width networks
and on the adaptation's own picks, each timed interleaved with the start network."""

from __future__ import annotations

import csv
import statistics
from pathlib import Path
from typing import Any

from ..adapt import (
    STATE_FILE,
    RunState,
    architecture,
)
from ..checkpoint import load_checkpoint
from ..config import Params
from ..lut import (
    LatencyEstimator,
    LatencyLUT,
    network_fingerprint,
    uniform_variant,
)
from ..platforms import make_platform, measure_relative
from .common import Log, write_csv

CHECK_REFERENCE_DRIFT = 0.10  # a check session whose start ran this much slower than the fastest is timed again


def run_lut_check(params: Params, log: Log = print) -> dict[str, Any]:
    """Compare LUT estimates with direct measurements on several networks; writes a CSV.

    Each network is timed interleaved with the starting network, and its measurement is taken as
    that ratio times the starting network's latency when the LUT was built (``stats.network_ms``):
    a machine that has since drifted faster or slower (10-30% within minutes on a shared VM) does not
    show up as LUT error. The raw measurements are in the CSV too (``measured_raw_ms``).
    """
    arch, input_shape = architecture(params)
    platform = make_platform(params.platform)
    lut = LatencyLUT.load(params.lut.path)
    lut.check_compatible(platform.metadata(), network_fingerprint(arch, input_shape), params.lut.path)
    estimator = LatencyEstimator(lut, platform, input_shape, params.lut.measure_missing)
    estimator.attach(params.lut.on_demand_path)  # read only: the check never saves
    start = load_checkpoint(params.pretrain.checkpoint)[0] if Path(params.pretrain.checkpoint).is_file() else arch.build()
    start.eval()
    networks = [(f"uniform_{ratio:g}", uniform_variant(start, input_shape, lut.grid, ratio))
                for ratio in params.lut.check_networks]
    state_path = Path(params.adapt.run_dir) / STATE_FILE
    state = RunState.load(state_path) if state_path.is_file() else None
    if state is not None:
        for record in state.iterations:
            networks.append((f"adapt_iter_{record.iteration:03d}", load_checkpoint(record.checkpoint)[0]))
    at_build = lut.stats.get("network_ms")
    rows = []
    models = [model.eval() for _, model in networks]
    pairs = measure_relative(platform, models, start, input_shape)
    # a session whose reference ran far slower than the fastest session's was disturbed (one ONNX
    # Runtime session read the start 43% slow while the network beside it ran normally; noise only
    # adds time): time those networks again
    fastest = min(ref.median_ms for _, ref in pairs)
    off = [i for i, (_, ref) in enumerate(pairs) if ref.median_ms > fastest * (1 + CHECK_REFERENCE_DRIFT)]
    if off:
        log(f"  lut check: the start ran {max(pairs[i][1].median_ms for i in off) / fastest - 1:.0%} slower than "
            f"its fastest session beside {len(off)} network(s); timing them again")
        for i, pair in zip(off, measure_relative(platform, [models[i] for i in off], start, input_shape)):
            pairs[i] = pair
    for (name, model), (own, ref) in zip(networks, pairs):
        lut_ms = estimator.estimate_ms(model)
        measured = own.median_ms / ref.median_ms * at_build if at_build else own.median_ms
        rows.append({"network": name, "lut_ms": round(lut_ms, 4), "measured_ms": round(measured, 4),
                     "rel_error": round((lut_ms - measured) / measured, 4),
                     "measured_raw_ms": round(own.median_ms, 4), "start_raw_ms": round(ref.median_ms, 4)})
        log(f"  {name:24s} lut {lut_ms:8.3f} ms  measured {measured:8.3f} ms  error {rows[-1]['rel_error']:+.1%}"
            f"  (raw {own.median_ms:.3f} ms, start now {ref.median_ms:.3f} ms)")
    write_csv(params.report.lut_check, rows)
    errors = [abs(r["rel_error"]) for r in rows]
    summary = {
        "networks": len(rows),
        "mean_abs_rel_error": statistics.mean(errors),
        "median_abs_rel_error": statistics.median(errors),
        "max_abs_rel_error": max(errors),
        "rank_correlation": rank_correlation([r["lut_ms"] for r in rows], [r["measured_ms"] for r in rows]),
        "start_ms_at_build": at_build,
        "start_ms_now": statistics.median(r["start_raw_ms"] for r in rows),
        # the LUT's absolute estimate on the adaptation's own picks (not the calibration networks)
        "picks": error_summary([abs(r["rel_error"]) for r in rows if r["network"].startswith("adapt_iter")]),
        "uniform": error_summary([abs(r["rel_error"]) for r in rows if r["network"].startswith("uniform")]),
    }
    if state is not None:
        # what planning used: each pick predicted from its parent's measurement (latency model)
        points = [p for p in state.latency_points if p.predicted_ms]
        summary["predictions"] = {
            kind: error_summary([abs(p.predicted_ms - p.measured_ms) / p.measured_ms
                                 for p in points if p.kind == kind])
            for kind in ("pick", "candidate")
        }
    summary["plot"] = str(plot_lut_check(params))
    for name in ("picks", "uniform"):
        if summary[name]["count"]:
            log(f"lut check: {name}: median |error| {summary[name]['median']:.1%}, max {summary[name]['max']:.1%} "
                f"over {summary[name]['count']} networks")
    for kind, stats in summary.get("predictions", {}).items():
        if stats["count"]:
            log(f"lut check: latency model, {kind}s predicted from the parent's measurement: median |error| "
                f"{stats['median']:.1%}, max {stats['max']:.1%} over {stats['count']}")
    log(f"lut check: median |error| {summary['median_abs_rel_error']:.1%}, mean {summary['mean_abs_rel_error']:.1%}, "
        f"max {summary['max_abs_rel_error']:.1%}, rank correlation {summary['rank_correlation']:.3f} (start "
        f"{summary['start_ms_now']:.3f} ms now, {at_build or float('nan'):.3f} ms when the LUT was built)")
    return summary


def error_summary(errors: list[float]) -> dict[str, float | int | None]:
    """Count, median and max of absolute relative errors (None where there are none)."""
    if not errors:
        return {"count": 0, "median": None, "max": None}
    return {"count": len(errors), "median": statistics.median(errors), "max": max(errors)}


def rank_correlation(a: list[float], b: list[float]) -> float:
    """Spearman's rho: does the LUT order networks as measurement does? (1 = same order)"""
    if len(a) < 2:
        return 1.0

    def ranks(values: list[float]) -> list[float]:
        order = sorted(range(len(values)), key=values.__getitem__)
        result = [0.0] * len(values)
        for rank, index in enumerate(order):
            result[index] = float(rank)
        return result

    ra, rb = ranks(a), ranks(b)
    mean = (len(a) - 1) / 2
    cov = sum((x - mean) * (y - mean) for x, y in zip(ra, rb))
    var = sum((x - mean) ** 2 for x in ra)
    return cov / var


def plot_lut_check(params: Params) -> Path | None:
    """``plots_dir/lut_check.png``: LUT estimate against measurement, one point per checked network."""
    check = Path(params.report.lut_check)
    rows = list(csv.DictReader(check.open())) if check.is_file() else []
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(params.report.plots_dir) / "lut_check.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(5, 5))
    measured = [float(r["measured_ms"]) for r in rows]
    estimated = [float(r["lut_ms"]) for r in rows]
    ax.scatter(measured, estimated)
    for r, x, y in zip(rows, measured, estimated):
        ax.annotate(r["network"].replace("adapt_iter_", "it"), (x, y), fontsize=6)
    low, high = min(measured + estimated), max(measured + estimated)
    ax.plot([low, high], [low, high], "k--", lw=1)
    ax.set(xlabel="measured latency (ms)", ylabel="LUT estimate (ms)",
           title=f"LUT against measurement ({params.platform.name})")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out

