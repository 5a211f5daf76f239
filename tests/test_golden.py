"""Golden test: the adaptation's decisions stay what they were when ``tests/golden/adapt_lut.json``
was written.

Everything that feeds a decision is fixed: the starting weights are a file
(``tests/golden/tiny_cnn.safetensors``, imported through ``model.weights``), the LUT comes from the
simulated platform (layer costs from MAC counts, no timing), ``adapt.latency_source: lut``, and the
data subsets and seeds are the settings'. So a refactoring that keeps the algorithm keeps every
plan, every proposal's score, every pick and the final channel spec; a change that moves any of
them fails here, naming the first field that moved.

A change of behaviour that is meant: write the file again and review its diff in the commit::

    NETADAPT_WRITE_GOLDEN=1 .venv/bin/python -m pytest tests/test_golden.py
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import simulated_platform
from conftest import tiny_overrides

from netadapt_core.checkpoint import load_checkpoint
from netadapt_core.config import load_params
from netadapt_core.layers import channel_spec

GOLDEN = Path(__file__).parent / "golden"
SETTINGS = [
    f"model.weights={GOLDEN / 'tiny_cnn.safetensors'}",
    "platform.name=simulated-drift",
    "adapt.latency_source=lut",
    "lut.channel_step=2",
    "adapt.budget_ratio=0.45",
    "adapt.initial_reduction_ratio=0.04",
    "adapt.reduction_decay=0.9",
    "adapt.short_term_steps=5",
    "tracking.enabled=false",
]
# the fields of an iteration record and of a proposal that follow from the algorithm alone
# (timings, paths and hashes of files are left out: they depend on the machine and the run dir)
ITERATION_FIELDS = ("iteration", "group", "channels_before", "channels_after", "filters_removed",
                    "lut_ms", "estimated_ms", "measured_ms", "holdout_accuracy", "macs", "params")
PROPOSAL_FIELDS = ("group", "channels_before", "channels_after", "seed", "estimated_ms", "estimated_macs",
                   "estimated_params", "holdout_accuracy", "picked")


def _pick(record: dict[str, Any], fields: tuple[str, ...]) -> dict[str, Any]:
    return {f: round(record[f], 9) if isinstance(record[f], float) else record[f] for f in fields if f in record}


def _observed(root: Path, data_root: Path) -> dict[str, Any]:
    from netadapt_core.adapt import NetAdapt, make_context, open_run
    from netadapt_core.stages import run_lut, run_pretrain

    params = load_params(None, [*tiny_overrides(root, data_root), *SETTINGS])
    run_pretrain(params, log=lambda _: None)
    run_lut(params, log=lambda _: None)
    ctx = make_context(params, log=lambda _: None)
    run_dir, state = open_run(ctx)
    state = NetAdapt(ctx, run_dir, state).run()
    final = state.iterations[-1]
    iterations = [r.model_dump() for r in state.iterations]
    return {
        "settings": [s.replace(f"{GOLDEN.parent.parent}/", "") for s in SETTINGS],  # paths from the repository
        "status": state.status,
        "iterations": [{**_pick(r, ITERATION_FIELDS),
                        "proposals": [_pick(p, PROPOSAL_FIELDS) for p in r["proposals"]]}
                       for r in iterations],
        "final_channels": channel_spec(load_checkpoint(final.checkpoint)[0]),
    }


def _first_difference(want: Any, got: Any, where: str = "") -> str | None:
    if isinstance(want, dict) and isinstance(got, dict):
        for key in sorted(set(want) | set(got)):
            if key not in want or key not in got:
                return f"{where}.{key}: only in the {'golden file' if key in want else 'new run'}"
            found = _first_difference(want[key], got[key], f"{where}.{key}")
            if found:
                return found
        return None
    if isinstance(want, list) and isinstance(got, list):
        for i, (w, g) in enumerate(zip(want, got)):
            found = _first_difference(w, g, f"{where}[{i}]")
            if found:
                return found
        return None if len(want) == len(got) else f"{where}: {len(want)} entries in the golden file, {len(got)} now"
    return None if want == got else f"{where}: golden {want!r}, now {got!r}"


@pytest.mark.slow
def test_adaptation_decisions_equal_the_golden_record(tmp_path, data_root):
    with simulated_platform.registered():
        got = _observed(tmp_path, data_root)
    path = GOLDEN / "adapt_lut.json"
    if os.environ.get("NETADAPT_WRITE_GOLDEN") == "1":  # a meant change: record it (then review its diff)
        path.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
    want = json.loads(path.read_text())
    assert len(got["iterations"]) >= 4, "the golden run should take several iterations"
    difference = _first_difference(want, json.loads(json.dumps(got)))
    assert difference is None, f"the adaptation decided differently from {path}: {difference}"
