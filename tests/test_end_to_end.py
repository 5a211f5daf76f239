"""The real pipeline through its command line on a tiny network and a Fashion-MNIST subset."""

import csv
import json
import os
import subprocess
import sys

import pytest

from conftest import tiny_overrides


def _netadapt(cwd, *args):
    env = {**os.environ}
    env.pop("NETADAPT_NO_REEXEC", None)  # exercise the allocator re-exec as users get it
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_netadapt_all_on_real_data(tmp_path, data_root):
    sets = [arg for override in tiny_overrides(tmp_path, data_root) for arg in ("--set", override)]
    done = _netadapt(tmp_path, "all", *sets)
    assert done.returncode == 0, done.stdout + done.stderr
    out = tmp_path / "out"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "done" and metrics["budget_met_measured"]
    assert metrics["final"]["measured_ms"] <= metrics["budget_ms"] < metrics["baseline"]["measured_ms"]
    assert metrics["final"]["finetuned"] and 0.1 < metrics["final"]["test_accuracy"] <= 1
    assert metrics["final"]["macs"] < metrics["baseline"]["macs"]
    rows = list(csv.DictReader((out / "tradeoff.csv").open()))
    assert len(rows) == metrics["iterations"] + 1 and rows[0]["iteration"] == "0"
    assert [float(r["measured_ms"]) for r in rows][-1] <= metrics["budget_ms"]

    page = (out / "report.html").read_text()  # one self-contained page: nothing fetched from elsewhere
    assert "Trade-off: one network per iteration" in page and page.count("data:image/png;base64,") >= 2
    assert "src='http" not in page and "href=" not in page and f"{metrics['speedup_measured']:.2f}x" in page

    check = _netadapt(tmp_path, "lut", "--check", *sets)
    assert check.returncode == 0, check.stderr
    assert "median |error|" in check.stdout
    checked = list(csv.DictReader((out / "lut_check.csv").open()))
    assert any(r["network"].startswith("adapt_iter_") for r in checked)

    rerun = _netadapt(tmp_path, "adapt", *sets)  # finished run: resumes and has nothing to do
    assert rerun.returncode == 0 and "resuming" in rerun.stdout + rerun.stderr


def test_cli_reports_user_errors_without_traceback(tmp_path, data_root):
    sets = [arg for override in tiny_overrides(tmp_path, data_root) for arg in ("--set", override)]
    done = _netadapt(tmp_path, "adapt", *sets)
    assert done.returncode == 2
    assert "checkpoint" in done.stderr and "does not exist" in done.stderr and "Traceback" not in done.stderr
    bad = _netadapt(tmp_path, "lut", "--set", "lut.channel_step=0")
    assert bad.returncode == 2 and "lut.channel_step" in bad.stderr
    verbose = _netadapt(tmp_path, "adapt", "-v", *sets)  # -v: the same error with its traceback
    assert verbose.returncode == 2 and "Traceback" in verbose.stderr and "StageOrderError" in verbose.stderr


def test_unmet_budget_still_fine_tunes_and_reports_then_exits_3(tmp_path, tiny_params, pretrained, tiny_lut):
    """A run that ends without meeting its budget (here: adapt.max_iterations=1) keeps its pick,
    `netadapt all` fine-tunes and reports the closest network, then exits non-zero naming the cause.

    (The budget, 75% of the start, lies above the smallest network the grid allows (~69%) and far
    below where one small step (3%) lands, however the timing of a loaded machine wanders; with 80%
    and a 10% step a noisy measurement once put the first pick under the budget.)"""
    from conftest import write_params
    from netadapt_core.config import with_overrides

    out = tmp_path / "out"
    params = with_overrides(tiny_params, [
        f"adapt.run_dir={out}/run", f"finetune.out_dir={out}/finetuned", f"report.metrics={out}/metrics.json",
        f"report.tradeoff={out}/tradeoff.csv", f"report.lut_check={out}/lut_check.csv",
        f"report.layers={out}/layers.csv", f"report.data={out}/data.json", f"report.plots_dir={out}/plots",
        f"tracking.uri=sqlite:///{out}/mlflow.db", "adapt.budget_ratio=0.75", "adapt.initial_reduction_ratio=0.03",
        "adapt.max_iterations=1",
    ])
    path = write_params(params, tmp_path / "params.yaml")
    env_home = {"PREFECT_HOME": str(tmp_path / "prefect")}
    done = subprocess.run([sys.executable, "-m", "flows.cli", "all", "--params", path], cwd=tmp_path,
                          env={**os.environ, **env_home}, capture_output=True, text=True, timeout=600)
    assert done.returncode == 3, done.stdout[-3000:] + done.stderr[-3000:]
    assert "budget not met" in done.stderr and "adapt.max_iterations=1" in done.stderr
    assert "Traceback" not in done.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "max_iterations" and "max_iterations" in metrics["reason"]
    assert metrics["iterations"] == 1 and metrics["final"]["finetuned"]
    assert metrics["budget_met_measured"] is False
    assert (out / "finetuned" / "iter_001.pt").is_file() and (out / "lut_check.csv").is_file()
