"""The adaptation as Prefect flows: fan-out, task runners, resume after SIGKILL, failing proposals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from uuid import UUID

import pytest

from conftest import write_params
from flows.adapt import adapt_flow

# LUT latency drives targets and the stop, so the same settings give the same picks on a noisy CPU
DETERMINISTIC = ("adapt.latency_source=lut", "adapt.budget_ratio=0.85", "adapt.initial_reduction_ratio=0.02",
                 "adapt.reduction_decay=1.0")


def _journal(params) -> list[dict]:
    path = Path(params.adapt.run_dir) / "executions.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def _state(params) -> dict:
    return json.loads((Path(params.adapt.run_dir) / "state.json").read_text())


def test_one_task_per_group_then_a_pick(run_params, run_flow):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey, FlowRunFilter, FlowRunFilterId,
    )

    params = run_params(*DETERMINISTIC, "adapt.max_iterations=1", "adapt.workers=2")
    summary = run_flow(adapt_flow, params)
    record = _state(params)["iterations"][0]
    groups = sorted(p["group"] for p in record["proposals"])
    assert len(groups) >= 2 and sum(p["picked"] for p in record["proposals"]) == 1
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[UUID(summary["flow_run_id"])])))
        proposals = sorted(r.name for r in runs if r.name.startswith("proposal "))
        assert proposals == sorted(f"proposal {g} (iteration 0)" for g in groups)
        assert all(r.state.is_completed() for r in runs)
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=["iteration-001"]),
            flow_run_id=ArtifactFilterFlowRunId(any_=[UUID(summary["flow_run_id"])])))
        assert len(artifacts) == 1
        rows = json.loads(artifacts[0].data) if isinstance(artifacts[0].data, str) else artifacts[0].data
        assert {row["group"] for row in rows} == set(groups) and sum(row["picked"] for row in rows) == 1
    assert Counter((e["iteration"], e["group"]) for e in _journal(params)) == Counter((0, g) for g in groups)


def test_dask_two_workers_pick_like_threads_though_one_is_killed(run_params, run_flow, tmp_path, monkeypatch):
    """A local Dask cluster of two worker processes (nanny-managed, as on a real cluster). The first
    worker to finish training a proposal is SIGKILLed before saving it (``NETADAPT_FAULT`` once,
    across processes): the nanny starts a new worker, the scheduler runs the task again, and the
    iteration goes on with every proposal and the same picks as a run on threads."""
    threads = run_params(*DETERMINISTIC, f"adapt.run_dir={tmp_path}/threads")
    dask = run_params(*DETERMINISTIC, f"adapt.run_dir={tmp_path}/dask", "adapt.runner=dask", "adapt.workers=2",
                      "adapt.proposal_retries=0")  # no Prefect retry: Dask itself runs the lost task again
    by_threads = run_flow(adapt_flow, threads)
    marker = tmp_path / "killed-once"
    monkeypatch.setenv("NETADAPT_FAULT", "proposal-trained")
    monkeypatch.setenv("NETADAPT_FAULT_ONCE", str(marker))  # inherited by the workers the cluster spawns
    by_dask = run_flow(adapt_flow, dask)
    assert marker.is_file(), "no worker was killed: the fault point was not reached"
    assert by_threads["status"] == by_dask["status"] == "done"
    assert by_dask["picks"] == by_threads["picks"] and len(by_dask["picks"]) >= 2
    first = [_state(p)["iterations"][0]["proposals"] for p in (threads, dask)]
    assert sorted(p["group"] for p in first[1]) == sorted(p["group"] for p in first[0])  # none skipped
    pids = {e["pid"] for e in _journal(dask)}
    assert os.getpid() not in pids and len(pids) >= 1  # proposals ran in Dask's worker processes


def test_failing_proposal_is_retried_then_skipped(run_params, run_flow, monkeypatch):
    import tasks.adapt

    real = tasks.adapt.run_proposal
    calls = Counter()

    def flaky(params, data, parent, plan, out_path, key, journal=None, *screening):
        calls[plan.group] += 1
        if plan.group == "head.0":
            raise RuntimeError("worker died")
        return real(params, data, parent, plan, out_path, key, journal, *screening)

    monkeypatch.setattr(tasks.adapt, "run_proposal", flaky)
    params = run_params(*DETERMINISTIC, "adapt.max_iterations=1", "adapt.proposal_retries=2")
    run_flow(adapt_flow, params)
    record = _state(params)["iterations"][0]
    assert calls["head.0"] == 3  # first try + 2 retries
    assert "head.0" not in {p["group"] for p in record["proposals"]} and record["proposals"]


def test_a_hung_proposal_times_out_and_the_iteration_goes_on(run_params, run_flow, monkeypatch):
    """``adapt.proposal_timeout_s``: the first proposal to finish training hangs (as a stuck worker
    would, ``NETADAPT_HANG``); it fails after the timeout, is not retried (retries 0), and the
    iteration picks among the others instead of waiting for ever."""
    from netadapt_core import faults

    monkeypatch.setenv("NETADAPT_HANG", "proposal-trained@1")
    monkeypatch.setattr(faults, "_passes", Counter())
    params = run_params(*DETERMINISTIC, "adapt.max_iterations=1", "adapt.proposal_retries=0",
                        "adapt.proposal_timeout_s=4")
    started = time.monotonic()
    run_flow(adapt_flow, params)
    record = _state(params)["iterations"][0]
    planned = len(record["proposals"]) + 1
    assert planned >= 2 and record["group"] in {p["group"] for p in record["proposals"]}
    assert time.monotonic() - started < 120
    hung = [e for e in _journal(params) if e["iteration"] == 0]
    assert len(hung) == planned - 1  # the hung proposal never finished


@pytest.mark.slow
def test_resume_after_sigkill_mid_iteration(run_params, run_flow, tmp_path):
    """Kill the CLI while proposals of iteration 2 are running; the rerun finishes with the same
    picks as an uninterrupted run and runs no finished proposal again."""
    reference = run_params(*DETERMINISTIC, f"adapt.run_dir={tmp_path}/reference")
    expected = run_flow(adapt_flow, reference)["picks"]
    assert len(expected) >= 2

    params = run_params(*DETERMINISTIC, f"adapt.run_dir={tmp_path}/killed", "adapt.short_term_steps=40")
    expected_slow = run_flow(adapt_flow, run_params(*DETERMINISTIC, f"adapt.run_dir={tmp_path}/slow_ref",
                                                    "adapt.short_term_steps=40"))["picks"]
    path = write_params(params, tmp_path / "killed.yaml")
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect_cli")}
    env.pop("PREFECT_API_URL", None)
    command = [sys.executable, "-m", "flows.cli", "adapt", "--params", path]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline:
        if any(e["iteration"] == 1 for e in _journal(params)):
            break
        time.sleep(0.05)
    else:
        process.kill()
        pytest.fail("iteration 2 never started")
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    killed_state = _state(params)
    assert killed_state["status"] == "running" and len(killed_state["iterations"]) == 1
    finished_before = Counter((e["iteration"], e["group"]) for e in _journal(params))

    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    final = _state(params)
    assert final["status"] == "done"
    assert [(r["group"], r["channels_after"]) for r in final["iterations"]] == [tuple(p) for p in expected_slow]
    executions = Counter((e["iteration"], e["group"]) for e in _journal(params))
    assert max(executions.values()) == 1, executions  # nothing that had finished ran again
    assert set(finished_before) <= set(executions)
    proposals = {(r["iteration"] - 1, p["group"]) for r in final["iterations"] for p in r["proposals"]}
    assert set(executions) == proposals
