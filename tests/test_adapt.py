import copy
import json
from pathlib import Path

import pytest

from flows.adapt import adapt_flow
from netadapt_core.adapt import (
    BudgetUnreachableError,
    ProposalPlan,
    ProposalResult,
    make_context,
    pick_best,
    plan_proposals,
)
from netadapt_core.checkpoint import file_sha256, load_checkpoint
from netadapt_core.config import ConfigError
from netadapt_core.resources import Budget, count_macs_params
from netadapt_core.schedule import budgets
from netadapt_core.surgery import prune_group


def _result(group, acc, ms):
    plan = ProposalPlan(iteration=0, group=group, channels_before=16, channels_after=8, estimated_ms=ms, seed=0)
    return ProposalResult(plan=plan, checkpoint=f"{group}.pt", holdout_accuracy=acc, train_seconds=0.0)


def test_pick_best_rules():
    results = [_result("a", 0.80, 9.0), _result("b", 0.85, 9.5), _result("c", 0.85, 9.2)]
    assert pick_best(results, "accuracy", 0.9, 10.0).plan.group == "c"  # tie on accuracy: lower latency
    # loss per ms removed: a 0.10/1.0, b 0.05/0.5, c 0.05/0.8 -> c
    assert pick_best(results, "accuracy_per_latency", 0.9, 10.0).plan.group == "c"
    with pytest.raises(ValueError):
        pick_best([], "accuracy", 0.9, 10.0)


def test_plans_remove_the_fewest_filters_that_meet_the_target(run_params):
    params = run_params()
    ctx = make_context(params, log=lambda _: None)
    model, _, _ = load_checkpoint(params.pretrain.checkpoint)
    current = ctx.estimator.estimate_ms(model)
    target = current - 0.03
    estimates = {}
    plans = plan_proposals(ctx, model, 0, {"latency": current, **count_macs_params(model, ctx.input_shape)}, target,
                           estimates=estimates)
    assert plans, "some group of the tiny CNN must be able to remove 0.03 ms"
    # the bisection reads widths from each group's template: a probe and the plan's network are built
    assert all(e.template for e in estimates.values())
    assert all(len(e.variants) <= 2 for e in estimates.values())
    base = ctx.estimator.layer_sum_ms(model)

    def estimate(group, channels):
        variant = copy.deepcopy(model)
        prune_group(variant, group, plan.channels_before - channels, ctx.input_shape)
        return current - (base - ctx.estimator.layer_sum_ms(variant))

    for plan in plans:
        assert plan.estimated_ms <= target
        assert plan.estimated_ms == pytest.approx(estimate(plan.group, plan.channels_after))
        g = ctx.estimator.lut.grid[plan.group]
        assert plan.channels_after in g.widths() and plan.n_remove % g.step == 0
        one_less = plan.channels_after + g.step
        if one_less < plan.channels_before:
            assert estimate(plan.group, one_less) > target


def _state(params):
    from netadapt_core.adapt import RunState

    return RunState.load(Path(params.adapt.run_dir) / "state.json")


def test_adapt_stops_at_budget_and_resumes(run_params, run_flow):
    params = run_params("adapt.max_iterations=1")
    lut_sha = file_sha256(params.lut.path)
    run_flow(adapt_flow, params)
    assert file_sha256(params.lut.path) == lut_sha  # on-demand entries go to lut.on_demand_path
    state = _state(params)
    assert state.status in ("max_iterations", "done") and len(state.iterations) == 1
    first = state.iterations[0]
    assert Path(first.checkpoint).is_file() and file_sha256(first.checkpoint) == first.checkpoint_sha256
    assert len(first.proposals) >= 1 and sum(p["picked"] for p in first.proposals) == 1

    # resume with more iterations allowed: iteration 1 is kept as it was, the run goes on to the budget
    summary = run_flow(adapt_flow, run_params())
    resumed = _state(params)
    assert summary["status"] == "done" and summary["iterations"] == len(resumed.iterations)
    assert resumed.iterations[0] == first
    assert resumed.status == "done"
    (primary,) = resumed.budgets(params.adapt)
    budget = primary.limit
    assert resumed.iterations[-1].measured_ms <= budget
    assert all(record.measured_ms > budget for record in [resumed.baseline, *resumed.iterations[:-1]])
    # every iteration's pick is a trade-off point with its own checkpoint and record
    for record in resumed.iterations:
        model, _, meta = load_checkpoint(record.checkpoint)
        assert meta["plan"]["group"] == record.group
    state_file = json.loads((Path(params.adapt.run_dir) / "state.json").read_text())
    assert len(state_file["iterations"]) == len(resumed.iterations)


def test_changed_settings_refused_unless_fresh(run_params, run_flow):
    run_flow(adapt_flow, run_params("adapt.max_iterations=1"))
    with pytest.raises(ConfigError, match="adapt.fresh=true"):
        run_flow(adapt_flow, run_params("adapt.max_iterations=1", "adapt.short_term_steps=6"))
    params = run_params("adapt.max_iterations=1", "adapt.short_term_steps=6", "adapt.fresh=true")
    run_flow(adapt_flow, params)
    kept = list(Path(params.adapt.run_dir).parent.glob("run.old-*"))
    assert len(kept) == 1 and (kept[0] / "state.json").is_file()


def test_unreachable_budget_fails_before_training(run_params, run_flow):
    params = run_params("adapt.budget_ratio=0.05")
    with pytest.raises(BudgetUnreachableError, match="unreachable.*min_channel_ratio"):
        run_flow(adapt_flow, params)
    assert not Path(params.adapt.run_dir).exists()


def _prune(model, group, channels_before, channels, shape):
    variant = copy.deepcopy(model)
    prune_group(variant, group, channels_before - channels, shape)
    return variant


def test_plans_on_macs_remove_the_fewest_filters_that_meet_the_target(run_params):
    params = run_params("adapt.resource=macs")
    ctx = make_context(params, log=lambda _: None)
    model, _, _ = load_checkpoint(params.pretrain.checkpoint)
    counts = count_macs_params(model, ctx.input_shape)
    target = counts["macs"] * 0.9
    plans = plan_proposals(ctx, model, 0, {"latency": 1.0, **counts}, target, "macs")
    assert plans
    for plan in plans:
        assert plan.resource == "macs" and plan.estimated_macs <= target
        pruned = count_macs_params(_prune(model, plan.group, plan.channels_before, plan.channels_after,
                                          ctx.input_shape), ctx.input_shape)
        assert (plan.estimated_macs, plan.estimated_params) == (pruned["macs"], pruned["params"])
        g = ctx.estimator.lut.grid[plan.group]
        one_less = plan.channels_after + g.step
        if one_less < plan.channels_before:
            bigger = _prune(model, plan.group, plan.channels_before, one_less, ctx.input_shape)
            assert count_macs_params(bigger, ctx.input_shape)["macs"] > target


def test_a_proposal_that_breaks_a_met_budget_is_rejected(run_params):
    params = run_params()
    logged = []
    ctx = make_context(params, log=logged.append)
    model, _, _ = load_checkpoint(params.pretrain.checkpoint)
    current = {"latency": ctx.estimator.estimate_ms(model), **count_macs_params(model, ctx.input_shape)}
    target = current["latency"] - 0.03
    assert plan_proposals(ctx, model, 0, current, target)
    guard = Budget("params", current["params"] - 1, primary=False)  # any pruning meets this one...
    assert len(plan_proposals(ctx, model, 0, current, target, guards=[guard])) >= 1
    guard = Budget("macs", 1, primary=False)  # ...and none meets this one
    assert plan_proposals(ctx, model, 0, current, target, guards=[guard]) == []
    assert any("rejected: it would break macs <=" in line for line in logged)


def test_adapt_on_macs_reaches_the_macs_budget(run_params, run_flow):
    params = run_params("adapt.resource=macs", "adapt.budget_ratio=0.6", "adapt.initial_reduction_ratio=0.15",
                        "adapt.latency_source=lut")
    summary = run_flow(adapt_flow, params)
    state = _state(params)
    limit = 0.6 * state.baseline.macs
    assert summary["status"] == "done" and summary["budgets"] == [
        {"resource": "macs", "limit": limit, "primary": True, "met": True}]
    assert state.iterations[-1].macs <= limit
    assert all(r.macs > limit for r in [state.baseline, *state.iterations[:-1]])  # stopped at the budget
    for record, before in zip(state.iterations, [state.baseline, *state.iterations[:-1]]):
        assert record.resource == "macs" and record.target < before.macs
        assert record.macs <= record.target  # the count is exact: the pick meets its target


def test_secondary_budget_drives_the_run_once_the_primary_holds(run_params, run_flow):
    params = run_params("adapt.latency_source=lut", "adapt.constraints={params: {ratio: 0.15}}")
    summary = run_flow(adapt_flow, params)
    state = _state(params)
    latency, limit = budgets({"latency": state.baseline.lut_ms, "macs": state.baseline.macs,
                              "params": state.baseline.params}, params.adapt)
    assert summary["status"] == "done" and all(b["met"] for b in summary["budgets"])
    final = state.iterations[-1]
    assert final.lut_ms <= latency.limit and final.params <= limit.limit
    # every earlier network missed a budget; the loop targeted latency until it held, then params
    for record, before in zip(state.iterations, [state.baseline, *state.iterations[:-1]]):
        missed_latency = before.lut_ms > latency.limit
        assert missed_latency or before.params > limit.limit
        assert record.resource == ("latency" if missed_latency else "params")
    assert [r.resource for r in state.iterations][-1] == "params", "the params budget must have driven"


def test_unreachable_secondary_budget_fails_before_training(run_params, run_flow):
    params = run_params("adapt.constraints={params: {max: 10}}")
    with pytest.raises(BudgetUnreachableError, match=r"params <= 10 parameters \(start [0-9]+ parameters, smallest network [0-9]+ parameters\)"):
        run_flow(adapt_flow, params)
    assert not Path(params.adapt.run_dir).exists()


def test_a_damaged_run_is_refused_and_fresh_moves_it_aside(run_params, tmp_path):
    from netadapt_core.adapt import open_run
    from netadapt_core.checkpoint import RunStateError

    params = run_params("adapt.latency_source=lut")
    run_dir = Path(params.adapt.run_dir)
    run_dir.mkdir(parents=True)
    (run_dir / "state.json").write_text("{ not json")
    ctx = make_context(params, log=lambda _: None)
    with pytest.raises(RunStateError, match="state.json is damaged.*Fix: restore it"):
        open_run(ctx)
    fresh = make_context(run_params("adapt.latency_source=lut", "adapt.fresh=true"), log=lambda _: None)
    new_dir, state = open_run(fresh)
    assert new_dir == run_dir and state.iterations == [] and (run_dir / "state.json").is_file()
    kept = [p for p in run_dir.parent.iterdir() if p.name.startswith("run.old-")]
    assert len(kept) == 1 and (kept[0] / "state.json").read_text() == "{ not json"  # nothing deleted


def test_a_width_template_that_misreads_the_network_falls_back_to_built_networks(run_params, monkeypatch):
    """If a template's signatures ever disagree with the network built for the plan, that group
    switches to building every width: the plans equal those of a planner without templates."""
    from netadapt_core.lut import WidthTemplate

    params = run_params()
    ctx = make_context(params, log=lambda _: None)
    model, _, _ = load_checkpoint(params.pretrain.checkpoint)
    current = {"latency": ctx.estimator.estimate_ms(model), **count_macs_params(model, ctx.input_shape)}
    target = current["latency"] - 0.03

    monkeypatch.setattr(WidthTemplate, "make", classmethod(lambda cls, *args: None))
    reference = plan_proposals(ctx, model, 0, current, target)
    monkeypatch.undo()

    real_signatures = WidthTemplate.signatures
    monkeypatch.setattr(WidthTemplate, "signatures",
                        lambda self, width: real_signatures(self, width + 8))  # reads the wrong width
    lines = []
    ctx.log = lines.append
    estimates = {}
    misread = plan_proposals(ctx, model, 0, current, target, estimates=estimates)
    assert any("width template off" in line for line in lines)
    assert all(estimates[p.group].template is None for p in misread)  # the narrowest width, the
    # feasibility test, is always a built network (the template's probe)
    assert [(p.group, p.channels_after, p.estimated_ms) for p in misread] == \
        [(p.group, p.channels_after, pytest.approx(p.estimated_ms)) for p in reference]


def test_a_finished_proposal_is_read_from_its_record_and_a_damaged_one_is_trained_again_with_a_warning(
        tmp_path, caplog):
    import json
    import logging

    from netadapt_core.adapt import finished_proposal
    from netadapt_core.checkpoint import file_sha256

    result = _result("stem.0", 0.8, 1.5)
    out = tmp_path / "stem.0.pt"
    out.write_bytes(b"weights")
    record = {**result.to_dict(), "checkpoint": str(out), "plan": result.plan.model_dump(), "key": "k1",
              "checkpoint_sha256": file_sha256(out)}
    (tmp_path / "stem.0.json").write_text(json.dumps(record))
    with caplog.at_level(logging.WARNING, logger="netadapt"):
        found = finished_proposal(out, "k1")
        assert found is not None and found.plan == result.plan and found.holdout_accuracy == 0.8
        assert finished_proposal(out, "other-key") is None and not caplog.records  # not this proposal
        out.write_bytes(b"weights, changed")
        assert finished_proposal(out, "k1") is None
        (tmp_path / "stem.0.json").write_text(json.dumps(record)[:40])
        assert finished_proposal(out, "k1") is None
    assert [r.getMessage().split(" is damaged")[0] for r in caplog.records] == \
        [f"proposal record {tmp_path / 'stem.0.json'}"] * 2
    assert "differs from the one recorded" in caplog.records[0].getMessage()
