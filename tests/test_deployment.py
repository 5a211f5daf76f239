"""A local Prefect server, a process worker and `prefect deployment run`, as a user drives them."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import write_params

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_deployment_run_on_local_server_and_worker(run_params, tmp_path):
    params = run_params("adapt.latency_source=lut", "adapt.budget_ratio=0.85", "adapt.initial_reduction_ratio=0.02")
    params_path = write_params(params, tmp_path / "params.yaml")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(NETADAPT_PREFECT_PORT=str(_free_port()), PREFECT_HOME=str(tmp_path / "prefect"),
               NETADAPT_PYTHON=sys.executable)  # the environment running the tests, whichever it is

    def script(*args, timeout=240):
        return subprocess.run(["bash", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)

    try:
        started = script("scripts/prefect_server.sh", "start")
        assert started.returncode == 0, started.stdout + started.stderr
        deployed = script("scripts/prefect_deploy.sh")
        assert deployed.returncode == 0, deployed.stdout + deployed.stderr
        assert script("scripts/prefect_worker.sh", "start").returncode == 0
        api = f"http://127.0.0.1:{env['NETADAPT_PREFECT_PORT']}/api"
        run = subprocess.run(
            [str(Path(sys.executable).parent / "prefect"), "deployment", "run", "netadapt-adapt/default",
             "--param", f"params_path={params_path}", "--watch", "--watch-timeout", "400"],
            cwd=ROOT, env={**env, "PREFECT_API_URL": api}, capture_output=True, text=True, timeout=450,
        )
        assert run.returncode == 0 and "Completed" in run.stdout, run.stdout[-3000:] + run.stderr[-3000:]
        state = json.loads((Path(params.adapt.run_dir) / "state.json").read_text())
        assert state["status"] == "done" and state["iterations"]
    finally:
        script("scripts/prefect_worker.sh", "stop")
        script("scripts/prefect_server.sh", "stop")
    assert script("scripts/prefect_server.sh", "status").returncode == 1
