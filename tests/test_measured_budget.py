"""Meeting the budget by measurement when measurement and the LUT disagree (issue: a LUT tuned on one
machine drifted +15% to +28% from the measured latency of the picks on another).

The tests run on ``simulated_platform.SimulatedDrift``: deterministic layer costs (the LUT) and
whole networks that run slower than the LUT predicts by a factor that grows as they are pruned.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import simulated_platform

from netadapt_core.adapt import (
    NetAdapt,
    ProposalPlan,
    RunState,
    group_options,
    make_context,
    open_run,
    plan_proposals,
    proposal_key,
    rank_proposals,
)
from netadapt_core.checkpoint import load_checkpoint
from netadapt_core.latency_model import LatencyModel, LatencyPoint
from netadapt_core.stages import run_lut
from netadapt_core.surgery import prunable_groups, prune_group


@pytest.fixture
def sim_params(run_params, tmp_path):
    """Settings on the simulated platform, with its LUT built; the drift reset after the test."""
    def make(*extra: str, drift: float = 0.5):
        params = run_params("platform.name=simulated-drift", f"lut.path={tmp_path}/sim_lut.json",
                            f"lut.on_demand_path={tmp_path}/sim_on_demand.json", *extra)
        start, _, _ = load_checkpoint(params.pretrain.checkpoint)
        platform = simulated_platform.SimulatedDrift(params.platform)
        simulated_platform.SETTINGS.update(drift=0.0, penalty=None,
                                           start_sum_ms=platform.layer_sum_ms(start, (1, 28, 28)))
        assert platform.cfg.batch_size == params.platform.batch_size
        if not Path(params.lut.path).is_file():  # built where the LUT holds (no drift), as on the first machine
            run_lut(params, log=lambda _: None)
        simulated_platform.SETTINGS["drift"] = drift  # ... then run where it does not
        return params

    with simulated_platform.registered():
        yield make


def sim_context(params, log=print):
    ctx = make_context(params, log=log)
    return ctx, ctx.estimator.platform


def json_state(run_dir: Path) -> RunState:
    return RunState.load(run_dir / "state.json")


def smallest(ctx, model):
    """The smallest network the grid allows."""
    small = copy.deepcopy(model)
    for group in prunable_groups(small, ctx.input_shape):
        options = group_options(ctx, group)
        if options:
            prune_group(small, group.id, group.channels - options[-1], ctx.input_shape)
    return small


def test_latency_model_prior_then_fit():
    model = LatencyModel(10.0)
    assert model.slope == 1.0 and model.predict(10.0, 10.0, 9.0) == 9.0
    # every measured network saved 0.8 ms per ms the LUT predicted: the fit moves towards 0.8
    parent_lut, parent_ms = 10.0, 10.0
    for lut in (9.0, 8.0, 7.0, 6.0, 5.0):
        measured = parent_ms - 0.8 * (parent_lut - lut)
        model.points.append(LatencyPoint(lut_ms=lut, measured_ms=measured, parent_lut_ms=parent_lut,
                               parent_measured_ms=parent_ms, predicted_ms=parent_ms - (parent_lut - lut)))
        parent_lut, parent_ms = lut, measured
    assert 0.8 < model.slope < 0.82
    assert model.predict(8.0, 6.0, 5.0) == pytest.approx(8.0 - model.slope)  # anchored on the parent
    assert model.relative_error() > 0.02  # the LUT's predictions missed
    assert LatencyModel(10.0, model.points, anchored=False).slope == 1.0


def test_budget_met_by_measurement_under_growing_drift(sim_params):
    """The LUT under-predicts more and more along the run; the run still ends at the budget as
    measured, each target set on its parent's measurement, never keeping a slower pick."""
    params = sim_params("adapt.budget_ratio=0.5", "adapt.initial_reduction_ratio=0.1", "adapt.max_iterations=25",
                        "adapt.short_term_steps=2", drift=0.6)
    ctx, platform = sim_context(params)
    run_dir, state = open_run(ctx)
    NetAdapt(ctx, run_dir, state).run()
    budget = state.budgets(params.adapt)[0].limit
    assert state.status == "done", state.reason
    final = state.iterations[-1]
    assert final.measured_ms <= budget
    assert platform.true_ms(load_checkpoint(final.checkpoint)[0], ctx.input_shape) <= budget * 1.0001
    # the LUT (calibrated at build time on uniform networks) ended well off the measurement
    assert abs(final.measured_ms - final.lut_ms) / final.measured_ms > 0.15
    for parent, record in zip([state.baseline, *state.iterations], state.iterations):
        assert record.target < parent.measured_ms  # anchored on the parent's measurement
        assert record.measured_ms < parent.measured_ms  # never pruned-but-slower
    # online recalibration: the slope fitted from the measured networks left the prior (1)
    assert abs(state.iterations[-1].slope - 1) > 0.05


def test_without_anchoring_the_same_drift_misses_the_budget(sim_params):
    """The control: targets and the stop on the LUT alone end 'done' by the LUT, over budget by
    measurement. This is the failure the measured anchoring removes."""
    params = sim_params("adapt.budget_ratio=0.5", "adapt.initial_reduction_ratio=0.1", "adapt.max_iterations=25",
                        "adapt.short_term_steps=2", "adapt.latency_source=lut", drift=0.6)
    ctx, _ = sim_context(params)
    run_dir, state = open_run(ctx)
    NetAdapt(ctx, run_dir, state).run()
    final = state.iterations[-1]
    # 'done' by the LUT while the measured latency of the pick is far off its LUT estimate: where the
    # stop lands on the budget by the LUT, it lands over it by measurement (with this tiny network's
    # coarse steps the stop can also overshoot far enough to hide that, depending on the picks)
    assert state.status == "done" and final.measured_ms > 1.15 * final.lut_ms
    assert final.lut_ms <= 0.5 * state.baseline.lut_ms * 1.0001


def test_step_shrinks_until_most_groups_can_propose(sim_params):
    params = sim_params("adapt.initial_reduction_ratio=0.45", "adapt.budget_ratio=0.5",
                        "adapt.min_proposal_share=0.6", "adapt.latency_source=lut")
    logged = []
    ctx, _ = sim_context(params, log=logged.append)
    run_dir, state = open_run(ctx)
    step = NetAdapt(ctx, run_dir, state).plan()
    groups = prunable_groups(load_checkpoint(state.baseline.checkpoint)[0], ctx.input_shape)
    assert any("halving the step" in line for line in logged), logged
    assert len(step.plans) >= 0.6 * len(groups)
    assert step.target > state.baseline.lut_ms * 0.55  # the 45% step was shrunk
    # the plan is kept in the state: a resumed run trains exactly these proposals
    again = NetAdapt(ctx, run_dir, json_state(run_dir)).plan()
    assert again.plans == step.plans and again.target == step.target


def test_candidates_near_the_target_are_measured_and_cut_further(sim_params):
    params = sim_params("adapt.verify=all", "adapt.verify_max_extra_steps=10", "adapt.initial_reduction_ratio=0.2",
                        drift=0.9)
    ctx, platform = sim_context(params)
    run_dir, state = open_run(ctx)
    step = NetAdapt(ctx, run_dir, state).plan()
    assert step.plans and all(p.verified_ms is not None for p in step.plans)
    parent, _, _ = load_checkpoint(state.baseline.checkpoint)
    now = state.values(state.baseline, params.adapt)
    by_lut = {p.group: p for p in plan_proposals(ctx, parent, 0, now, step.target,
                                                  latency_model=LatencyModel(state.baseline.lut_ms))}
    cut_further = 0
    for plan in step.plans:
        variant = copy.deepcopy(parent)
        prune_group(variant, plan.group, plan.n_remove, ctx.input_shape)
        assert plan.verified_ms == pytest.approx(platform.true_ms(variant, ctx.input_shape))
        options = group_options(ctx, next(g for g in prunable_groups(parent, ctx.input_shape) if g.id == plan.group))
        # measured over the target, a candidate loses filters until it meets it or reaches its minimum
        assert plan.verified_ms <= step.target or plan.channels_after == options[-1]
        cut_further += plan.channels_after < by_lut[plan.group].channels_after
    assert cut_further >= 1, "the drift makes the LUT's choice miss the target"
    assert sum(p.kind == "candidate" for p in state.latency_points) >= len(step.plans)


def test_a_pick_measured_slower_than_its_parent_is_rejected_for_the_next_best(sim_params):
    params = sim_params("adapt.short_term_steps=3", drift=0.0)
    ctx, _ = sim_context(params)
    run_dir, state = open_run(ctx)
    loop = NetAdapt(ctx, run_dir, state)
    step = loop.plan()
    assert len(step.plans) >= 2
    results = loop.run_serially(loop.jobs(step))
    best = rank_proposals(results, "accuracy", state.baseline.holdout_accuracy, state.baseline.measured_ms)[0]

    def penalty(model):  # the most accurate proposal runs 3x slower on this "machine"
        slow = any(g.id == best.plan.group and g.channels == best.plan.channels_after
                   for g in prunable_groups(model, ctx.input_shape))
        return 3.0 if slow else 1.0

    simulated_platform.SETTINGS["penalty"] = penalty
    record = loop.commit(step, results, {})
    assert record is not None and record.group != best.plan.group
    assert record.rejected[0]["group"] == best.plan.group and record.rejected[0]["vs_parent"] > 1.01
    assert record.measured_ms < state.baseline.measured_ms


def test_a_pick_measured_off_in_a_busy_moment_is_measured_again(sim_params):
    """The pick's first measurement lands 8% high (a busy moment); it disagrees with its measurement
    before training, so it is taken again against the parent and the median of the three is kept."""
    params = sim_params("adapt.short_term_steps=2", drift=0.0)
    ctx, platform = sim_context(params)
    run_dir, state = open_run(ctx)
    loop = NetAdapt(ctx, run_dir, state)
    step = loop.plan()
    results = loop.run_serially(loop.jobs(step))
    calls = platform.network_calls
    simulated_platform.SETTINGS["glitches"] = [1.08]
    record = loop.commit(step, results, {})
    assert record is not None and not record.rejected
    truth = platform.true_ms(load_checkpoint(record.checkpoint)[0], ctx.input_shape)
    assert record.measured_estimates_ms[0] == pytest.approx(truth * 1.08)
    assert record.measured_ms == pytest.approx(truth)
    assert platform.network_calls == calls + 2  # the first look, then one against the parent
    # a first look that agrees with what was expected costs no second measurement
    model, _, _ = load_checkpoint(record.checkpoint)
    checked = ProposalPlan(iteration=0, group=record.group, channels_before=record.channels_before,
                           channels_after=record.channels_after, estimated_ms=truth, seed=0, verified_ms=truth)
    calls = platform.network_calls
    point, slower = loop._measure_pick(model, checked, state.baseline)
    assert slower is None and "measured_estimates_ms" not in point and point["measured_ms"] == pytest.approx(truth)
    assert platform.network_calls == calls + 1


def test_unreachable_by_measurement_ends_unmet_with_the_cause(sim_params):
    """By the LUT the budget is just reachable (the up-front check passes); by measurement pruning
    saves less, so the run prunes every layer to its minimum, then ends 'unmet', naming the cause
    and keeping its picks."""
    probe = sim_params(drift=0.9)
    ctx, _ = sim_context(probe, log=lambda _: None)
    start, _, _ = load_checkpoint(probe.pretrain.checkpoint)
    share = ctx.estimator.estimate_ms(smallest(ctx, start)) / ctx.estimator.estimate_ms(start)
    params = sim_params(f"adapt.budget_ratio={share * 1.05:.4f}", "adapt.initial_reduction_ratio=0.2",
                        "adapt.max_iterations=40", "adapt.short_term_steps=2", "adapt.verify=none", drift=0.9)
    ctx, _ = sim_context(params)
    run_dir, state = open_run(ctx)
    NetAdapt(ctx, run_dir, state).run()
    assert state.status == "unmet", state.status
    assert "minimum width" in state.reason and "lut.min_channel_ratio" in state.reason
    assert state.iterations, "the run made progress before it ended"
    saved = json_state(run_dir)
    assert saved.status == "unmet" and saved.reason == state.reason
    assert all(Path(r.checkpoint).is_file() for r in saved.iterations)


def test_proposal_key_ignores_the_latency_estimate(run_params):
    params = run_params()
    plan = ProposalPlan(iteration=0, group="stem.0", channels_before=8, channels_after=4, estimated_ms=1.0, seed=7)
    moved = plan.model_copy(update={"estimated_ms": 1.2, "verified_ms": 1.1})
    assert proposal_key(params, "abc", plan) == proposal_key(params, "abc", moved)
    assert proposal_key(params, "abc", plan) != proposal_key(params, "abc", plan.model_copy(update={"channels_after": 0}))

