"""Planning one iteration: target_i = resource(net_i) - delta_i, the step halved until enough groups
can take it; one plan per group (``plan.plan_proposals``); candidates near a measured-latency target
timed before any training (``adapt.verify``). A run that cannot go on gets the reason as the plan's
note, with the fix."""

from __future__ import annotations

import math

from torch import nn

from ..checkpoint import load_checkpoint
from ..config import AdaptConfig
from ..latency_model import LatencyPoint
from ..platforms import measure_relative
from ..resources import Budget, format_value
from ..schedule import reduction
from ..surgery import PrunableGroup, prunable_groups
from .context import Context
from .plan import GroupEstimates, ProposalPlan, group_options, plan_proposals
from .records import IterationPlan
from .state import RunState

MAX_SHRINKS = 3  # the step is halved at most this often to let more groups propose


def plan_iteration(ctx: Context, state: RunState) -> IterationPlan:
    """Iteration i's target on the first unmet budget and one plan per group able to meet it
    without breaking a budget already met; no plans (and the reason in ``note``) when none can."""
    cfg = ctx.params.adapt
    i = len(state.iterations)
    parent_model, _, _ = load_checkpoint(state.current.checkpoint)
    missing = state.unmet(cfg)
    if not missing:
        raise ValueError("every budget is met: there is no iteration to plan")
    driving = missing[0]
    guards = [b for b in state.budgets(cfg) if b not in missing]
    now = state.values(state.current, cfg)
    model = state.latency_model(cfg)
    step = reduction(i, driving.resource, state.values(state.baseline, cfg), cfg)
    floor = target_floor(cfg, driving, model.relative_error())
    groups = prunable_groups(parent_model, ctx.input_shape, cfg.exclude)
    eligible = [g for g in groups if group_options(ctx, g)]
    if not eligible:
        return IterationPlan(iteration=i, resource=driving.resource, target=floor, plans=[],
                             note=at_minimum_reason(ctx, driving, now))
    needed = max(1, math.ceil(cfg.min_proposal_share * len(eligible)))
    best: tuple[float, list[ProposalPlan]] | None = None
    estimates: dict[str, GroupEstimates] = {}  # variants built once per iteration, whatever the target
    for _ in range(MAX_SHRINKS + 1):
        target = max(now[driving.resource] - step, floor)
        plans = plan_proposals(ctx, parent_model, i, now, target, driving.resource, guards, model, estimates)
        if best is None or len(plans) > len(best[1]):
            best = (target, plans)
        if len(plans) >= needed:
            break
        ctx.log(f"iteration {i + 1}: {len(plans)} of {len(eligible)} groups can remove "
                f"{format_value(driving.resource, step)}; halving the step")
        step /= 2
    target, plans = best
    note = ""
    if not plans:
        # the LUT sees no group reaching even the smallest step, yet the network misses its budget
        # by measurement: take one grid step from every group and let measurement decide
        plans = plan_proposals(ctx, parent_model, i, now, None, driving.resource, guards, model, estimates)
        note = f"no group meets {format_value(driving.resource, target)} by the latency model; one grid step per group"
        ctx.log(f"iteration {i + 1}: {note}")
        if not plans:
            return IterationPlan(iteration=i, resource=driving.resource, target=target, plans=[],
                                 note=guarded_reason(driving, guards))
    if driving.resource == "latency" and cfg.latency_source == "measured":
        plans = verify_candidates(ctx, state, parent_model, {g.id: g for g in groups}, plans, target,
                                  now["latency"], estimates)
    return IterationPlan(iteration=i, resource=driving.resource, target=target, plans=plans, note=note)


def target_floor(cfg: AdaptConfig, driving: Budget, rel_error: float) -> float:
    """Targets stop just below the budget: past it, a step only costs accuracy. Measured latency
    keeps a margin of the model's uncertainty (at least 1%), so the last pick lands under it."""
    if driving.resource == "latency" and cfg.latency_source == "measured":
        return driving.limit * (1 - max(rel_error, 0.01))
    return driving.limit


def verify_candidates(ctx: Context, state: RunState, parent_model: nn.Module, groups: dict[str, PrunableGroup],
                      plans: list[ProposalPlan], target: float, parent_ms: float,
                      estimates: dict[str, GroupEstimates]) -> list[ProposalPlan]:
    """Measure candidates before training (``adapt.verify``: all, or under ``auto`` those whose
    prediction lies within the model's uncertainty of the target); one measured over the target
    loses more filters, a grid step at a time. Every measurement joins ``state.latency_points``.

    The candidates of a round are timed together, interleaved with the parent
    (``measure_relative``): the parent is timed once per round instead of once per
    candidate, and every candidate sees the same drift of the machine as its reference."""
    cfg = ctx.params.adapt
    if cfg.verify == "none":
        return plans
    model = state.latency_model(cfg)
    margin = max(2 * model.relative_error(), 0.01) * parent_ms
    parent_lut_ms = ctx.estimator.estimate_ms(parent_model)
    checked: list[ProposalPlan] = list(plans)
    # index in ``checked`` -> (grid options, position of the width now tried)
    todo: dict[int, tuple[list[int], int]] = {}
    for k, plan in enumerate(plans):
        if cfg.verify == "auto" and target - plan.estimated_ms >= margin:
            continue
        options = group_options(ctx, groups[plan.group])
        todo[k] = (options, options.index(plan.channels_after))
    for _extra in range(cfg.verify_max_extra_steps + 1):
        if not todo:
            break
        ks = list(todo)
        variants = [estimates[checked[k].group].variant(todo[k][0][todo[k][1]]) for k in ks]
        pairs = measure_relative(ctx.platform, variants, parent_model, ctx.input_shape, cfg.verify_repeats)
        for k, variant, (own, ref) in zip(ks, variants, pairs):
            options, index = todo.pop(k)
            measured = own.median_ms / ref.median_ms * parent_ms
            candidate = estimates[checked[k].group].plan(checked[k].iteration, options[index], checked[k].seed)
            state.latency_points.append(LatencyPoint(
                lut_ms=ctx.estimator.estimate_ms(variant), measured_ms=measured,
                parent_lut_ms=parent_lut_ms, parent_measured_ms=parent_ms,
                predicted_ms=candidate.estimated_ms, kind="candidate"))
            checked[k] = candidate.model_copy(update={"verified_ms": measured})
            if measured > target and index + 1 < len(options):
                todo[k] = (options, index + 1)  # over the target: one grid step narrower
    verified = [p for p in checked if p.verified_ms is not None]
    if verified:
        ctx.log(f"iteration {plans[0].iteration + 1}: measured {len(verified)} candidate(s) for the target "
                f"{target:.3f} ms: " + ", ".join(f"{p.group}->{p.channels_after} {p.verified_ms:.3f} "
                                                 f"(predicted {p.estimated_ms:.3f})" for p in verified))
    return checked


def at_minimum_reason(ctx: Context, driving: Budget, now: dict[str, float]) -> str:
    return (f"every layer is at its minimum width (lut.min_channel_ratio={ctx.params.lut.min_channel_ratio}) "
            f"and the network is at {format_value(driving.resource, now[driving.resource])}, over "
            f"{driving.describe()}: the budget is below the smallest network the grid allows. Fix: raise the "
            "budget, or lower lut.min_channel_ratio and rebuild the LUT (netadapt lut).")


def guarded_reason(driving: Budget, guards: list[Budget]) -> str:
    return ("every group that can still be pruned would break a budget already met ("
            + ", ".join(b.describe() for b in guards) + f") while {driving.describe()} is unmet. Fix: "
            "relax one of these budgets.")
