"""MLflow tracking of an adaptation: one parent run, a metric point per iteration, tables, model.

Logging happens only in the flow's process (a SQLite store has one writer); workers never log.
The run's id is kept in ``<adapt.run_dir>/mlflow_run.json`` so that a resumed adaptation, and the
finetune and report stages after it, log into the same MLflow run.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

from netadapt_core.adapt import IterationRecord, RunState
from netadapt_core.checkpoint import atomic_write_json
from netadapt_core.config import Params, TrackingConfig
from netadapt_core.errors import NetAdaptError

RUN_FILE = "mlflow_run.json"
ITERATION_METRICS = ("holdout_accuracy", "lut_ms", "measured_ms", "macs", "params")


class TrackingUnavailableError(NetAdaptError, RuntimeError):
    """The MLflow tracking server cannot be reached."""


def check_tracking(cfg: TrackingConfig) -> None:
    """Fail at the start of a run, not half-way, when the tracking server does not answer."""
    if not cfg.enabled or not cfg.uri.startswith(("http://", "https://")):
        return
    try:
        urllib.request.urlopen(cfg.uri.rstrip("/") + "/health", timeout=cfg.connect_timeout_s)
    except OSError as exc:
        raise TrackingUnavailableError(
            f"MLflow tracking server {cfg.uri} cannot be reached ({exc}). Fix: start it "
            "(scripts/mlflow_ui.sh serves the project's SQLite store), set tracking.uri to a reachable "
            "server or sqlite:///mlflow.db, or set tracking.enabled=false."
        ) from None


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                              check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, str]:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat |= _flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = json.dumps(value) if isinstance(value, (list, dict)) else str(value)
    return flat


class AdaptTracker:
    """The MLflow parent run of one adaptation run directory."""

    def __init__(self, params: Params, run_dir: Path, run_id: str, logged_steps: list[int]) -> None:
        from mlflow.tracking import MlflowClient

        self.params = params
        self.run_dir = run_dir
        self.run_id = run_id
        self.logged_steps = logged_steps
        self.client = MlflowClient(tracking_uri=params.tracking.uri)

    @staticmethod
    def _client(cfg: TrackingConfig):
        from mlflow.tracking import MlflowClient

        return MlflowClient(tracking_uri=cfg.uri)

    @classmethod
    def start(cls, params: Params, run_dir: Path, state: RunState, flow_run_id: str) -> AdaptTracker | None:
        """Open the run recorded in ``run_dir`` (same settings) or create one with params and tags."""
        if not params.tracking.enabled:
            return None
        record = run_dir / RUN_FILE
        if record.is_file():
            saved = json.loads(record.read_text())
            if saved.get("config_hash") == state.config_hash:
                tracker = cls(params, run_dir, saved["run_id"], saved["logged_steps"])
                tracker.client.set_tag(tracker.run_id, "prefect_flow_run_id_resumed", flow_run_id)
                tracker.client.update_run(tracker.run_id, status="RUNNING")  # the same run goes on
                return tracker
        from mlflow.entities import Param

        client = cls._client(params.tracking)
        experiment = client.get_experiment_by_name(params.tracking.experiment)
        experiment_id = experiment.experiment_id if experiment else client.create_experiment(params.tracking.experiment)
        tags = {"git_commit": _git_commit(), "config_hash": state.config_hash,
                "prefect_flow_run_id": flow_run_id, "pretrained_sha256": state.pretrained_sha256,
                "run_dir": str(run_dir), "model": params.model.name, "platform": params.platform.name}
        run = client.create_run(experiment_id, tags=tags, run_name=f"adapt-{params.model.name}-{state.config_hash[:8]}")
        flat = _flatten(params.model_dump(mode="json"))
        items = [Param(k, v[:6000]) for k, v in sorted(flat.items())]
        for start in range(0, len(items), 100):
            client.log_batch(run.info.run_id, params=items[start:start + 100])
        tracker = cls(params, run_dir, run.info.run_id, [])
        tracker._save(state.config_hash)
        return tracker

    @classmethod
    def resume(cls, params: Params) -> AdaptTracker | None:
        """The run of ``adapt.run_dir`` (for the finetune and report stages), if tracking is on."""
        record = Path(params.adapt.run_dir) / RUN_FILE
        if not params.tracking.enabled or not record.is_file():
            return None
        saved = json.loads(record.read_text())
        return cls(params, Path(params.adapt.run_dir), saved["run_id"], saved["logged_steps"])

    def _save(self, config_hash: str) -> None:
        atomic_write_json(self.run_dir / RUN_FILE, {"run_id": self.run_id, "config_hash": config_hash,
                                                    "logged_steps": self.logged_steps})

    def log_iterations(self, state: RunState) -> None:
        """Log the baseline (step 0) and every iteration not logged yet, at step = iteration."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        for record in [state.baseline, *state.iterations]:
            step = record.iteration
            if step in self.logged_steps:
                continue
            metrics = [Metric(key, float(getattr(record, key)), now, step) for key in ITERATION_METRICS]
            self.client.log_batch(self.run_id, metrics=metrics)
            if isinstance(record, IterationRecord):
                columns = ("group", "channels_before", "channels_after", "estimated_ms", "holdout_accuracy", "picked")
                table = {c: [p[c] for p in record.proposals] for c in columns}
                self.client.log_table(self.run_id, table, f"proposals/iteration_{step:03d}.json")
            self.logged_steps.append(step)
            self._save(state.config_hash)

    def abort(self, status: str, reason: str) -> None:
        """End the run as the adaptation ended: KILLED (stopped on request) or FAILED (an error);
        a resumed adaptation sets it RUNNING again and goes on in the same run."""
        self.client.set_tag(self.run_id, "status_reason", reason[:5000])
        self.client.set_terminated(self.run_id, status)

    def finish(self, state: RunState) -> None:
        self.client.set_tag(self.run_id, "status", state.status)
        if state.reason:
            self.client.set_tag(self.run_id, "status_reason", state.reason[:5000])
        self.client.log_metric(self.run_id, "iterations", len(state.iterations))
        self.client.set_terminated(self.run_id, "FINISHED")  # finetune and report may still add to it

    def log_finetuned(self, results: list[dict[str, Any]], final_checkpoint: str) -> None:
        """Finetune metrics (step = iteration) and the final network, logged and registered."""
        import mlflow
        import mlflow.pytorch
        import numpy as np

        from netadapt_core.adapt import architecture
        from netadapt_core.checkpoint import load_checkpoint

        for result in results:
            for key in ("test_accuracy", "holdout_accuracy", "measured_ms"):
                self.client.log_metric(self.run_id, f"finetuned_{key}", float(result[key]), step=result["iteration"])
        model, _, _ = load_checkpoint(final_checkpoint)
        example = np.zeros((1, *architecture(self.params)[1]), dtype=np.float32)
        mlflow.set_tracking_uri(self.params.tracking.uri)
        with mlflow.start_run(run_id=self.run_id):
            # pickle format: a pt2 export would fix the batch size of the input example
            mlflow.pytorch.log_model(model, name="adapted_model", input_example=example,
                                     serialization_format="pickle",
                                     registered_model_name=self.params.tracking.registered_model)

    def log_reports(self, paths: list[Path]) -> None:
        for path in paths:
            if path.is_file():
                folder = "plots" if path.suffix == ".png" else "reports"
                self.client.log_artifact(self.run_id, str(path), artifact_path=folder)

    def log_files(self, paths: list[Path], folder: str) -> None:
        """Log the files that exist among ``paths`` as artifacts under ``folder`` (e.g. ``export``)."""
        for path in paths:
            if path.is_file():
                self.client.log_artifact(self.run_id, str(path), artifact_path=folder)
