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
from ..resources import format_value
from .context import Context, measure_point
from .iteration import plan_iteration
from .plan import ProposalPlan
from .proposal import (
    JOURNAL_FILE,
    ProposalResult,
    halving_schedule,
    proposal_key,
    proposal_path,
    rank_proposals,
    run_proposal,
)
from .records import IterationPlan, IterationRecord, NetworkPoint
from .state import RunState

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
OnIteration = Callable[[IterationRecord, RunState], None]


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
            ranked = rank_proposals(results, cfg.pick, parent.holdout_accuracy,
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
            jobs.append(ProposalJob(plan, parent.checkpoint, str(out),
                                    proposal_key(self.ctx.params, parent.checkpoint_sha256, plan),
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
        """Iteration i's plan (``iteration.plan_iteration``), kept in the state as pending until the
        iteration is committed; a resumed run takes the pending plan made for the same parent."""
        state = self.state
        pending, parent_sha = state.pending, state.current.checkpoint_sha256
        if pending and pending.iteration == len(state.iterations) and pending.parent_sha256 == parent_sha:
            return pending
        step = plan_iteration(self.ctx, state).model_copy(update={"parent_sha256": parent_sha})
        state.pending = step if step.plans else None
        state.save(self.run_dir)
        faults.point("plan-saved")
        return step

    # ------------------------------------------------------------------ commit
    def commit(self, step: IterationPlan, results: list[ProposalResult],
               timing: dict[str, float]) -> IterationRecord | None:
        """Keep the best proposal measured no slower than its parent as net_{i+1}; None if none is."""
        state, cfg, ctx = self.state, self.cfg, self.ctx
        started = time.perf_counter()
        parent = state.current
        parent_ms = state.latency(parent, cfg)
        rejected: list[dict[str, Any]] = []
        for candidate in rank_proposals(results, cfg.pick, parent.holdout_accuracy, parent_ms):
            model, _, _ = load_checkpoint(candidate.checkpoint)
            point, slower = self._measure_pick(model, candidate.plan, parent)
            faults.point("pick-measured")
            state.latency_points.append(LatencyPoint(
                lut_ms=point["lut_ms"], measured_ms=point["measured_ms"], parent_lut_ms=parent.lut_ms,
                parent_measured_ms=parent.measured_ms, predicted_ms=candidate.plan.estimated_ms))
            if slower is not None:
                rejected.append({"group": candidate.plan.group, "vs_parent": slower})
                ctx.log(f"iteration {step.iteration + 1}: pick {candidate.plan.group}->"
                        f"{candidate.plan.channels_after} measured {slower:.3f}x its parent; rejected")
                continue
            return self._keep(step, candidate, results, point, rejected, timing, started)
        return None

    def _measure_pick(self, model: nn.Module, plan: ProposalPlan,
                      parent: NetworkPoint) -> tuple[dict[str, Any], float | None]:
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
        above_parent = first > parent.measured_ms * (1 + cfg.slower_tolerance)
        if not above_parent and abs(first - expected) <= RECHECK_SHARE * expected:
            return point, None
        parent_model, _, _ = load_checkpoint(parent.checkpoint)
        own, ref = ctx.platform.measure_networks([model, parent_model], ctx.input_shape)
        ratio = own.median_ms / ref.median_ms
        estimates = [first, ratio * parent.measured_ms]
        if plan.verified_ms is not None:
            estimates.append(plan.verified_ms)
        point["measured_ms"] = statistics.median(estimates)
        point["measured_estimates_ms"] = estimates
        return point, (ratio if ratio > 1 + cfg.slower_tolerance else None)

    def _keep(self, step: IterationPlan, best: ProposalResult, proposals: list[ProposalResult],
              point: dict[str, float], rejected: list[dict[str, Any]], timing: dict[str, float],
              started: float) -> IterationRecord:
        state, run_dir = self.state, self.run_dir
        iteration = step.iteration + 1
        final_ckpt = run_dir / f"iter_{iteration:03d}.pt"
        atomic_write_bytes(final_ckpt, Path(best.checkpoint).read_bytes())  # a copy: until the state is
        # saved, the proposal stays where a resumed run finds it
        checkpoint_sha256 = file_sha256(final_ckpt)
        timing = {**timing, "commit_s": round(time.perf_counter() - started, 3)}
        record = IterationRecord(
            iteration=iteration,
            group=best.plan.group,
            channels_before=best.plan.channels_before,
            channels_after=best.plan.channels_after,
            filters_removed=best.plan.n_remove,
            resource=step.resource,
            target=step.target,
            estimated_ms=best.plan.estimated_ms,
            verified_ms=best.plan.verified_ms,
            slope=state.latency_model(self.cfg).slope,
            holdout_accuracy=best.holdout_accuracy,
            checkpoint=str(final_ckpt),
            checkpoint_sha256=checkpoint_sha256,
            proposals=[dict(p.to_dict(), picked=p is best) for p in proposals],
            rejected=rejected,
            screened_out=self.screened_out,
            note=step.note,
            timing=timing,
            seconds=round(sum(timing.values()), 3),
            **point,
        )
        state.iterations.append(record)
        state.pending = None
        self.ctx.estimator.save()
        state.save(run_dir)
        faults.point("iteration-saved")
        shutil.rmtree(run_dir / "proposals", ignore_errors=True)
        return record

    def _all_slower_reason(self, step: IterationPlan) -> str:
        return (f"iteration {step.iteration + 1}: every proposal measured slower than its parent although the "
                "LUT predicted each to be faster: the LUT and measurement disagree on this machine. Fix: rebuild "
                "the LUT here (netadapt lut), check the machine is idle, or raise adapt.slower_tolerance.")


def describe_iteration(record: IterationRecord) -> str:
    r = record
    return (
        f"iter {r.iteration:2d}: {r.group} {r.channels_before}->{r.channels_after}  target {r.resource} "
        f"{format_value(r.resource, r.target)}  lut {r.lut_ms:.3f}  measured {r.measured_ms:.3f} ms  "
        f"{format_value('macs', r.macs)}  {format_value('params', r.params)}  "
        f"holdout {r.holdout_accuracy:.4f}  ({len(r.proposals)} proposals, {r.seconds:.0f}s)"
    )
