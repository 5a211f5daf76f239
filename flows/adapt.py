"""The adaptation flow: ``netadapt_core.adapt.NetAdapt`` with proposals fanned out on a task runner.

The loop (Algorithm 1) lives in the core; this flow gives it a ``map_proposals`` that submits one
``make-proposal`` task per group to the worker pool, and an ``on_iteration`` hook that publishes a
Prefect table artifact and progress, and logs to MLflow.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_progress_artifact, create_table_artifact, update_progress_artifact
from prefect.exceptions import ExternalSignal
from prefect.runtime import flow_run

from netadapt_core.adapt import (
    IterationRecord,
    NetAdapt,
    ProposalJob,
    ProposalResult,
    RunState,
    make_context,
    open_run,
)
from netadapt_core.config import load_params
from netadapt_core.resources import format_value
from tasks.adapt import make_proposal

from .runners import make_task_runner
from .tracking import AdaptTracker, check_tracking


def _progress(state, cfg) -> float:
    """Share of the way to the primary budget (the budget most runs are about)."""
    budget = state.budgets(cfg)[0]
    start = state.values(state.baseline, cfg)[budget.resource]
    now = state.values(state.current, cfg)[budget.resource]
    return max(0.0, min(100.0, 100.0 * (start - now) / max(start - budget.limit, 1e-9)))


def _proposal_table(record: IterationRecord) -> list[dict[str, Any]]:
    return [
        {
            "group": p["group"],
            "filters_removed": p["channels_before"] - p["channels_after"],
            "channels": f"{p['channels_before']} -> {p['channels_after']}",
            "predicted_ms": round(p["estimated_ms"], 4),
            "verified_ms": round(p["verified_ms"], 4) if p.get("verified_ms") is not None else "",
            "macs": p.get("estimated_macs", ""),
            "params": p.get("estimated_params", ""),
            "holdout_accuracy": round(p["holdout_accuracy"], 4),
            "picked": p["picked"],
        }
        for p in record.proposals
    ]


def _map_on(runner, task, params_json: str):
    """``map_proposals`` for the loop: one task per proposal on ``runner``; a failed one (after its
    retries) is logged and returned as None."""
    logger = get_run_logger()

    def map_proposals(jobs: list[ProposalJob]) -> list[ProposalResult | None]:
        futures = [runner.submit(task, parameters={
            "params_json": params_json, "parent_checkpoint": job.parent_checkpoint, "plan": job.plan.model_dump(),
            "out_path": job.out_path, "key": job.key, "journal": job.journal, "steps": job.steps,
            "resume_from": job.resume_from, "screening_round": job.screening_round}) for job in jobs]
        results: list[ProposalResult | None] = []
        for job, future in zip(jobs, futures):
            future.wait()
            if future.state.is_completed():
                results.append(ProposalResult.from_record(future.result()))
            else:
                logger.warning(f"proposal for {job.plan.group} failed after retries; skipped: {future.state.message}")
                results.append(None)
        return results

    return map_proposals


@flow(name="netadapt-adapt", log_prints=True)
def adapt_flow(params_path: str | None = "params.yaml", overrides: list[str] | None = None) -> dict[str, Any]:
    """Adapt the pretrained network to its budgets; resumes a run left in ``adapt.run_dir``."""
    params = load_params(params_path, overrides)
    cfg = params.adapt
    check_tracking(params.tracking)  # a tracking server that is down stops the run now, not mid-way
    ctx = make_context(params, log=print)
    run_dir, state = open_run(ctx)
    tracker = AdaptTracker.start(params, run_dir, state, str(flow_run.id))
    if tracker:
        tracker.log_iterations(state)
    all_budgets = state.budgets(cfg)
    print(f"start {state.start_ms(cfg):.3f} ms ({cfg.latency_source}), budgets: "
          + "; ".join(b.describe() for b in all_budgets))
    progress = create_progress_artifact(_progress(state, cfg),
                                        description=f"{cfg.resource} removed / needed for its budget (%)")

    def on_iteration(record: IterationRecord, state: RunState) -> None:
        create_table_artifact(_proposal_table(record), key=f"iteration-{record.iteration:03d}",
                              description=f"iteration {record.iteration}: proposals (target "
                                          f"{format_value(record.resource, record.target)})")
        update_progress_artifact(progress, _progress(state, cfg))
        if tracker:
            tracker.log_iterations(state)

    try:
        with make_task_runner(cfg) as runner:
            task = make_proposal.with_options(retries=cfg.proposal_retries, timeout_seconds=cfg.proposal_timeout_s)
            NetAdapt(ctx, run_dir, state).run(_map_on(runner, task, params.model_dump_json()), on_iteration)
    except (KeyboardInterrupt, ExternalSignal):  # Ctrl-C, SIGTERM (the CLI's KeyboardInterrupt, Prefect's signal)
        if tracker:
            tracker.abort("KILLED", f"stopped on request after {len(state.iterations)} iteration(s); resumable")
        raise
    except BaseException as exc:
        if tracker:
            tracker.abort("FAILED", f"{type(exc).__name__}: {exc}")
        raise
    if tracker:
        tracker.finish(state)
    return {"status": state.status, "reason": state.reason, "iterations": len(state.iterations),
            "start_ms": state.start_ms(cfg), "final_ms": state.latency(state.current, cfg), "run_dir": str(run_dir),
            "budgets": [{"resource": b.resource, "limit": b.limit, "primary": b.primary,
                         "met": b.met(state.values(state.current, cfg)[b.resource])} for b in all_budgets],
            "picks": [(r.group, r.channels_after) for r in state.iterations],
            "flow_run_id": str(flow_run.id)}
