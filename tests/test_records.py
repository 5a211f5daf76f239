"""The typed records of ``state.json``: they load what earlier versions wrote, keep keys they do not
know, and name the field when one is missing or wrong."""

from __future__ import annotations

import json

import pytest

from netadapt_core.adapt import IterationPlan, IterationRecord, NetworkPoint, ProposalPlan, RunState
from netadapt_core.checkpoint import RunStateError

POINT = {"measured_ms": 2.0, "lut_ms": 1.9, "macs": 1000, "params": 100, "holdout_accuracy": 0.8}
PICK = {"iteration": 1, "checkpoint": "run/iter_001.pt", "group": "stem.0", "channels_before": 32,
        "channels_after": 24, "filters_removed": 8, **POINT, "measured_ms": 1.5, "macs": 800}


def _state(**extra) -> dict:
    return {"config_hash": "h", "pretrained_sha256": "s", "status": "running",
            "baseline": {"iteration": 0, "checkpoint": "run/iter_000.pt", **POINT}, "iterations": [], **extra}


def test_a_run_state_round_trips_with_typed_records(tmp_path):
    plan = ProposalPlan(iteration=1, group="head.0", channels_before=64, channels_after=48, estimated_ms=1.2, seed=3)
    pending = IterationPlan(iteration=1, resource="latency", target=1.3, plans=[plan], parent_sha256="abc")
    state = RunState.model_validate(_state(iterations=[{**PICK, "target": 1.6, "timing": {"plan_s": 0.5}}],
                                           pending=pending.model_dump()))
    assert isinstance(state.baseline, NetworkPoint) and isinstance(state.current, IterationRecord)
    assert state.current.seconds == 0.0 and state.current.proposals == []  # defaults for what a record lacks
    state.save(tmp_path)
    again = RunState.load(tmp_path / "state.json")
    assert again == state and again.pending.plans == [plan]


def test_a_record_of_the_first_versions_loads_and_keeps_its_other_keys(tmp_path):
    """The first versions wrote ``target_ms`` (now ``target``) and keys since dropped."""
    old = _state(iterations=[{**PICK, "target_ms": 1.6, "legacy_note": "kept"}], status="done")
    (tmp_path / "state.json").write_text(json.dumps(old))
    state = RunState.load(tmp_path / "state.json")
    assert state.current.target == 1.6 and state.current.resource == "latency"
    state.save(tmp_path)
    assert json.loads((tmp_path / "state.json").read_text())["iterations"][0]["legacy_note"] == "kept"


@pytest.mark.parametrize(("damage", "named"), [
    (lambda s: s["iterations"].append({k: v for k, v in PICK.items() if k != "checkpoint"} | {"target": 1.0}),
     "iterations.0.checkpoint"),
    (lambda s: s["baseline"].update(macs="many"), "baseline.macs"),
    (lambda s: s.update(latency_points=[{"lut_ms": 1.0}]), "latency_points.0.measured_ms"),
])
def test_a_damaged_record_is_refused_naming_the_field(tmp_path, damage, named):
    raw = _state()
    damage(raw)
    (tmp_path / "state.json").write_text(json.dumps(raw))
    with pytest.raises(RunStateError, match=rf"damaged.*{named}.*Fix"):
        RunState.load(tmp_path / "state.json")
