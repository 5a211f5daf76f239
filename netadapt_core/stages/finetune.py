"""The finetune stage: long-term fine-tuning of every iteration's pick (the accuracy/latency
family), each re-measured against the start network."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .. import faults
from ..adapt import (
    Context,
    IterationRecord,
    NetworkPoint,
    make_context,
    measure_point,
)
from ..checkpoint import (
    atomic_write_json,
    load_checkpoint,
    save_checkpoint,
)
from ..config import Params
from ..training import evaluate, steps_for_epochs, train
from .checks import load_run_state
from .common import Log


def _finetune_point(ctx: Context, record: IterationRecord, baseline: NetworkPoint, out_dir: Path) -> dict[str, Any]:
    cfg = ctx.params.finetune
    model, arch, meta = load_checkpoint(record.checkpoint)
    steps = steps_for_epochs(ctx.data.train, cfg.batch_size, cfg.epochs)
    stats = train(model, ctx.data.train, cfg, steps, seed=cfg.seed + record.iteration, cosine=True, log=ctx.log)
    result = {
        "iteration": record.iteration,
        "test_accuracy": evaluate(model, ctx.data.test, threads=cfg.threads, device=cfg.device,
                                  channels_last=cfg.channels_last),
        "holdout_accuracy": evaluate(model, ctx.data.holdout, threads=cfg.threads, device=cfg.device,
                                     channels_last=cfg.channels_last),
        "finetune_steps": steps,
        "finetune_seconds": round(stats.seconds, 1),
        **measure_point(ctx, model, baseline, passes=3),
    }
    path = out_dir / f"iter_{record.iteration:03d}.pt"
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

