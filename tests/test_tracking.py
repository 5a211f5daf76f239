"""MLflow tracking of a real (tiny) pipeline run, read back through MlflowClient."""

import json
import socket
import time
from pathlib import Path

import pytest

from flows.adapt import adapt_flow
from flows.pipeline import pipeline_flow
from flows.tracking import RUN_FILE, TrackingUnavailableError


@pytest.mark.slow
def test_pipeline_is_tracked_and_model_registered(run_params, run_flow, tmp_path, tiny_data):
    import mlflow.pytorch
    from mlflow.tracking import MlflowClient

    from netadapt_core.training import evaluate

    params = run_params(f"tracking.uri=sqlite:///{tmp_path}/mlflow.db", "tracking.registered_model=tiny-adapted")
    metrics = run_flow(pipeline_flow, params)
    client = MlflowClient(tracking_uri=params.tracking.uri)
    run_id = json.loads((Path(params.adapt.run_dir) / RUN_FILE).read_text())["run_id"]
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["config_hash"] and run.data.tags["prefect_flow_run_id"] and run.data.tags["git_commit"]
    assert run.data.params["adapt.budget_ratio"] == str(params.adapt.budget_ratio)
    n = metrics["iterations"]
    for key in ("holdout_accuracy", "lut_ms", "measured_ms", "macs", "params"):
        history = client.get_metric_history(run_id, key)
        assert sorted(m.step for m in history) == list(range(n + 1)), key  # baseline + one per iteration
    tables = {a.path for a in client.list_artifacts(run_id, "proposals")}
    assert tables == {f"proposals/iteration_{i:03d}.json" for i in range(1, n + 1)}
    assert {a.path for a in client.list_artifacts(run_id, "plots")} >= {"plots/tradeoff.png", "plots/layers.png"}
    versions = client.search_model_versions("name='tiny-adapted'")
    assert len(versions) == 1 and versions[0].run_id == run_id
    mlflow.set_tracking_uri(params.tracking.uri)
    model = mlflow.pytorch.load_model("models:/tiny-adapted/1")
    assert evaluate(model, tiny_data.test) == pytest.approx(metrics["final"]["test_accuracy"])


def test_unreachable_tracking_server_stops_the_run_at_start(run_params, run_flow):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    params = run_params(f"tracking.uri=http://127.0.0.1:{port}", "tracking.connect_timeout_s=2")
    started = time.time()
    with pytest.raises(TrackingUnavailableError, match="cannot be reached.*tracking.enabled=false"):
        run_flow(adapt_flow, params)
    assert time.time() - started < 30
    assert not Path(params.adapt.run_dir).exists()
