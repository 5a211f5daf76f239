"""NetAdapt's Algorithm 1 as a loop the caller drives through two hooks.

    net_0 = pretrained, measured                                        open_run
    while some budget is unmet and i < max_iterations:
        target_i = resource(net_i) - delta_i, the step shrunk until most groups can take it
        per group: the fewest filters that meet target_i, predicted from net_i's measurement
            and the LUT's difference; candidates near the target measured directly   plan
        proposals = map_proposals(prune, short-term fine-tune, holdout score)
        net_{i+1} = the best proposal measured no slower than net_i           commit
        on_iteration(record)
    status: done | unmet (with the reason) | max_iterations

``map_proposals`` runs a list of ``ProposalJob`` and returns one result (or None for a failed
proposal) per job, in order; the default runs them one after another in this process. The Prefect
flow passes one that fans them out on its task runner. Nothing else of the algorithm lives there.
"""

from __future__ import annotations

import math
import shutil
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from torch import nn

from .. import faults
from ..checkpoint import atomic_write_bytes, file_sha256, load_checkpoint
from ..errors import ProposalsFailedError
from ..latency_model import LatencyPoint
from ..platforms import measure_relative
from ..resources import Budget, format_value
from ..schedule import reduction
from ..surgery import PrunableGroup, prunable_groups
from .context import Context, measure_point
from .plan import GroupEstimates, ProposalPlan, group_options, plan_proposals
from .proposal import (
    JOURNAL_FILE,
    ProposalResult,
    halving_schedule,
    proposal_key,
    proposal_path,
    rank_proposals,
    run_proposal,
)
from .state import RunState

MAX_SHRINKS = 3  # the step is halved at most this often to let more groups propose
RECHECK_SHARE = 0.03  # a pick measured this far off what was expected is measured again


@dataclass(frozen=True)
class ProposalJob:
    """Everything one proposal needs, as plain values: it can run in another process or host."""

    plan: ProposalPlan
    parent_checkpoint: str
    out_path: str
    key: str
    journal: str
    steps: int | None = None  # None: adapt.short_term_steps
    resume_from: str | None = None  # the proposal's checkpoint from the previous screening round
    screening_round: int = 0


MapProposals = Callable[[list[ProposalJob]], list[ProposalResult | None]]
OnIteration = Callable[[dict[str, Any], RunState], None]


@dataclass
class IterationPlan:
    """One iteration's target on ``resource`` and its proposals; or, with no plans, why none."""

    iteration: int
    resource: str
    target: float
    plans: list[ProposalPlan]
    note: str = ""

    def to_dict(self, parent_sha256: str) -> dict[str, Any]:
        return {"iteration": self.iteration, "resource": self.resource, "target": self.target, "note": self.note,
                "parent_sha256": parent_sha256, "plans": [p.model_dump() for p in self.plans]}


class NetAdapt:
    """The loop over one run directory (see the module docstring); ``run`` drives it to the end."""

    def __init__(self, ctx: Context, run_dir: Path, state: RunState) -> None:
        self.ctx, self.run_dir, self.state = ctx, run_dir, state
        self.cfg = ctx.params.adapt
        self.screened_out: list[dict[str, Any]] = []  # this iteration's proposals dropped by screening

    # ------------------------------------------------------------------ the loop
    def run(self, map_proposals: MapProposals | None = None, on_iteration: OnIteration | None = None) -> RunState:
        map_proposals = map_proposals or self.run_serially
        state = self.state
        state.status, state.reason = "running", None
        while True:
            missing = state.unmet(self.cfg)
            if not missing:
                return self._finish("done")
            if len(state.iterations) >= self.cfg.max_iterations:
                return self._finish("max_iterations", f"stopped after adapt.max_iterations="
                                    f"{self.cfg.max_iterations} with {missing[0].describe()} unmet")
            started = time.perf_counter()
            step = self.plan()
            if not step.plans:
                return self._finish("unmet", step.note)
            planned = time.perf_counter()
            results = self.screen(step, map_proposals)
            if not results:
                raise ProposalsFailedError(f"iteration {step.iteration + 1}: every proposal failed; see the log. "
                                           "Re-run to resume: finished proposals are kept.")
            timing = {"plan_s": round(planned - started, 3), "proposals_s": round(time.perf_counter() - planned, 3)}
            record = self.commit(step, results, timing)
            if record is None:
                return self._finish("unmet", self._all_slower_reason(step))
            self.ctx.log(describe_iteration(record))
            if on_iteration is not None:
                on_iteration(record, state)

    def run_serially(self, jobs: list[ProposalJob]) -> list[ProposalResult | None]:
        """The default ``map_proposals``: each proposal in turn, in this process."""
        results: list[ProposalResult | None] = []
        for job in jobs:
            try:
                results.append(run_proposal(self.ctx.params, self.ctx.data, job.parent_checkpoint, job.plan,
                                            job.out_path, job.key, job.journal, job.steps, job.resume_from,
                                            job.screening_round))
            except Exception as exc:  # noqa: BLE001  # one broken proposal costs that proposal only
                self.ctx.log(f"proposal {job.plan.group} failed and is skipped: {type(exc).__name__}: {exc}")
                results.append(None)
        return results

    def screen(self, step: IterationPlan, map_proposals: MapProposals) -> list[ProposalResult]:
        """Short-term fine-tune the proposals. ``adapt.screening: halving`` trains them in rounds
        to a growing share of ``adapt.short_term_steps``; after each round the better half (by
        ``adapt.pick`` on the holdout set) goes on, the rest is recorded in ``screened_out``."""
        cfg, parent = self.cfg, self.state.current
        jobs = self.jobs(step)
        self.screened_out = []
        marks = ([cfg.short_term_steps] if cfg.screening == "full"
                 else halving_schedule(cfg.short_term_steps, cfg.halving_rounds, len(jobs)))
        if len(marks) == 1:
            return [r for r in map_proposals(jobs) if r is not None]
        done_steps, previous = 0, {}
        for k, mark in enumerate(marks):
            last = k == len(marks) - 1
            round_jobs = [replace(job, steps=mark - done_steps, resume_from=previous.get(job.plan.group),
                                  screening_round=k, key=f"{job.key}-r{k}of{len(marks)}:{mark}",
                                  out_path=job.out_path if last else f"{job.out_path.removesuffix('.pt')}.r{k}.pt")
                          for job in jobs]
            results = [r for r in map_proposals(round_jobs) if r is not None]
            if last:
                return results
            ranked = rank_proposals(results, cfg.pick, parent["holdout_accuracy"],
                                    self.state.latency(parent, cfg))
            keep = ranked[:max(2, math.ceil(len(ranked) / 2))]
            kept = {r.plan.group for r in keep}
            self.screened_out += [{"group": r.plan.group, "channels_after": r.plan.channels_after, "steps": mark,
                                   "holdout_accuracy": r.holdout_accuracy} for r in ranked if r.plan.group not in kept]
            self.ctx.log(f"iteration {step.iteration + 1}: screening round {k + 1}/{len(marks)} at {mark} steps: "
                         f"{len(keep)} of {len(results)} proposals go on")
            previous = {r.plan.group: r.checkpoint for r in keep}
            jobs = [job for job in jobs if job.plan.group in kept]
            done_steps = mark
        return []  # pragma: no cover - the last round returns

    def jobs(self, step: IterationPlan) -> list[ProposalJob]:
        parent = self.state.current
        jobs = []
        for plan in step.plans:
            out = proposal_path(self.run_dir, plan)
            out.parent.mkdir(parents=True, exist_ok=True)
            jobs.append(ProposalJob(plan, parent["checkpoint"], str(out),
                                    proposal_key(self.ctx.params, parent["checkpoint_sha256"], plan),
                                    str(self.run_dir / JOURNAL_FILE)))
        return jobs

    def _finish(self, status: str, reason: str | None = None) -> RunState:
        self.state.status, self.state.reason = status, reason
        self.state.pending = None
        self.state.save(self.run_dir)
        if reason:
            self.ctx.log(f"adaptation ended {status}: {reason}")
        return self.state

    # ------------------------------------------------------------------ plan
    def plan(self) -> IterationPlan:
        """Iteration i's target and one plan per group able to meet it (resumed if already planned)."""
        state = self.state
        parent = state.current
        pending = state.pending
        if pending and pending["iteration"] == len(state.iterations) \
                and pending["parent_sha256"] == parent["checkpoint_sha256"]:
            return IterationPlan(pending["iteration"], pending["resource"], pending["target"],
                                 [ProposalPlan.from_record(p) for p in pending["plans"]], pending["note"])
        step = self._plan_fresh()
        state.pending = step.to_dict(parent["checkpoint_sha256"]) if step.plans else None
        state.save(self.run_dir)
        faults.point("plan-saved")
        return step

    def _plan_fresh(self) -> IterationPlan:
        state, cfg, ctx = self.state, self.cfg, self.ctx
        i = len(state.iterations)
        parent_model, _, _ = load_checkpoint(state.current["checkpoint"])
        missing = state.unmet(cfg)
        if not missing:
            raise ValueError("every budget is met: there is no iteration to plan")
        driving = missing[0]
        guards = [b for b in state.budgets(cfg) if b not in missing]
        now = state.values(state.current, cfg)
        model = state.latency_model(cfg)
        step = reduction(i, driving.resource, state.values(state.baseline, cfg), cfg)
        floor = self._target_floor(driving, model.relative_error())
        groups = prunable_groups(parent_model, ctx.input_shape, ctx.params.adapt.exclude)
        eligible = [g for g in groups if group_options(ctx, g)]
        if not eligible:
            return IterationPlan(i, driving.resource, floor, [], self._at_minimum_reason(driving, now))
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
            note = (f"no group meets {format_value(driving.resource, target)} by the latency model; one grid "
                    "step per group")
            ctx.log(f"iteration {i + 1}: {note}")
            if not plans:
                return IterationPlan(i, driving.resource, target, [], self._guarded_reason(driving, guards))
        if driving.resource == "latency" and cfg.latency_source == "measured":
            plans = self._verify(parent_model, {g.id: g for g in groups}, plans, target, now["latency"], estimates)
        return IterationPlan(i, driving.resource, target, plans, note)

    def _target_floor(self, driving: Budget, rel_error: float) -> float:
        """Targets stop just below the budget: past it, a step only costs accuracy. Measured latency
        keeps a margin of the model's uncertainty (at least 1%), so the last pick lands under it."""
        if driving.resource == "latency" and self.cfg.latency_source == "measured":
            return driving.limit * (1 - max(rel_error, 0.01))
        return driving.limit

    def _verify(self, parent_model: nn.Module, groups: dict[str, PrunableGroup], plans: list[ProposalPlan],
                target: float, parent_ms: float, estimates: dict[str, GroupEstimates]) -> list[ProposalPlan]:
        """Measure candidates before training (``adapt.verify``: all, or under ``auto`` those whose
        prediction lies within the model's uncertainty of the target); one measured over the target
        loses more filters, a grid step at a time.

        The candidates of a round are timed together, interleaved with the parent
        (``measure_relative``): the parent is timed once per round instead of once per
        candidate, and every candidate sees the same drift of the machine as its reference."""
        cfg, ctx = self.cfg, self.ctx
        if cfg.verify == "none":
            return plans
        model = self.state.latency_model(cfg)
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
        for extra in range(cfg.verify_max_extra_steps + 1):
            if not todo:
                break
            ks = list(todo)
            variants = [estimates[checked[k].group].variant(todo[k][0][todo[k][1]]) for k in ks]
            pairs = measure_relative(ctx.platform, variants, parent_model, ctx.input_shape, cfg.verify_repeats)
            for k, variant, (own, ref) in zip(ks, variants, pairs):
                options, index = todo.pop(k)
                measured = own.median_ms / ref.median_ms * parent_ms
                candidate = estimates[checked[k].group].plan(checked[k].iteration, options[index], checked[k].seed)
                self.state.latency_points.append(LatencyPoint(
                    lut_ms=ctx.estimator.estimate_ms(variant), measured_ms=measured,
                    parent_lut_ms=parent_lut_ms, parent_measured_ms=parent_ms,
                    predicted_ms=candidate.estimated_ms, kind="candidate").model_dump())
                checked[k] = candidate.model_copy(update={"verified_ms": measured})
                if measured > target and index + 1 < len(options):
                    todo[k] = (options, index + 1)  # over the target: one grid step narrower
        verified = [p for p in checked if p.verified_ms is not None]
        if verified:
            ctx.log(f"iteration {plans[0].iteration + 1}: measured {len(verified)} candidate(s) for the target "
                    f"{target:.3f} ms: " + ", ".join(f"{p.group}->{p.channels_after} {p.verified_ms:.3f} "
                                                     f"(predicted {p.estimated_ms:.3f})" for p in verified))
        return checked

    # ------------------------------------------------------------------ commit
    def commit(self, step: IterationPlan, results: list[ProposalResult],
               timing: dict[str, float]) -> dict[str, Any] | None:
        """Keep the best proposal measured no slower than its parent as net_{i+1}; None if none is."""
        state, cfg, ctx = self.state, self.cfg, self.ctx
        started = time.perf_counter()
        parent = state.current
        parent_ms = state.latency(parent, cfg)
        rejected: list[dict[str, Any]] = []
        for candidate in rank_proposals(results, cfg.pick, parent["holdout_accuracy"], parent_ms):
            model, _, _ = load_checkpoint(candidate.checkpoint)
            point, slower = self._measure_pick(model, candidate.plan, parent)
            faults.point("pick-measured")
            state.latency_points.append(LatencyPoint(
                lut_ms=point["lut_ms"], measured_ms=point["measured_ms"], parent_lut_ms=parent["lut_ms"],
                parent_measured_ms=parent["measured_ms"], predicted_ms=candidate.plan.estimated_ms).model_dump())
            if slower is not None:
                rejected.append({"group": candidate.plan.group, "vs_parent": slower})
                ctx.log(f"iteration {step.iteration + 1}: pick {candidate.plan.group}->"
                        f"{candidate.plan.channels_after} measured {slower:.3f}x its parent; rejected")
                continue
            return self._keep(step, candidate, results, point, rejected, timing, started)
        return None

    def _measure_pick(self, model: nn.Module, plan: ProposalPlan,
                      parent: dict[str, Any]) -> tuple[dict[str, Any], float | None]:
        """The pick's point (measured against the start network) and, when it is confirmed slower
        than its parent, its latency ratio to the parent (else None).

        A first measurement that lands above the parent (by ``adapt.slower_tolerance``) or off what
        was expected (its measurement before training, else the prediction) by more than
        ``RECHECK_SHARE`` is taken again, interleaved with the parent itself, and the median of the
        estimates is kept: a busy moment of the machine (4-7% here, now and then) would otherwise
        set the next iteration's target off, or reject a good pick."""
        cfg, ctx = self.cfg, self.ctx
        point = measure_point(ctx, model, self.state.baseline)
        if cfg.latency_source != "measured":
            return point, None
        first, expected = point["measured_ms"], plan.latency_ms
        above_parent = first > parent["measured_ms"] * (1 + cfg.slower_tolerance)
        if not above_parent and abs(first - expected) <= RECHECK_SHARE * expected:
            return point, None
        parent_model, _, _ = load_checkpoint(parent["checkpoint"])
        own, ref = ctx.platform.measure_networks([model, parent_model], ctx.input_shape)
        ratio = own.median_ms / ref.median_ms
        estimates = [first, ratio * parent["measured_ms"]]
        if plan.verified_ms is not None:
            estimates.append(plan.verified_ms)
        point["measured_ms"] = statistics.median(estimates)
        point["measured_estimates_ms"] = estimates
        return point, (ratio if ratio > 1 + cfg.slower_tolerance else None)

    def _keep(self, step: IterationPlan, best: ProposalResult, proposals: list[ProposalResult],
              point: dict[str, float], rejected: list[dict[str, Any]], timing: dict[str, float],
              started: float) -> dict[str, Any]:
        state, run_dir = self.state, self.run_dir
        iteration = step.iteration + 1
        final_ckpt = run_dir / f"iter_{iteration:03d}.pt"
        atomic_write_bytes(final_ckpt, Path(best.checkpoint).read_bytes())  # a copy: until the state is
        # saved, the proposal stays where a resumed run finds it
        record = {
            "iteration": iteration,
            "group": best.plan.group,
            "channels_before": best.plan.channels_before,
            "channels_after": best.plan.channels_after,
            "filters_removed": best.plan.n_remove,
            "resource": step.resource,
            "target": step.target,
            "estimated_ms": best.plan.estimated_ms,
            "verified_ms": best.plan.verified_ms,
            "slope": state.latency_model(self.cfg).slope,
            "holdout_accuracy": best.holdout_accuracy,
            "checkpoint": str(final_ckpt),
            "checkpoint_sha256": file_sha256(final_ckpt),
            "proposals": [dict(p.to_dict(), picked=p is best) for p in proposals],
            "rejected": rejected,
            "screened_out": self.screened_out,
            "note": step.note,
            "timing": timing,
            **point,
        }
        timing["commit_s"] = round(time.perf_counter() - started, 3)
        record["seconds"] = round(sum(timing.values()), 3)
        state.iterations.append(record)
        state.pending = None
        self.ctx.estimator.save()
        state.save(run_dir)
        faults.point("iteration-saved")
        shutil.rmtree(run_dir / "proposals", ignore_errors=True)
        return record

    # ------------------------------------------------------------------ why a run ends unmet
    def _at_minimum_reason(self, driving: Budget, now: dict[str, float]) -> str:
        return (f"every layer is at its minimum width (lut.min_channel_ratio={self.ctx.params.lut.min_channel_ratio}) "
                f"and the network is at {format_value(driving.resource, now[driving.resource])}, over "
                f"{driving.describe()}: the budget is below the smallest network the grid allows. Fix: raise the "
                "budget, or lower lut.min_channel_ratio and rebuild the LUT (netadapt lut).")

    def _guarded_reason(self, driving: Budget, guards: list[Budget]) -> str:
        return ("every group that can still be pruned would break a budget already met ("
                + ", ".join(b.describe() for b in guards) + f") while {driving.describe()} is unmet. Fix: "
                "relax one of these budgets.")

    def _all_slower_reason(self, step: IterationPlan) -> str:
        return (f"iteration {step.iteration + 1}: every proposal measured slower than its parent although the "
                "LUT predicted each to be faster: the LUT and measurement disagree on this machine. Fix: rebuild "
                "the LUT here (netadapt lut), check the machine is idle, or raise adapt.slower_tolerance.")


def describe_iteration(record: dict[str, Any]) -> str:
    resource = record.get("resource", "latency")
    return (
        f"iter {record['iteration']:2d}: {record['group']} {record['channels_before']}->"
        f"{record['channels_after']}  target {resource} {format_value(resource, record['target'])}  "
        f"lut {record['lut_ms']:.3f}  measured {record['measured_ms']:.3f} ms  "
        f"{format_value('macs', record['macs'])}  {format_value('params', record['params'])}  "
        f"holdout {record['holdout_accuracy']:.4f}  ({len(record['proposals'])} proposals, {record['seconds']:.0f}s)"
    )
