"""The task of one NetAdapt proposal: prune a group of the parent, fine-tune short-term, score.

Only proposals run on the worker pool; planning and committing measure latency and so run in the
flow's process (``netadapt_core.adapt.loop``) while no proposal trains. A proposal's durable record
beside its checkpoint is its cache (``run_proposal`` returns a finished one without running it),
so Prefect caches nothing here that could disagree with the files.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from netadapt_core.adapt import ProposalPlan, run_proposal
from netadapt_core.config import DataConfig, Params
from netadapt_core.data import DataBundle, load_data


@lru_cache(maxsize=2)
def _data(data_json: str) -> DataBundle:
    """Each worker process loads the data once per data configuration."""
    return load_data(DataConfig.model_validate_json(data_json))


@task(name="make-proposal", cache_policy=NO_CACHE,
      task_run_name="proposal {plan[group]} (iteration {plan[iteration]})")
def make_proposal(params_json: str, parent_checkpoint: str, plan: dict[str, Any], out_path: str, key: str,
                  journal: str, steps: int | None = None, resume_from: str | None = None,
                  screening_round: int = 0) -> dict[str, Any]:
    """Prune one group of the parent (or resume it from a screening round), fine-tune short-term,
    score on the holdout set."""
    params = Params.model_validate_json(params_json)
    data = _data(params.data.model_dump_json())
    result = run_proposal(params, data, parent_checkpoint, ProposalPlan.from_record(plan), out_path, key, journal,
                          steps, resume_from, screening_round)
    return result.to_dict()

