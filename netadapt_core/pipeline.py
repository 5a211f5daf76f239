"""The stages around the adaptation as plain functions of the settings: pretrain, lut, lut check,
finetune, report (the adaptation's steps are in ``adapt``). The Prefect tasks in ``tasks/`` wrap
these; each reads and writes files named in ``params.yaml`` and returns a small JSON-able record.
"""

from __future__ import annotations

import csv
import io
import json
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import faults, report_html
from .adapt import (
    STATE_FILE,
    Context,
    RunState,
    architecture,
    check_pretrained,
    make_context,
    measure_point,
    open_estimator,
    smallest_network,
    unreachable_error,
)
from .checkpoint import (
    CheckpointError,
    atomic_write_bytes,
    atomic_write_json,
    check_writable,
    check_writable_dir,
    file_sha256,
    load_checkpoint,
    read_run_state,
    run_state_error,
    save_checkpoint,
)
from .config import Params
from .data import check_data, load_data
from .errors import StageOrderError
from .export import MANIFEST, finetuned_checkpoint
from .lut import (
    LatencyEstimator,
    LatencyLUT,
    LutError,
    build_lut,
    network_fingerprint,
    uniform_variant,
)
from .models import check_network
from .models.weights import WeightsError, load_weights
from .platforms import cpu_model, make_platform, measure_relative
from .resources import count_macs_params
from .schedule import budgets as resolve_budgets
from .surgery import prunable_groups
from .training import evaluate, steps_for_epochs, train

Log = Callable[[str], None]

# what each stage writes: (setting, names a folder); ``lut_check`` is ``netadapt lut --check``
OUTPUTS: dict[str, list[tuple[str, bool]]] = {
    "data": [("report.data", False)],
    "pretrain": [("pretrain.checkpoint", False)],
    "lut": [("lut.path", False), ("lut.on_demand_path", False)],
    "lut_check": [("report.lut_check", False), ("report.plots_dir", True)],
    "adapt": [("adapt.run_dir", True), ("lut.on_demand_path", False)],
    "finetune": [("finetune.out_dir", True)],
    "export": [("export.out_dir", True)],
    "report": [("report.metrics", False), ("report.tradeoff", False), ("report.layers", False),
               ("report.html", False), ("report.plots_dir", True)],
}
# a latency budget judged by measurement is checked before measuring against a start this much faster
# than the LUT's estimate of it (machines drift; a LUT tuned on one VM ran 15-28% off on another), so
# that only a budget that is clearly out of reach is refused before the start is measured
PRECHECK_START_SHARE = 0.6


def check_inputs(stage: str, params: Params, check: bool = False, log: Log = print) -> None:
    """Check what ``stage`` reads and where it writes, before it starts any work (the CLI runs this
    before Prefect starts, so a refusal is one line): the data set, the weights file, the platform,
    the outputs of earlier stages (checkpoints, LUT, run state), clearly unreachable budgets and the
    output paths. Every refusal is a ``NetAdaptError`` naming the setting or file and the fix; the
    stages check again as they go.

    ``stage`` is a CLI stage (``data`` ... ``report``, ``all``); ``check`` is ``--check`` (lut, export).
    """
    if stage == "all":
        for outputs in OUTPUTS.values():
            _check_outputs(params, outputs)
        check_data(params.data)
        _check_start_network(params)
        make_platform(params.platform)
        if (Path(params.adapt.run_dir) / STATE_FILE).is_file():  # the adaptation would resume it
            load_run_state(params)
        return
    if stage == "lut" and check:
        _check_outputs(params, OUTPUTS["lut_check"])
        arch, input_shape = architecture(params)
        open_estimator(params, arch, input_shape)
        if Path(params.pretrain.checkpoint).is_file():
            load_checkpoint(params.pretrain.checkpoint)
        if (Path(params.adapt.run_dir) / STATE_FILE).is_file():
            _check_iteration_checkpoints(load_run_state(params).iterations)
        return
    if stage == "export":
        path, _, _ = finetuned_checkpoint(params)
        load_checkpoint(path)
        if check:
            if not (Path(params.export.out_dir) / MANIFEST).is_file():
                raise StageOrderError(f"no export in {params.export.out_dir} ({MANIFEST} is missing); run "
                                      "`netadapt export` first")
        else:
            _check_outputs(params, OUTPUTS["export"])
        return
    _check_outputs(params, OUTPUTS.get(stage, []))
    if stage == "pretrain":
        if _pretrained_up_to_date(params, _pretrain_hash(params)[0], log=lambda _: None) is None:
            check_data(params.data)
            _check_start_network(params)  # else the stage has nothing to do
        return
    if stage in ("data", "adapt", "finetune"):
        check_data(params.data)
    if stage == "lut":
        architecture(params)
        make_platform(params.platform)
    elif stage == "adapt":
        if (Path(params.adapt.run_dir) / STATE_FILE).is_file():
            load_run_state(params)
        check_budgets_reachable(params, log)
    elif stage == "finetune":
        state = load_run_state(params)
        if state.iterations:  # else the stage has nothing to fine-tune
            _, arch, meta = load_checkpoint(params.pretrain.checkpoint)
            check_pretrained(params, arch, meta)
            open_estimator(params, arch, tuple(meta["input_shape"]))
            _check_iteration_checkpoints(state.iterations if params.finetune.points == "all" else state.iterations[-1:])
    elif stage == "report":
        state = load_run_state(params)
        load_checkpoint(params.pretrain.checkpoint)
        _check_iteration_checkpoints(state.iterations[-1:])


def _check_outputs(params: Params, outputs: list[tuple[str, bool]]) -> None:
    for key, is_folder in outputs:
        section, name = key.split(".")
        path = getattr(getattr(params, section), name)
        (check_writable_dir if is_folder else check_writable)(path, key)


def _check_start_network(params: Params) -> None:
    """The network as built for the data set runs, and ``model.weights`` (if set) fits it."""
    arch, input_shape = architecture(params)
    model = arch.build()
    check_network(model, input_shape, arch.kwargs["num_classes"], arch.name)
    if params.model.weights:
        load_weights(model, params.model.weights, arch.name)


def _check_iteration_checkpoints(records: list[dict[str, Any]]) -> None:
    for record in records:
        if not Path(record["checkpoint"]).is_file():
            raise CheckpointError(
                f"checkpoint {record['checkpoint']} of the adaptation's iteration {record['iteration']} does not "
                "exist. Fix: restore the run directory (e.g. `dvc checkout`), or run `netadapt adapt` again"
            )


def load_run_state(params: Params) -> RunState:
    """The adaptation in ``adapt.run_dir``: a ``StageOrderError`` when there is none, a ``RunStateError``
    when its ``state.json`` is damaged."""
    path = Path(params.adapt.run_dir) / STATE_FILE
    if not path.is_file():
        raise StageOrderError(f"no adaptation in {params.adapt.run_dir}; run `netadapt adapt` first")
    raw = read_run_state(path)
    try:
        state = RunState(**raw)
        _check_iteration_records(state.iterations)
    except (TypeError, KeyError) as exc:
        raise run_state_error(path, exc) from None
    return state


def _check_iteration_records(records: list[Any]) -> None:
    for record in records:
        if not isinstance(record, dict):
            raise TypeError(f"an iteration record is a {type(record).__name__}")
        for key in ("iteration", "checkpoint"):
            if key not in record:
                raise KeyError(f"{key} of an iteration record")


def check_budgets_reachable(params: Params, log: Log = print) -> None:
    """Refuse, before the start network is measured or anything trained, budgets that even the
    smallest network the LUT grid allows misses (as ``adapt.check_reachable`` does once the start is
    measured).

    MACs and parameters are counted, exactly. A latency budget is judged on the LUT: the start's
    estimate minus what the LUT says the smallest network saves. Judged by measurement
    (``adapt.latency_source: measured``), it is refused here only if it is also missed from a start
    ``PRECHECK_START_SHARE`` of the LUT's estimate (the machine may have drifted since the LUT was
    built; the adaptation checks again once it has measured the start). Layers of the smallest
    network the LUT lacks are measured for a latency budget, and kept in ``lut.on_demand_path`` when
    the budgets pass.
    """
    cfg = params.adapt
    model, arch, meta = load_checkpoint(params.pretrain.checkpoint)
    input_shape = tuple(meta["input_shape"])
    check_pretrained(params, arch, meta)
    estimator = open_estimator(params, arch, input_shape)
    smallest = smallest_network(model, input_shape, estimator.lut.grid, cfg.exclude)
    start: dict[str, float] = {"latency": estimator.estimate_ms(model), **count_macs_params(model, input_shape)}
    floors: dict[str, float] = {"latency": start["latency"], **count_macs_params(smallest, input_shape)}
    all_budgets = resolve_budgets(start, cfg)
    saved_ms = 0.0
    if any(b.resource == "latency" for b in all_budgets):
        saved_ms = estimator.layer_sum_ms(model) - estimator.layer_sum_ms(smallest)
        floors["latency"] = start["latency"] - saved_ms
    share = PRECHECK_START_SHARE if cfg.latency_source == "measured" else 1.0
    cautious = {**start, "latency": start["latency"] * share}
    cautious_floors = {**floors, "latency": cautious["latency"] - saved_ms}
    missed = [b for b, c in zip(all_budgets, resolve_budgets(cautious, cfg))
              if not c.met(cautious_floors[c.resource])]
    if missed:
        raise unreachable_error(missed, start, floors, params.lut.min_channel_ratio,
                                " (checked before measuring or training anything)")
    if estimator.measured_on_demand:
        estimator.save()  # the adaptation reuses the layers measured here


def run_data(params: Params, log: Log = print) -> dict[str, Any]:
    """Stage the data set and describe the split (sizes, class counts) in ``report.data``."""
    data = load_data(params.data)
    summary = {
        "dataset": params.data.dataset,
        "input_shape": list(data.input_shape),
        "num_classes": data.num_classes,
        "train": len(data.train), "holdout": len(data.holdout), "test": len(data.test),
    }
    atomic_write_json(params.report.data, summary)
    log(f"data: {summary}")
    return summary


def _pretrain_hash(params: Params) -> tuple[str, str | None]:
    """What the pretrained checkpoint depends on (settings, and the weights file's sha256), and that sha256."""
    weights = params.model.weights
    weights_sha256 = file_sha256(weights) if weights and Path(weights).is_file() else None
    if weights and weights_sha256 is None:
        raise WeightsError(f"weights file {weights} (model.weights) does not exist; fix the path")
    return params.section_hash("data", "model", "pretrain") + (f"-{weights_sha256[:16]}" if weights else ""), weights_sha256


def _pretrained_up_to_date(params: Params, config_hash: str, log: Log = print) -> dict[str, Any] | None:
    """The meta of ``pretrain.checkpoint`` if it was made from these settings, else None (a damaged
    file is simply made again)."""
    path = Path(params.pretrain.checkpoint)
    if not path.is_file():
        return None
    try:
        _, _, meta = load_checkpoint(path)
    except CheckpointError as exc:
        log(f"pretrain: {path} cannot be read ({exc}); making it again")
        return None
    return meta if meta.get("config_hash") == config_hash else None


def run_pretrain(params: Params, log: Log = print) -> dict[str, Any]:
    """Make the starting network: import ``model.weights``, or train from scratch. Skipped when the
    checkpoint was made from the same settings (and the same weights file)."""
    cfg = params.pretrain
    weights = params.model.weights
    config_hash, weights_sha256 = _pretrain_hash(params)
    path = Path(cfg.checkpoint)
    meta = _pretrained_up_to_date(params, config_hash, log)
    if meta is not None:
        log(f"pretrain: {path} is up to date (test accuracy {meta['test_accuracy']:.4f})")
        return meta
    arch, input_shape = architecture(params)
    model = arch.build()
    check_network(model, input_shape, arch.kwargs["num_classes"], arch.name)
    data = load_data(params.data)
    if weights:
        load_weights(model, weights, arch.name)
        source = {"weights": str(weights), "weights_sha256": weights_sha256, "steps": 0, "seconds": 0.0}
        log(f"pretrain: {arch.name} weights imported from {weights} (sha256 {weights_sha256[:12]})")
    else:
        steps = steps_for_epochs(data.train, cfg.batch_size, cfg.epochs)
        log(f"pretrain: {arch.name} on {params.data.dataset}, {len(data.train)} images, {steps} steps")
        stats = train(model, data.train, cfg, steps, seed=cfg.seed, cosine=True, log=log)
        source = {"steps": steps, "seconds": round(stats.seconds, 1)}
    meta = {
        "config_hash": config_hash,
        "input_shape": list(input_shape),
        "test_accuracy": evaluate(model, data.test, threads=cfg.threads, device=cfg.device, channels_last=cfg.channels_last),
        "holdout_accuracy": evaluate(model, data.holdout, threads=cfg.threads, device=cfg.device, channels_last=cfg.channels_last),
        **source,
        **count_macs_params(model, input_shape),
    }
    save_checkpoint(path, model, arch, meta)
    log(f"pretrain: test accuracy {meta['test_accuracy']:.4f} -> {path}")
    return meta


def run_lut(params: Params, log: Log = print) -> dict[str, Any]:
    """Measure the latency LUT of the configured architecture on the configured platform.

    Entries of an existing compatible table are kept (an interrupted build resumes); an
    incompatible one is replaced.
    """
    arch, input_shape = architecture(params)
    platform = make_platform(params.platform)
    existing = None
    if Path(params.lut.path).is_file():
        try:
            existing = LatencyLUT.load(params.lut.path)
            existing.check_compatible(platform.metadata(), network_fingerprint(arch, input_shape))
        except LutError as exc:
            log(f"lut: not reusing {params.lut.path}: {exc}")
            existing = None
    log(f"lut: measuring {arch.name} {input_shape} on {platform.name} {platform.metadata()}")
    lut = build_lut(arch.build().eval(), arch, input_shape, platform, params.lut, existing, log)
    lut.save(params.lut.path)
    return lut.stats


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
    state = read_run_state(state_path) if state_path.is_file() else None
    if state is not None:
        for record in state["iterations"]:
            networks.append((f"adapt_iter_{record['iteration']:03d}", load_checkpoint(record["checkpoint"])[0]))
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
        points = [p for p in state.get("latency_points", []) if p.get("predicted_ms")]
        summary["predictions"] = {
            kind: error_summary([abs(p["predicted_ms"] - p["measured_ms"]) / p["measured_ms"]
                                 for p in points if p.get("kind", "pick") == kind])
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


def _finetune_point(ctx: Context, record: dict[str, Any], baseline: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    cfg = ctx.params.finetune
    model, arch, meta = load_checkpoint(record["checkpoint"])
    steps = steps_for_epochs(ctx.data.train, cfg.batch_size, cfg.epochs)
    stats = train(model, ctx.data.train, cfg, steps, seed=cfg.seed + record["iteration"], cosine=True, log=ctx.log)
    result = {
        "iteration": record["iteration"],
        "test_accuracy": evaluate(model, ctx.data.test, threads=cfg.threads, device=cfg.device,
                                  channels_last=cfg.channels_last),
        "holdout_accuracy": evaluate(model, ctx.data.holdout, threads=cfg.threads, device=cfg.device,
                                     channels_last=cfg.channels_last),
        "finetune_steps": steps,
        "finetune_seconds": round(stats.seconds, 1),
        **measure_point(ctx, model, baseline, passes=3),
    }
    path = out_dir / f"iter_{record['iteration']:03d}.pt"
    faults.point("finetune-trained")
    save_checkpoint(path, model, arch, {**meta, "finetune": result})
    result["checkpoint"] = str(path)
    return result


def run_finetune(params: Params, log: Log = print) -> list[dict[str, Any]]:
    """Long-term fine-tune the final network (or every trade-off point) and score it on the test set."""
    state = load_run_state(params)
    if not state.iterations:
        log(f"finetune: the adaptation in {params.adapt.run_dir} ended ({state.status}) before its first "
            "iteration; nothing to fine-tune")
        atomic_write_json(Path(params.finetune.out_dir) / "results.json", [])
        return []
    ctx = make_context(params, log)
    points = state.iterations if params.finetune.points == "all" else state.iterations[-1:]
    out_dir = Path(params.finetune.out_dir)
    results = []
    for record in points:
        result = _finetune_point(ctx, record, state.baseline, out_dir)
        log(f"finetune: iteration {result['iteration']}: test {result['test_accuracy']:.4f}, "
            f"{result['measured_ms']:.3f} ms measured ({result['finetune_seconds']:.0f}s)")
        results.append(result)
    atomic_write_json(out_dir / "results.json", results)
    return results


def write_csv(path: str | Path, rows: list[dict[str, Any]]) -> None:
    buffer = io.StringIO()
    if rows:
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    atomic_write_bytes(path, buffer.getvalue().encode())


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
    baseline = {k: state.baseline[k] for k in keys} | {"test_accuracy": pre_meta["test_accuracy"]}
    last = state.iterations[-1] if state.iterations else state.baseline
    final = {k: last[k] for k in keys} | {"iteration": last["iteration"]}
    if last["iteration"] in finetuned:
        tuned = finetuned[last["iteration"]]
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
        measured = {**start, "latency": state.baseline["measured_ms"]}
        limit = next(b.limit for b in resolve_budgets(measured, cfg) if b.resource == "latency")
        metrics["budget_ms"] = limit
        metrics["budget_met_measured"] = final["measured_ms"] <= limit
    if "test_accuracy" in final:
        metrics["test_accuracy_drop"] = baseline["test_accuracy"] - final["test_accuracy"]
    atomic_write_json(params.report.metrics, metrics)
    rows = []
    for record in [state.baseline, *state.iterations]:
        tuned = finetuned.get(record["iteration"], {})
        rows.append({
            "iteration": record["iteration"],
            "group": record.get("group", ""),
            "channels_before": record.get("channels_before", ""),
            "channels_after": record.get("channels_after", ""),
            "target_resource": record.get("resource", "latency" if "target_ms" in record else ""),
            "target": round(record.get("target", record.get("target_ms", 0.0)), 4) if record["iteration"] else "",
            "proposals": len(record.get("proposals", [])) if record["iteration"] else "",
            "predicted_ms": round(record["estimated_ms"], 4) if record.get("estimated_ms") is not None else "",
            "lut_ms": round(record["lut_ms"], 4),
            "measured_ms": round(record["measured_ms"], 4),
            "holdout_accuracy": record["holdout_accuracy"],
            "macs": record["macs"],
            "params": record["params"],
            "test_accuracy_finetuned": tuned.get("test_accuracy", ""),
        })
    write_csv(params.report.tradeoff, rows)
    layers = layer_widths(params, last["checkpoint"])
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
        "adaptation (all iterations)": round(sum(r.get("seconds", 0.0) for r in state.iterations), 1),
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
