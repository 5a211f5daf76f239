"""The report stage: metrics.json, the trade-off and layer CSVs, plots and the one-page HTML report."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from .. import report_html
from ..adapt import (
    IterationRecord,
    RunState,
)
from ..checkpoint import (
    atomic_write_json,
    load_checkpoint,
)
from ..config import Params
from ..errors import StageOrderError
from ..lut import (
    LatencyLUT,
    LutError,
)
from ..platforms import cpu_model
from ..schedule import budgets as resolve_budgets
from ..surgery import prunable_groups
from .checks import load_run_state
from .common import Log, write_csv
from .lut_check import plot_lut_check


def run_report(params: Params, log: Log = print) -> dict[str, Any]:
    """``reports/metrics.json`` (baseline vs final) and ``reports/tradeoff.csv`` (one row per iteration)."""
    state = load_run_state(params)
    _, _, pre_meta = load_checkpoint(params.pretrain.checkpoint)
    results_path = Path(params.finetune.out_dir) / "results.json"
    try:
        finetuned = {r["iteration"]: r for r in json.loads(results_path.read_text())} if results_path.is_file() else {}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise StageOrderError(
            f"{results_path} is damaged ({type(exc).__name__}: {exc}). Fix: run `netadapt finetune` again"
        ) from None
    keys = ("measured_ms", "lut_ms", "macs", "params", "holdout_accuracy")
    baseline = state.baseline.model_dump(include=set(keys)) | {"test_accuracy": pre_meta["test_accuracy"]}
    last = state.current
    final = last.model_dump(include={*keys, "iteration"})
    if last.iteration in finetuned:
        tuned = finetuned[last.iteration]
        final |= {k: tuned[k] for k in ("holdout_accuracy", "test_accuracy")}
        final["remeasured_ms_after_finetune"] = tuned["measured_ms"]  # same architecture, timed again
        final["finetuned"] = True
    cfg = params.adapt
    start, now = state.values(state.baseline, cfg), state.values(last, cfg)
    budgets = {
        b.resource: {"limit": b.limit, "primary": b.primary, "start": start[b.resource], "final": now[b.resource],
                     "met": b.met(now[b.resource])}
        for b in state.budgets(cfg)
    }
    metrics = {
        "baseline": baseline,
        "final": final,
        "iterations": len(state.iterations),
        "status": state.status,
        "reason": state.reason,
        "resource": cfg.resource,
        "budgets": budgets,
        "speedup_measured": baseline["measured_ms"] / final["measured_ms"],
        "lut_rel_error_final": (final["lut_ms"] - final["measured_ms"]) / final["measured_ms"],
    }
    if "latency" in budgets:  # judged by measurement even when the run stopped on the LUT
        measured = {**start, "latency": state.baseline.measured_ms}
        limit = next(b.limit for b in resolve_budgets(measured, cfg) if b.resource == "latency")
        metrics["budget_ms"] = limit
        metrics["budget_met_measured"] = final["measured_ms"] <= limit
    if "test_accuracy" in final:
        metrics["test_accuracy_drop"] = baseline["test_accuracy"] - final["test_accuracy"]
    atomic_write_json(params.report.metrics, metrics)
    rows = []
    for record in [state.baseline, *state.iterations]:
        tuned = finetuned.get(record.iteration, {})
        pick = record if isinstance(record, IterationRecord) else None  # None: the start network
        rows.append({
            "iteration": record.iteration,
            "group": pick.group if pick else "",
            "channels_before": pick.channels_before if pick else "",
            "channels_after": pick.channels_after if pick else "",
            "target_resource": pick.resource if pick else "",
            "target": round(pick.target, 4) if pick else "",
            "proposals": len(pick.proposals) if pick else "",
            "predicted_ms": round(pick.estimated_ms, 4) if pick and pick.estimated_ms is not None else "",
            "lut_ms": round(record.lut_ms, 4),
            "measured_ms": round(record.measured_ms, 4),
            "holdout_accuracy": record.holdout_accuracy,
            "macs": record.macs,
            "params": record.params,
            "test_accuracy_finetuned": tuned.get("test_accuracy", ""),
        })
    write_csv(params.report.tradeoff, rows)
    layers = layer_widths(params, last.checkpoint)
    write_csv(params.report.layers, layers)
    plots = write_plots(params, rows, layers)
    html_path = write_html_report(params, metrics, rows, layers, plots, state, pre_meta, finetuned)
    log(json.dumps(metrics, indent=2))
    log(f"report: {html_path}")
    return metrics


def write_html_report(params: Params, metrics: dict[str, Any], rows: list[dict[str, Any]],
                      layers: list[dict[str, Any]], plots: list[Path], state: RunState,
                      pre_meta: dict[str, Any], finetuned: dict[int, dict[str, Any]]) -> Path:
    """``report.html``: the self-contained page (``report_html``)."""
    check = Path(params.report.lut_check)
    lut_rows = list(csv.DictReader(check.open())) if check.is_file() else []
    lut_stats = {}
    if Path(params.lut.path).is_file():
        try:
            lut_stats = LatencyLUT.load(params.lut.path).stats or {}
        except LutError:
            lut_stats = {}
    timings = {
        "pretrain (or weights import)": pre_meta.get("seconds", ""),
        "LUT build": lut_stats.get("build_seconds", ""),
        "adaptation (all iterations)": round(sum(r.seconds for r in state.iterations), 1),
        "long-term fine-tuning": round(sum(r.get("finetune_seconds", 0.0) for r in finetuned.values()), 1),
    }
    setup = {
        "model": params.model.name + (f" {params.model.kwargs}" if params.model.kwargs else ""),
        "data": f"{params.data.dataset}, input {pre_meta.get('input_shape')}",
        "platform": f"{params.platform.name}, batch {params.platform.batch_size}, {params.platform.threads} thread(s)",
        "budget": f"{params.adapt.resource}: " + (f"{params.adapt.budget}" if params.adapt.budget is not None
                                                   else f"{params.adapt.budget_ratio:.0%} of the start"),
        "pick rule": params.adapt.pick, "short-term steps": params.adapt.short_term_steps,
        "screening": params.adapt.screening, "long-term epochs": params.finetune.epochs,
    }
    names = {"tradeoff.png": "accuracy against measured latency", "layers.png": "filters per layer",
             "lut_check.png": "LUT estimate against measurement"}
    context = {"title": f"{params.model.name} on {params.data.dataset}", "created": report_html.created(),
               "cpu": cpu_model(), "platform": params.platform.name, "timings": timings, "setup": setup}
    page = report_html.render(metrics, rows, layers, lut_rows, {names.get(p.name, p.name): p for p in plots}, context)
    return report_html.write(params.report.html, page)


def layer_widths(params: Params, adapted_checkpoint: str) -> list[dict[str, Any]]:
    """Filters per prunable group, original against adapted (the paper's per-layer analysis)."""
    original, _, meta = load_checkpoint(params.pretrain.checkpoint)
    adapted, _, _ = load_checkpoint(adapted_checkpoint)
    shape = tuple(meta["input_shape"])
    after = {g.id: g.channels for g in prunable_groups(adapted, shape)}
    return [
        {"layer": index, "group": g.id, "original_filters": g.channels, "adapted_filters": after.get(g.id, 0),
         "kept_share": round(after.get(g.id, 0) / g.channels, 4)}
        for index, g in enumerate(prunable_groups(original, shape))
    ]


def write_plots(params: Params, tradeoff: list[dict[str, Any]], layers: list[dict[str, Any]]) -> list[Path]:
    """PNG figures: accuracy against latency over iterations, filters per layer, LUT check."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(params.report.plots_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([r["measured_ms"] for r in tradeoff], [r["holdout_accuracy"] for r in tradeoff], "o-")
    for r in tradeoff:
        ax.annotate(str(r["iteration"]), (r["measured_ms"], r["holdout_accuracy"]), fontsize=7)
    ax.set(xlabel="measured latency (ms)", ylabel="holdout accuracy (short-term fine-tuned)",
           title="NetAdapt trade-off: one point per iteration")
    ax.invert_xaxis()
    written.append(out / "tradeoff.png")
    fig.tight_layout()
    fig.savefig(written[-1], dpi=110)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(max(6, len(layers) * 0.4), 4))
    xs = range(len(layers))
    ax.bar([x - 0.2 for x in xs], [r["original_filters"] for r in layers], 0.4, label="original")
    ax.bar([x + 0.2 for x in xs], [r["adapted_filters"] for r in layers], 0.4, label="adapted")
    ax.set(xlabel="layer (prunable group)", ylabel="filters", title="Filters per layer")
    ax.set_xticks(list(xs))
    ax.legend()
    written.append(out / "layers.png")
    fig.tight_layout()
    fig.savefig(written[-1], dpi=110)
    plt.close(fig)
    lut_plot = plot_lut_check(params)
    if lut_plot is not None:
        written.append(lut_plot)
    return written

