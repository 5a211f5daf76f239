"""Stopping on request and runs that do not collide: SIGTERM ends an adaptation within seconds,
files whole, the MLflow run KILLED; the next run resumes in the same MLflow run; one run directory
cannot be adapted twice at once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import write_params

from netadapt_core.adapt import JOURNAL_FILE, lock_run_dir
from netadapt_core.checkpoint import load_checkpoint
from netadapt_core.config import ConfigError


def _mlflow_status(params, run_id: str) -> str:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=params.tracking.uri).get_run(run_id).info.status


@pytest.mark.slow
def test_sigterm_stops_within_seconds_and_the_next_run_resumes(run_params, tmp_path):
    params = run_params("adapt.latency_source=lut", "adapt.budget_ratio=0.85", "adapt.initial_reduction_ratio=0.02",
                        "adapt.reduction_decay=1.0", "adapt.short_term_steps=60",
                        f"tracking.uri=sqlite:///{tmp_path}/mlflow.db")
    path = write_params(params, tmp_path / "params.yaml")
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect")}
    env.pop("PREFECT_API_URL", None)
    command = [sys.executable, "-m", "flows.cli", "adapt", "--params", path]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    journal = tmp_path / "run" / JOURNAL_FILE
    deadline = time.time() + 300
    while time.time() < deadline and not (journal.is_file() and journal.read_text().strip()):
        time.sleep(0.1)
    assert journal.is_file(), "no proposal finished within 300 s"
    stopped_at = time.time()
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    took = time.time() - stopped_at
    assert process.returncode == 130, stderr[-3000:]
    assert "stopped on request" in stderr and "Traceback" not in stderr, stderr[-3000:]
    assert "Error logging to API" not in stderr
    assert took < 30, f"took {took:.0f}s to stop"
    state = json.loads((tmp_path / "run" / "state.json").read_text())  # whole, parseable
    for pt in (tmp_path / "run").rglob("*.pt"):
        load_checkpoint(pt)  # every checkpoint left is whole
    run_id = json.loads((tmp_path / "run" / "mlflow_run.json").read_text())["run_id"]
    assert _mlflow_status(params, run_id) == "KILLED"
    assert state["status"] == "running"

    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((tmp_path / "run" / "state.json").read_text())["status"] == "done"
    assert json.loads((tmp_path / "run" / "mlflow_run.json").read_text())["run_id"] == run_id
    assert _mlflow_status(params, run_id) == "FINISHED"


def test_one_run_directory_cannot_be_adapted_twice_at_once(tmp_path):
    run_dir = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time, pathlib; from netadapt_core.adapt import lock_run_dir; "
        f"lock_run_dir(pathlib.Path({str(run_dir)!r})); print('held', flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ConfigError, match=rf"being adapted by pid {holder.pid} .*another adapt.run_dir"):
            lock_run_dir(run_dir)
    finally:
        holder.kill()
        holder.wait()
    lock_run_dir(run_dir)  # free once the other process is gone, however it ended
    lock_run_dir(run_dir)  # and this process may open its own run again
