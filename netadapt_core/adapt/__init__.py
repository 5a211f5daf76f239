"""NetAdapt's Algorithm 1: the loop and the steps it is made of, as functions over checkpoint paths
and small records.

- ``context``: the run's settings, data and LUT-backed estimator (``Context``); measuring a network.
- ``plan``: one proposal per group, the fewest filters that meet the iteration's target
  (``ProposalPlan``, ``plan_proposals``); whether a budget is reachable at all.
- ``proposal``: running a proposal (prune, short-term fine-tune, holdout score), its content key
  and durable record, ranking.
- ``iteration``: one iteration's target (the step shrunk until enough groups can take it) and its
  plans, candidates measured before training.
- ``records``: what ``state.json`` keeps: ``NetworkPoint`` (the start), ``IterationRecord`` (a pick),
  ``IterationPlan`` (the pending plan).
- ``state``: the run directory: ``state.json`` (``RunState``), its lock, opening or resuming a run.
- ``loop``: ``NetAdapt``, the loop itself, driven through ``map_proposals`` and ``on_iteration``.

``resource`` is ``adapt.resource``: latency (default), MACs or parameters. A network's latency is
its direct measurement (interleaved with the start network, so machine drift cancels); a
candidate's is predicted from its parent's measurement and the LUT's difference between the two
(``latency_model``). MACs and parameters are counted.
"""

from __future__ import annotations

from .context import Context, architecture, check_pretrained, make_context, measure_point, open_estimator
from .iteration import plan_iteration
from .loop import MapProposals, NetAdapt, OnIteration, ProposalJob, describe_iteration
from .plan import (
    BudgetUnreachableError,
    GroupEstimates,
    ProposalPlan,
    check_reachable,
    group_options,
    plan_proposals,
    smallest_network,
    unreachable_error,
)
from .proposal import (
    JOURNAL_FILE,
    PROPOSAL_SETTINGS,
    ProposalResult,
    finished_proposal,
    halving_schedule,
    pick_best,
    proposal_key,
    proposal_path,
    rank_proposals,
    run_proposal,
)
from .records import IterationPlan, IterationRecord, NetworkPoint
from .state import (
    EXECUTION_SETTINGS,
    START_PASSES,
    STATE_FILE,
    RunState,
    adapt_config_hash,
    lock_run_dir,
    open_run,
)

__all__ = [
    "EXECUTION_SETTINGS", "JOURNAL_FILE", "PROPOSAL_SETTINGS", "START_PASSES", "STATE_FILE",
    "BudgetUnreachableError", "Context", "GroupEstimates", "IterationPlan", "IterationRecord", "MapProposals", "NetAdapt",
    "NetworkPoint",
    "OnIteration", "ProposalJob", "ProposalPlan", "ProposalResult", "RunState", "adapt_config_hash",
    "architecture", "check_pretrained", "check_reachable", "describe_iteration", "finished_proposal",
    "group_options", "halving_schedule", "lock_run_dir", "make_context", "measure_point", "open_estimator",
    "open_run", "pick_best", "plan_iteration", "plan_proposals", "proposal_key", "proposal_path",
    "rank_proposals", "run_proposal", "smallest_network", "unreachable_error",
]
