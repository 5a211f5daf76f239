import pytest

from netadapt_core.config import ConfigError, load_params
from netadapt_core.schedule import budgets, reduction, unmet

START = {"latency": 20.0, "macs": 4.0e7, "params": 2.0e6}


def test_ratio_schedule_decays():
    cfg = load_params(None, ["adapt.initial_reduction_ratio=0.1", "adapt.reduction_decay=0.5"]).adapt
    assert reduction(0, "latency", START, cfg) == pytest.approx(2.0)
    assert reduction(1, "latency", START, cfg) == pytest.approx(1.0)
    assert reduction(3, "latency", START, cfg) == pytest.approx(0.25)
    assert reduction(0, "params", START, cfg) == pytest.approx(2.0e5)  # the same share of its own start


def test_absolute_schedule_and_budget():
    cfg = load_params(None, ["adapt.initial_reduction=3", "adapt.budget=7", "adapt.reduction_decay=1"]).adapt
    assert reduction(5, "latency", START, cfg) == 3
    # a secondary resource takes the same share of its start: 3 ms of 20 ms is 15%
    assert reduction(0, "macs", START, cfg) == pytest.approx(0.15 * 4.0e7)
    (primary,) = budgets(START, cfg)
    assert primary.limit == 7 and primary.primary and primary.resource == "latency"
    assert primary.met(7.0) and not primary.met(7.01)


def test_ratio_budget_on_macs_with_constraints():
    cfg = load_params(None, [
        "adapt.resource=macs", "adapt.budget_ratio=0.5",
        "adapt.constraints={latency: {ratio: 0.6}, params: {max: 5.0e5}}",
    ]).adapt
    found = budgets(START, cfg)
    assert [(b.resource, b.limit, b.primary) for b in found] == [
        ("macs", 2.0e7, True), ("latency", 12.0, False), ("params", 5.0e5, False)]
    now = {"latency": 11.0, "macs": 2.5e7, "params": 6.0e5}
    assert [b.resource for b in unmet(now, found)] == ["macs", "params"]
    assert unmet({"latency": 12.0, "macs": 2.0e7, "params": 5.0e5}, found) == []


@pytest.mark.parametrize(("overrides", "message"), [
    (["adapt.budget_ms=7"], r"adapt.budget_ms was renamed: use adapt.budget"),
    (["adapt.initial_reduction_ms=1"], r"renamed: use adapt.initial_reduction"),
    (["adapt.constraints={latency: {ratio: 0.5}}"], r"constraints.latency repeats the primary resource"),
    (["adapt.constraints={params: {ratio: 0.5, max: 10}}"], "exactly one of ratio"),
    (["adapt.constraints={params: {}}"], "exactly one of ratio"),
    (["adapt.constraints={energy: {ratio: 0.5}}"], r"constraints.energy"),
    (["adapt.resource=flops"], r"adapt.resource.*'latency', 'macs' or 'params'"),
])
def test_budget_settings_are_validated(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_params(None, overrides)
