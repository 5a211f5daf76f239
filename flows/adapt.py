"""The adaptation flow: NetAdapt's Algorithm 1 with one parallel task per proposal.

    net_0 = pretrained, measured                                   open_run
    while resource(net_i) > budget (every budget, primary first):
        target_i, plans = per group, fewest filters that meet it   plan (LUT, flow process)
        proposals = prune + short-term fine-tune + holdout score   make_proposal (worker pool)
        net_{i+1} = best proposal, measured directly, saved        pick_best, commit
"""

from __future__ import annotations

import time
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_progress_artifact, create_table_artifact, update_progress_artifact
from prefect.runtime import flow_run

from netadapt_core.adapt import (
    JOURNAL_FILE,
    ProposalResult,
    budget_reached,
    describe_iteration,
    finish_run,
    finished_proposal,
    make_context,
    open_run,
    pick_best,
    proposal_key,
    proposal_path,
)
from netadapt_core.config import load_params
from netadapt_core.resources import format_value
from tasks.adapt import commit, make_proposal, plan, result_from_dict

from .runners import make_task_runner
from .tracking import AdaptTracker, check_tracking


def _progress(state, cfg) -> float:
    """Share of the way to the primary budget (the budget most runs are about)."""
    budget = state.budgets(cfg)[0]
    start = state.values(state.baseline, cfg)[budget.resource]
    now = state.values(state.current, cfg)[budget.resource]
    return max(0.0, min(100.0, 100.0 * (start - now) / max(start - budget.limit, 1e-9)))


def _proposal_table(record: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {
            "group": p["group"],
            "filters_removed": p["channels_before"] - p["channels_after"],
            "channels": f"{p['channels_before']} -> {p['channels_after']}",
            "lut_latency_ms": round(p["estimated_ms"], 4),
            "macs": p.get("estimated_macs", ""),
            "params": p.get("estimated_params", ""),
            "holdout_accuracy": round(p["holdout_accuracy"], 4),
            "picked": p["picked"],
        }
        for p in record["proposals"]
    ]


@flow(name="netadapt-adapt", log_prints=True)
def adapt_flow(params_path: str | None = "params.yaml", overrides: list[str] | None = None) -> dict[str, Any]:
    """Adapt the pretrained network to its budgets; resumes a run left in ``adapt.run_dir``."""
    params = load_params(params_path, overrides)
    cfg = params.adapt
    logger = get_run_logger()
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
    params_json = params.model_dump_json()
    proposal_task = make_proposal.with_options(retries=cfg.proposal_retries)
    with make_task_runner(cfg) as runner:
        while not budget_reached(state, cfg) and len(state.iterations) < cfg.max_iterations:
            started = time.perf_counter()
            iteration = len(state.iterations) + 1
            parent = state.current
            plans, target = plan(ctx, run_dir, state, iteration)
            planned = time.perf_counter()
            futures = []
            for p in plans:
                out = proposal_path(run_dir, p)
                out.parent.mkdir(parents=True, exist_ok=True)
                key = proposal_key(params, parent["checkpoint_sha256"], p)
                # a proposal whose files are gone must not be answered from Prefect's cache
                task = proposal_task if finished_proposal(out, key) else proposal_task.with_options(refresh_cache=True)
                futures.append((p, runner.submit(task, parameters={
                    "params_json": params_json, "parent_checkpoint": parent["checkpoint"],
                    "plan": p.__dict__, "out_path": str(out), "key": key,
                    "journal": str(run_dir / JOURNAL_FILE)})))
            results: list[ProposalResult] = []
            for p, future in futures:
                future.wait()
                if future.state.is_completed():
                    results.append(result_from_dict(future.result()))
                else:
                    logger.warning(f"proposal for {p.group} failed after retries; skipped: {future.state.message}")
            if not results:
                raise RuntimeError(f"iteration {iteration}: every proposal failed; see the task logs")
            best = pick_best(results, cfg.pick, parent["holdout_accuracy"], state.planning_latency(parent, cfg))
            timing = {"plan_s": round(planned - started, 3), "proposals_s": round(time.perf_counter() - planned, 3)}
            record = commit(ctx, run_dir, state, best, results, target, timing, iteration)
            print(describe_iteration(record))
            create_table_artifact(_proposal_table(record), key=f"iteration-{iteration:03d}",
                                  description=f"iteration {iteration}: proposals (target "
                                              f"{format_value(record['resource'], target)})")
            update_progress_artifact(progress, _progress(state, cfg))
            if tracker:
                tracker.log_iterations(state)
    finish_run(ctx, run_dir, state)
    if tracker:
        tracker.finish(state)
    return {"status": state.status, "iterations": len(state.iterations), "start_ms": state.start_ms(cfg),
            "final_ms": state.latency(state.current, cfg), "run_dir": str(run_dir),
            "budgets": [{"resource": b.resource, "limit": b.limit, "primary": b.primary,
                         "met": b.met(state.values(state.current, cfg)[b.resource])} for b in all_budgets],
            "picks": [(r["group"], r["channels_after"]) for r in state.iterations],
            "flow_run_id": str(flow_run.id)}
