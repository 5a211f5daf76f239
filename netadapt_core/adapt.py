"""NetAdapt's Algorithm 1, as functions over checkpoint paths and small records.

    net_0 = pretrained; i = 0
    while resource(net_i) > budget:
        target_i = resource(net_i) - delta_i
        for each prunable group k:                       # plan_proposals (LUT only)
            choose the fewest filters of k to remove so that LUT(net) <= target_i
            prune them (lowest L2 norm first), short-term fine-tune, score on holdout  # run_proposal
        net_{i+1} = the best proposal                    # pick_best
        measure it, save it (checkpoint + record)         # commit_iteration
    return the family net_1 ... net_n

``resource`` is ``adapt.resource``: latency (default), MACs or parameters. Latency is the direct
measurement of net_i; a proposal's latency is that measurement plus the LUT's difference between
the proposal and net_i, so the LUT's absolute error cancels. MACs and parameters are counted.
With secondary budgets (``adapt.constraints``), the iteration is driven by the first budget not yet
met (the primary first), proposals that would break a budget already met are rejected, and the loop
runs until every budget holds.

Each step takes and returns paths and plain records; ``flows/adapt.py`` composes them as a Prefect
flow that runs the proposals in parallel, caches them and resumes interrupted runs.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from .checkpoint import (
    Architecture,
    atomic_write_json,
    file_sha256,
    load_checkpoint,
    save_checkpoint,
)
from .config import AdaptConfig, ConfigError, Params
from .data import DataBundle, load_data
from .lut import LatencyEstimator, LatencyLUT, channel_grid, network_fingerprint
from .platforms import make_platform
from .resources import Budget, count_macs_params, format_value
from .schedule import budgets, reduction, unmet
from .surgery import prunable_groups, prune_group
from .training import evaluate, train

STATE_FILE = "state.json"
MAX_HALVINGS = 3  # an iteration whose step no group can take retries with half the step
# the adapt settings a proposal's training reads (its cache key); not budgets, runners or paths
EXECUTION_SETTINGS = {"fresh", "max_iterations", "run_dir", "runner", "workers", "dask_address", "proposal_retries",
                      "on_changed_settings"}
PROPOSAL_SETTINGS = {"short_term_steps", "lr", "batch_size", "momentum", "weight_decay", "importance"}


class BudgetUnreachableError(RuntimeError):
    """No network the LUT grid allows can meet the budget."""


@dataclass(frozen=True)
class ProposalPlan:
    """What one proposal will do: remove ``n_remove`` filters of group ``group``, the fewest that
    meet the iteration's target on ``resource``; its estimated latency (LUT), MACs and parameters."""

    iteration: int
    group: str
    channels_before: int
    channels_after: int
    estimated_ms: float
    seed: int
    resource: str = "latency"
    estimated_macs: int = 0
    estimated_params: int = 0

    @property
    def n_remove(self) -> int:
        return self.channels_before - self.channels_after

    def estimates(self) -> dict[str, float]:
        return {"latency": self.estimated_ms, "macs": self.estimated_macs, "params": self.estimated_params}


@dataclass(frozen=True)
class ProposalResult:
    plan: ProposalPlan
    checkpoint: str
    holdout_accuracy: float
    train_seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self.plan), "checkpoint": self.checkpoint,
                "holdout_accuracy": self.holdout_accuracy, "train_seconds": self.train_seconds}


@dataclass
class Context:
    """What every step needs: settings, data, platform, LUT-backed estimator."""

    params: Params
    data: DataBundle
    estimator: LatencyEstimator
    log: Callable[[str], None] = print

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.data.input_shape

    @property
    def platform(self):
        return self.estimator.platform


def open_estimator(params: Params, arch: Architecture, input_shape: tuple[int, ...]) -> LatencyEstimator:
    """Load the LUT, check it was measured on this platform for this network, and attach the
    overlay of entries measured on demand (``lut.on_demand_path``)."""
    platform = make_platform(params.platform)
    lut = LatencyLUT.load(params.lut.path)
    lut.check_compatible(platform.metadata(), network_fingerprint(arch, input_shape), params.lut.path)
    estimator = LatencyEstimator(lut, platform, input_shape, params.lut.measure_missing)
    estimator.attach(params.lut.on_demand_path)
    return estimator


def make_context(params: Params, log: Callable[[str], None] = print) -> Context:
    data = load_data(params.data)
    _, arch, _ = load_checkpoint(params.pretrain.checkpoint)
    return Context(params, data, open_estimator(params, arch, data.input_shape), log)


class _GroupEstimates:
    """Resource estimates of ``parent`` with one group cut to a given width, each variant built once:
    latency by the LUT (anchored at the parent's planning latency), MACs and parameters counted."""

    def __init__(self, ctx: Context, parent: nn.Module, group: str, channels: int, latency_offset: float,
                 resource: str) -> None:
        self.ctx, self.parent, self.group, self.channels = ctx, parent, group, channels
        self.latency_offset, self.resource = latency_offset, resource
        self.cache: dict[tuple[int, str], float] = {}
        self.variants: dict[int, nn.Module] = {}

    def __call__(self, channels: int, what: str | None = None) -> float:
        what = what or self.resource
        if (channels, what) not in self.cache:
            if channels not in self.variants:
                self.variants[channels] = copy.deepcopy(self.parent)
                prune_group(self.variants[channels], self.group, self.channels - channels, self.ctx.input_shape)
            variant = self.variants[channels]
            if what == "latency":
                self.cache[channels, what] = self.latency_offset + self.ctx.estimator.layer_sum_ms(variant)
            else:
                self.cache.update({(channels, k): v for k, v in count_macs_params(variant, self.ctx.input_shape).items()})
        return self.cache[channels, what]


def plan_proposals(ctx: Context, parent: nn.Module, iteration: int, current: dict[str, float], target: float,
                   resource: str = "latency", guards: list[Budget] = ()) -> list[ProposalPlan]:
    """One plan per group that can meet ``target`` on ``resource``: the fewest filters (grid
    multiples) that do. ``current`` holds the parent's planning value of every resource.

    A group's resource use falls as it loses filters, so the search is a bisection over its grid.
    Groups already at their minimum, or unable to reach the target even there, make no proposal;
    nor does one that would break a budget in ``guards`` (budgets the parent meets).
    """
    base_sum = ctx.estimator.layer_sum_ms(parent)
    grid = ctx.estimator.lut.grid
    plans = []
    for index, group in enumerate(prunable_groups(parent, ctx.input_shape)):
        g = grid.get(group.id)
        if g is None:
            raise ConfigError(f"group {group.id} is not in the LUT grid; rebuild the LUT for this network")
        options = [c for c in channel_grid(g["original"], g["step"], g["min"]) if c < group.channels]
        if not options:
            continue
        estimate = _GroupEstimates(ctx, parent, group.id, group.channels, current["latency"] - base_sum, resource)
        if estimate(options[-1]) > target:
            continue
        lo, hi = 0, len(options) - 1  # options[hi] meets the target; find the first that does
        while lo < hi:
            mid = (lo + hi) // 2
            if estimate(options[mid]) <= target:
                hi = mid
            else:
                lo = mid + 1
        channels = options[hi]
        seed = ctx.params.adapt.seed + 1000 * iteration + index
        plan = ProposalPlan(iteration, group.id, group.channels, channels, estimate(channels, "latency"), seed,
                            resource, int(estimate(channels, "macs")), int(estimate(channels, "params")))
        broken = [b for b in guards if not b.met(plan.estimates()[b.resource])]
        if broken:
            ctx.log(f"iteration {iteration + 1}: {group.id} -> {channels} rejected: it would break "
                    + ", ".join(b.describe() for b in broken))
            continue
        plans.append(plan)
    ctx.estimator.save()
    return plans


def proposal_key(params: Params, parent_sha256: str, plan: ProposalPlan) -> str:
    """Content key of a proposal: parent weights, the plan, and the settings its training reads."""
    payload = {
        "parent": parent_sha256,
        "plan": asdict(plan),
        "data": params.section_hash("data"),
        "adapt": params.adapt.model_dump(mode="json", include=PROPOSAL_SETTINGS),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:24]


def finished_proposal(out_path: str | Path, key: str) -> ProposalResult | None:
    """The result of a proposal already run with this key (its record and checkpoint intact)."""
    record_path = Path(out_path).with_suffix(".json")
    if not record_path.is_file():
        return None
    try:
        record = json.loads(record_path.read_text())
        if record["key"] != key or file_sha256(record["checkpoint"]) != record["checkpoint_sha256"]:
            return None
        return ProposalResult(plan_from_dict(record["plan"]), record["checkpoint"],
                              record["holdout_accuracy"], record["train_seconds"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def plan_from_dict(record: dict[str, Any]) -> ProposalPlan:
    """A plan from a record that may hold more keys (a result) or, from older runs, fewer."""
    return ProposalPlan(**{k: record[k] for k in ProposalPlan.__dataclass_fields__ if k in record})


def run_proposal(params: Params, data: DataBundle, parent_checkpoint: str, plan: ProposalPlan,
                 out_path: str, key: str, journal: str | Path | None = None) -> ProposalResult:
    """Prune the plan's filters from the parent, fine-tune short-term, score on the holdout set.

    Idempotent: a proposal whose record (``out_path`` with ``.json``) carries the same ``key`` is
    returned as it was, not run again. Each real execution appends a line to ``journal`` (JSON
    lines), written after the record, so finished work can be audited.
    """
    done = finished_proposal(out_path, key)
    if done is not None:
        return done
    started = time.time()
    model, arch, _ = load_checkpoint(parent_checkpoint)
    cfg = params.adapt
    prune_group(model, plan.group, plan.n_remove, data.input_shape, cfg.importance)
    stats = train(model, data.train, cfg, cfg.short_term_steps, seed=plan.seed)
    accuracy = evaluate(model, data.holdout, threads=cfg.threads)
    sha = save_checkpoint(out_path, model, arch, {"plan": asdict(plan), "holdout_accuracy": accuracy})
    result = ProposalResult(plan, out_path, accuracy, stats.seconds)
    atomic_write_json(Path(out_path).with_suffix(".json"),
                      {**result.to_dict(), "plan": asdict(plan), "key": key, "checkpoint_sha256": sha})
    if journal is not None:
        entry = {"iteration": plan.iteration, "group": plan.group, "key": key, "pid": os.getpid(),
                 "started": started, "finished": time.time()}
        with open(journal, "a") as handle:
            handle.write(json.dumps(entry) + "\n")
    return result


def pick_best(results: list[ProposalResult], rule: str, parent_accuracy: float, parent_ms: float) -> ProposalResult:
    """The paper's rule: highest holdout accuracy (ties: lower latency, then group name).

    ``accuracy_per_latency`` instead picks the smallest accuracy loss per ms removed.
    """
    if not results:
        raise ValueError("no proposals to pick from")
    if rule == "accuracy":
        return min(results, key=lambda r: (-r.holdout_accuracy, r.plan.estimated_ms, r.plan.group))

    def loss_per_ms(r: ProposalResult) -> float:
        return (parent_accuracy - r.holdout_accuracy) / max(parent_ms - r.plan.estimated_ms, 1e-6)

    return min(results, key=lambda r: (loss_per_ms(r), r.plan.estimated_ms, r.plan.group))


def measure_point(ctx: Context, model: nn.Module, reference: dict[str, Any] | None = None) -> dict[str, float]:
    """Direct and LUT latency, MACs and parameters of one network.

    With ``reference`` (a baseline record), the network is timed interleaved with the baseline
    network and ``measured_ms`` is the measured ratio times the baseline's recorded latency: drift
    in machine speed between the two measurements cancels, so a budget set as a share of the start
    is checked reliably.
    """
    if reference is None:
        measured = {"measured_ms": ctx.platform.measure_network(model, ctx.input_shape).median_ms}
    else:
        baseline, _, _ = load_checkpoint(reference["checkpoint"])
        own, ref = ctx.platform.measure_networks([model, baseline], ctx.input_shape)
        measured = {
            "measured_ms": own.median_ms / ref.median_ms * reference["measured_ms"],
            "measured_raw_ms": own.median_ms,
            "reference_raw_ms": ref.median_ms,
        }
    return {**measured, "lut_ms": ctx.estimator.estimate_ms(model), **count_macs_params(model, ctx.input_shape)}


@dataclass
class RunState:
    """``state.json`` of an adaptation run directory: rewritten atomically after each iteration."""

    config_hash: str
    pretrained_sha256: str
    baseline: dict[str, Any]
    iterations: list[dict[str, Any]] = field(default_factory=list)
    status: str = "running"

    def latency(self, record: dict[str, Any], cfg: AdaptConfig) -> float:
        """A record's latency for the stop (``adapt.latency_source``): measured, or the LUT's."""
        return record["measured_ms" if cfg.latency_source == "measured" else "lut_ms"]

    def planning_latency(self, record: dict[str, Any], cfg: AdaptConfig) -> float:
        """A record's latency for setting targets: the LUT estimate, scaled in ``measured`` mode so
        that the start equals its measurement. Free of measurement noise, so targets move smoothly;
        the stop still waits for the measurement."""
        if cfg.latency_source == "lut":
            return record["lut_ms"]
        return record["lut_ms"] * self.baseline["measured_ms"] / self.baseline["lut_ms"]

    def start_ms(self, cfg: AdaptConfig) -> float:
        return self.latency(self.baseline, cfg)

    def values(self, record: dict[str, Any], cfg: AdaptConfig, planning: bool = False) -> dict[str, float]:
        """A record's value of every resource: latency for the stop (or, ``planning``, for targets),
        MACs and parameters."""
        latency = self.planning_latency(record, cfg) if planning else self.latency(record, cfg)
        return {"latency": latency, "macs": float(record["macs"]), "params": float(record["params"])}

    def budgets(self, cfg: AdaptConfig) -> list[Budget]:
        """Every budget of the run (primary first), resolved against the start network."""
        return budgets(self.values(self.baseline, cfg), cfg)

    def unmet(self, cfg: AdaptConfig) -> list[Budget]:
        """The budgets the current network does not meet yet."""
        return unmet(self.values(self.current, cfg), self.budgets(cfg))

    @property
    def current(self) -> dict[str, Any]:
        return self.iterations[-1] if self.iterations else self.baseline

    def save(self, run_dir: Path) -> None:
        atomic_write_json(run_dir / STATE_FILE, asdict(self))


def adapt_config_hash(params: Params) -> str:
    """What an adaptation's result depends on (not ``adapt.fresh``, not max_iterations)."""
    adapt = params.adapt.model_dump(exclude=EXECUTION_SETTINGS)
    payload = {
        "adapt": adapt,
        "other": params.section_hash("data", "model", "platform"),
        "lut": params.lut.model_dump(include={"channel_step", "min_channel_ratio"}),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def open_run(ctx: Context) -> tuple[Path, RunState]:
    """Resume the run in ``adapt.run_dir`` if its settings match, else start one (keeping old runs)."""
    params = ctx.params
    run_dir = Path(params.adapt.run_dir)
    config_hash = adapt_config_hash(params)
    pretrained_sha = file_sha256(params.pretrain.checkpoint)
    state_path = run_dir / STATE_FILE
    if state_path.is_file():
        old = RunState(**json.loads(state_path.read_text()))
        same = old.config_hash == config_hash and old.pretrained_sha256 == pretrained_sha
        if same and not params.adapt.fresh:
            ctx.log(f"resuming {run_dir}: {len(old.iterations)} iteration(s) done")
            return run_dir, old
        if not params.adapt.fresh and params.adapt.on_changed_settings == "refuse":
            raise ConfigError(
                f"{run_dir} holds an adaptation with other settings or another pretrained network "
                f"(hash {old.config_hash}, now {config_hash}). Fix: set adapt.fresh=true to start over "
                "(the old run is kept beside it), or choose another adapt.run_dir."
            )
        kept = run_dir.with_name(f"{run_dir.name}.old-{time.strftime('%Y%m%d-%H%M%S')}")
        run_dir.rename(kept)
        ctx.log(f"fresh start: previous run moved to {kept}")
    elif run_dir.exists() and any(run_dir.iterdir()):
        raise ConfigError(f"{run_dir} exists but has no {STATE_FILE}; move it away or pick another adapt.run_dir")
    model, _, _ = load_checkpoint(params.pretrain.checkpoint)
    baseline_ckpt = run_dir / "iter_000.pt"  # copied there once the run is known to be feasible
    baseline = {
        "iteration": 0,
        "checkpoint": str(baseline_ckpt),
        "holdout_accuracy": evaluate(model, ctx.data.holdout, threads=params.adapt.threads),
        **measure_point(ctx, model),
    }
    probe = RunState(config_hash, pretrained_sha, baseline)
    check_reachable(ctx, model, probe.budgets(params.adapt), probe.values(baseline, params.adapt))
    run_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(params.pretrain.checkpoint, baseline_ckpt)
    baseline["checkpoint_sha256"] = file_sha256(baseline_ckpt)
    state = RunState(config_hash, pretrained_sha, baseline)
    state.save(run_dir)
    ctx.estimator.save()
    return run_dir, state


def check_reachable(ctx: Context, model: nn.Module, all_budgets: list[Budget], start: dict[str, float]) -> None:
    """Fail before any training if even the smallest network the grid allows misses a budget."""
    smallest = copy.deepcopy(model)
    for group in prunable_groups(smallest, ctx.input_shape):
        g = ctx.estimator.lut.grid[group.id]
        floor = channel_grid(g["original"], g["step"], g["min"])[-1]
        if floor < group.channels:
            prune_group(smallest, group.id, group.channels - floor, ctx.input_shape)
    floors = {
        "latency": start["latency"] - (ctx.estimator.layer_sum_ms(model) - ctx.estimator.layer_sum_ms(smallest)),
        **count_macs_params(smallest, ctx.input_shape),
    }
    missed = [b for b in all_budgets if not b.met(floors[b.resource])]
    if missed:
        what = "; ".join(
            f"{b.describe()} (start {format_value(b.resource, start[b.resource])}, smallest network "
            f"{format_value(b.resource, floors[b.resource])}{' by the LUT' if b.resource == 'latency' else ''})"
            for b in missed
        )
        raise BudgetUnreachableError(
            f"unreachable budget: with every layer at its minimum width (lut.min_channel_ratio="
            f"{ctx.params.lut.min_channel_ratio}) the network still misses {what}. Fix: raise "
            "adapt.budget_ratio / adapt.budget or the constraint, or lower lut.min_channel_ratio and "
            "rebuild the LUT."
        )


def commit_iteration(ctx: Context, run_dir: Path, state: RunState, best: ProposalResult,
                     proposals: list[ProposalResult], target: float, timing: dict[str, float]) -> dict[str, Any]:
    """Keep the picked proposal as net_{i+1}: move its checkpoint, measure it, record it atomically.

    ``timing`` holds wall seconds of the iteration's phases so far (``plan_s``, ``proposals_s``);
    ``commit_s`` (measurement included) is added here.
    """
    commit_started = time.perf_counter()
    iteration = best.plan.iteration + 1
    final_ckpt = run_dir / f"iter_{iteration:03d}.pt"
    Path(best.checkpoint).replace(final_ckpt)
    model, _, _ = load_checkpoint(final_ckpt)
    record = {
        "iteration": iteration,
        "group": best.plan.group,
        "channels_before": best.plan.channels_before,
        "channels_after": best.plan.channels_after,
        "filters_removed": best.plan.n_remove,
        "resource": best.plan.resource,
        "target": target,
        "estimated_ms": best.plan.estimated_ms,
        "holdout_accuracy": best.holdout_accuracy,
        "checkpoint": str(final_ckpt),
        "checkpoint_sha256": file_sha256(final_ckpt),
        "proposals": [dict(p.to_dict(), picked=p is best) for p in proposals],
        "timing": timing,
        **measure_point(ctx, model, state.baseline),
    }
    timing["commit_s"] = round(time.perf_counter() - commit_started, 3)
    record["seconds"] = round(sum(timing.values()), 3)
    state.iterations.append(record)
    ctx.estimator.save()
    state.save(run_dir)
    shutil.rmtree(run_dir / "proposals", ignore_errors=True)
    return record


def budget_reached(state: RunState, cfg: AdaptConfig) -> bool:
    """Whether net_i meets every budget; latency by measurement (default) or by the LUT
    (``adapt.latency_source``)."""
    return not state.unmet(cfg)


def plan_iteration(ctx: Context, run_dir: Path, state: RunState) -> tuple[list[ProposalPlan], float]:
    """Iteration i's target and one plan per group able to meet it.

    The target is on the first budget not yet met (the primary first); budgets already met guard
    against proposals that would break them. When no group alone can take the scheduled step, the
    step is halved (``MAX_HALVINGS`` times) before the run is declared stuck; finished iterations
    stay on disk either way.
    """
    cfg = ctx.params.adapt
    i = len(state.iterations)
    current = state.current
    parent, _, _ = load_checkpoint(current["checkpoint"])
    missing = state.unmet(cfg)
    driving = missing[0] if missing else state.budgets(cfg)[0]
    guards = [b for b in state.budgets(cfg) if b not in missing]
    now = state.values(current, cfg, planning=True)
    step = reduction(i, driving.resource, state.values(state.baseline, cfg, planning=True), cfg)
    for _ in range(MAX_HALVINGS + 1):
        target = now[driving.resource] - step
        plans = plan_proposals(ctx, parent, i, now, target, driving.resource, guards)
        if plans:
            return plans, target
        ctx.log(f"iteration {i + 1}: no layer alone can remove {format_value(driving.resource, step)}; "
                "halving the step")
        step /= 2
    state.status = "stuck"
    state.save(run_dir)
    raise BudgetUnreachableError(
        f"iteration {i + 1}: no layer can remove even {format_value(driving.resource, step * 2)} (network at "
        f"{format_value(driving.resource, now[driving.resource])}, budget {driving.describe()}). The {i} "
        f"finished iteration(s) are kept in {run_dir}. Fix: lower lut.min_channel_ratio or raise the budget."
    )


def proposal_path(run_dir: Path, plan: ProposalPlan) -> Path:
    return run_dir / "proposals" / f"{plan.iteration + 1:03d}" / f"{plan.group}.pt"


JOURNAL_FILE = "executions.jsonl"


def finish_run(ctx: Context, run_dir: Path, state: RunState) -> RunState:
    cfg = ctx.params.adapt
    state.status = "done" if budget_reached(state, cfg) else "max_iterations"
    state.save(run_dir)
    if state.status != "done":
        ctx.log(f"warning: stopped after {cfg.max_iterations} iterations without meeting the budget")
    return state


def describe_iteration(record: dict[str, Any]) -> str:
    resource = record.get("resource", "latency")
    return (
        f"iter {record['iteration']:2d}: {record['group']} {record['channels_before']}->"
        f"{record['channels_after']}  target {resource} {format_value(resource, record['target'])}  "
        f"lut {record['lut_ms']:.3f}  measured {record['measured_ms']:.3f} ms  "
        f"{format_value('macs', record['macs'])}  {format_value('params', record['params'])}  "
        f"holdout {record['holdout_accuracy']:.4f}  ({len(record['proposals'])} proposals, {record['seconds']:.0f}s)"
    )
