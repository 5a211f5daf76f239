"""SIGKILL at eight points of an adaptation and its fine-tuning, then resume: the result equals an
uninterrupted run's (``adapt.latency_source: lut``: deterministic), every file left is whole, and
no finished proposal runs again (``netadapt_core/faults.py`` names the points)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from conftest import write_params

from netadapt_core.adapt import JOURNAL_FILE
from netadapt_core.checkpoint import load_checkpoint
from netadapt_core.faults import POINTS
from netadapt_core.layers import channel_spec

DRIVER = """
import sys
from netadapt_core.adapt import make_context, open_run
from netadapt_core.config import load_params
from netadapt_core.adapt import NetAdapt
from netadapt_core.stages import run_finetune
params = load_params(sys.argv[1])
ctx = make_context(params, log=lambda _: None)
run_dir, state = open_run(ctx)
NetAdapt(ctx, run_dir, state).run()
run_finetune(params, log=lambda _: None)
"""
# where each point is hit mid-run (the K-th pass), so that work is both behind and ahead of it
KILLS = ["plan-saved@2", "proposal-trained@3", "proposal-saved@4", "pick-measured@2", "iteration-saved@1",
         "checkpoint-write@5", "file-write@7", "finetune-trained"]
assert {k.partition("@")[0] for k in KILLS} == set(POINTS)


def _run(path, fault=None):
    env = {**os.environ, "NETADAPT_NO_REEXEC": "1"}
    env.pop("NETADAPT_FAULT", None)
    if fault:
        env["NETADAPT_FAULT"] = fault
    return subprocess.run([sys.executable, "-c", DRIVER, path], env=env, capture_output=True, text=True,
                          timeout=600, check=False)


def _outcome(params):
    run = params.adapt.run_dir
    state = json.loads(Path(f"{run}/state.json").read_text())
    final = state["iterations"][-1]
    results = json.loads(Path(f"{params.finetune.out_dir}/results.json").read_text())
    return {"picks": [(r["group"], r["channels_after"]) for r in state["iterations"]], "status": state["status"],
            "channels": channel_spec(load_checkpoint(final["checkpoint"])[0]),
            "finetuned": [(r["iteration"], r["test_accuracy"]) for r in results]}


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_params, pretrained, tiny_lut):
    from netadapt_core.config import with_overrides

    root = tmp_path_factory.mktemp("reference")
    params = with_overrides(tiny_params, [*SETTINGS, f"adapt.run_dir={root}/run", f"finetune.out_dir={root}/ft"])
    done = _run(write_params(params, root / "params.yaml"))
    assert done.returncode == 0, done.stderr[-3000:]
    return _outcome(params)


SETTINGS = ["adapt.latency_source=lut", "adapt.budget_ratio=0.9", "adapt.initial_reduction_ratio=0.03",
            "adapt.reduction_decay=1.0", "adapt.short_term_steps=4", "tracking.enabled=false"]


@pytest.mark.slow
@pytest.mark.parametrize("fault", KILLS)
def test_killed_anywhere_the_resumed_run_equals_an_uninterrupted_one(fault, reference, run_params, tmp_path):
    params = run_params(*SETTINGS, f"finetune.out_dir={tmp_path}/ft")
    path = write_params(params, tmp_path / "params.yaml")
    killed = _run(path, fault)
    assert killed.returncode == -signal.SIGKILL, f"{fault} was never reached: {killed.stderr[-2000:]}"
    resumed = _run(path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert _outcome(params) == reference
    journal = [json.loads(line) for line in Path(f"{params.adapt.run_dir}/{JOURNAL_FILE}").read_text().splitlines()]
    runs = Counter((e["iteration"], e["group"], e.get("round", 0)) for e in journal)
    assert max(runs.values()) == 1, runs  # a proposal that had finished never ran again
    for checkpoint in (tmp_path / "run").glob("iter_*.pt"):
        load_checkpoint(checkpoint)  # every checkpoint in place is whole
