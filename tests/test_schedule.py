import pytest

from netadapt_core.config import load_params
from netadapt_core.schedule import budget_met, budget_ms, reduction_ms


def test_ratio_schedule_decays():
    cfg = load_params(None, ["adapt.initial_reduction_ratio=0.1", "adapt.reduction_decay=0.5"]).adapt
    assert reduction_ms(0, 20.0, cfg) == pytest.approx(2.0)
    assert reduction_ms(1, 20.0, cfg) == pytest.approx(1.0)
    assert reduction_ms(3, 20.0, cfg) == pytest.approx(0.25)


def test_absolute_schedule_and_budget():
    cfg = load_params(None, ["adapt.initial_reduction_ms=3", "adapt.budget_ms=7", "adapt.reduction_decay=1"]).adapt
    assert reduction_ms(5, 100.0, cfg) == 3
    assert budget_ms(100.0, cfg) == 7
    assert budget_met(7.0, 100.0, cfg) and not budget_met(7.01, 100.0, cfg)


def test_ratio_budget():
    cfg = load_params(None, ["adapt.budget_ratio=0.5"]).adapt
    assert budget_ms(10.0, cfg) == 5.0
