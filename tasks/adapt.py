"""Tasks of one NetAdapt iteration: plan (LUT), make a proposal (train + score), commit (measure).

Only ``make_proposal`` runs on the worker pool; planning and committing measure latency and so run
in the flow's process while no proposal trains. Proposal results are cached by content: the parent
checkpoint's hash, the plan, and the settings that shape training, never the run id.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from netadapt_core.adapt import (
    Context,
    ProposalPlan,
    ProposalResult,
    RunState,
    commit_iteration,
    plan_from_dict,
    plan_iteration,
    run_proposal,
)
from netadapt_core.config import DataConfig, Params
from netadapt_core.data import DataBundle, load_data


@lru_cache(maxsize=2)
def _data(data_json: str) -> DataBundle:
    """Each worker process loads the data once per data configuration."""
    return load_data(DataConfig.model_validate_json(data_json))


def proposal_cache_key(_context: Any, parameters: dict[str, Any]) -> str:
    """Content key (computed by the flow from the parent's hash, the plan and settings) + output path."""
    where = hashlib.sha256(parameters["out_path"].encode()).hexdigest()[:8]
    return f"netadapt-proposal-{parameters['key']}-{where}"


@task(
    name="make-proposal",
    cache_key_fn=proposal_cache_key,
    persist_result=True,
    task_run_name="proposal {plan[group]} (iteration {plan[iteration]})",
)
def make_proposal(params_json: str, parent_checkpoint: str, plan: dict[str, Any], out_path: str, key: str,
                  journal: str) -> dict[str, Any]:
    """Prune one group of the parent, fine-tune short-term, score on the holdout set."""
    params = Params.model_validate_json(params_json)
    data = _data(params.data.model_dump_json())
    result = run_proposal(params, data, parent_checkpoint, ProposalPlan(**plan), out_path, key, journal)
    return result.to_dict()


@task(name="plan-iteration", cache_policy=NO_CACHE, task_run_name="plan iteration {iteration}")
def plan(ctx: Context, run_dir: Path, state: RunState, iteration: int) -> tuple[list[ProposalPlan], float]:
    """Target of the iteration and, per group, the fewest filters to remove to meet it (LUT, counts)."""
    return plan_iteration(ctx, run_dir, state)


@task(name="commit-iteration", cache_policy=NO_CACHE, task_run_name="commit iteration {iteration}")
def commit(ctx: Context, run_dir: Path, state: RunState, best: ProposalResult, results: list[ProposalResult],
           target: float, timing: dict[str, float], iteration: int) -> dict[str, Any]:
    """Keep the pick as the next network: measure it directly and save it atomically."""
    return commit_iteration(ctx, run_dir, state, best, results, target, timing)


def result_from_dict(record: dict[str, Any]) -> ProposalResult:
    return ProposalResult(plan_from_dict(record), record["checkpoint"], record["holdout_accuracy"],
                          record["train_seconds"])
