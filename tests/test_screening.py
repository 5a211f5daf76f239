"""Successive halving of the proposals' short-term fine-tuning (``adapt.screening: halving``)."""

from __future__ import annotations

import json

import pytest

from netadapt_core.adapt import JOURNAL_FILE, halving_schedule, make_context, open_run
from netadapt_core.adapt import NetAdapt


def test_halving_schedule():
    assert halving_schedule(20, 3, 14) == [5, 10, 20]
    assert halving_schedule(20, 2, 5) == [10, 20]
    assert halving_schedule(3, 3, 5) == [1, 2, 3]
    assert halving_schedule(20, 3, 2) == [20]  # two proposals: nothing to screen
    assert halving_schedule(1, 3, 9) == [1]


def _journal(run_dir):
    return [json.loads(line) for line in (run_dir / JOURNAL_FILE).read_text().splitlines()]


def test_halving_trains_the_better_half_to_the_full_budget_and_resumes(run_params):
    params = run_params("adapt.screening=halving", "adapt.halving_rounds=3", "adapt.short_term_steps=8",
                        "adapt.latency_source=lut", "adapt.max_iterations=1", "adapt.min_proposal_share=1.0",
                        "adapt.budget_ratio=0.8")
    ctx = make_context(params, log=lambda _: None)
    run_dir, state = open_run(ctx)
    loop = NetAdapt(ctx, run_dir, state)
    step = loop.plan()
    assert len(step.plans) == 3  # the tiny CNN's three groups all propose

    def interrupted(jobs):
        if jobs[0].screening_round == 2:
            raise KeyboardInterrupt  # the run stops during the last round
        return loop.run_serially(jobs)

    with pytest.raises(KeyboardInterrupt):
        loop.screen(step, interrupted)
    assert len(_journal(run_dir)) == 5
    NetAdapt(ctx, run_dir, state).run()  # resumes: the planned iteration, the finished rounds kept
    trained = _journal(run_dir)
    # round 1: all three train 2 steps; the better two go on for 2 more, then 4 more (8 in all)
    assert sorted((e["round"], e["steps"]) for e in trained) == [(0, 2)] * 3 + [(1, 2)] * 2 + [(2, 4)] * 2
    record = state.iterations[0]
    assert len(record.screened_out) == 1 and record.screened_out[0]["steps"] == 2
    out = record.screened_out[0]["group"]
    assert len(record.proposals) == 2 and out not in {p["group"] for p in record.proposals}
    assert record.group != out


def test_training_device_gpu_or_a_clear_refusal(tiny_params, tiny_data, tmp_path):
    """With a GPU, proposals and fine-tuning train on it; without one, the setting is refused
    before any work with the fix (latency is measured on the platform either way)."""
    import subprocess
    import sys

    import torch

    from netadapt_core.config import with_overrides
    from netadapt_core.models import build_model
    from netadapt_core.training import TrainingError, evaluate, resolve_device, train

    params = with_overrides(tiny_params, ["adapt.train_device=cuda", "finetune.device=cuda:0"])
    if torch.cuda.is_available():
        model = build_model("tiny_cnn", num_classes=10, in_channels=1)
        train(model, tiny_data.train, params.adapt, 3, seed=0)
        assert next(model.parameters()).device.type == "cpu"  # handed back on the CPU
        assert 0 <= evaluate(model, tiny_data.holdout, device="cuda") <= 1
        return
    with pytest.raises(TrainingError, match="adapt.train_device is cuda, but this machine has no CUDA GPU"):
        resolve_device("cuda", "adapt.train_device")
    with pytest.raises(TrainingError, match="no CUDA GPU.*Fix: set"):
        train(build_model("tiny_cnn", num_classes=10, in_channels=1), tiny_data.train, params.adapt, 1, seed=0)
    done = subprocess.run([sys.executable, "-m", "flows.cli", "finetune", "--set", "finetune.device=cuda:1",
                           "--set", f"adapt.run_dir={tmp_path}/none"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2 and "finetune.device is cuda:1" in done.stderr and "Traceback" not in done.stderr
