"""Shared fixtures: real Fashion-MNIST subsets, a tiny pretrained CNN and its measured LUT.

Everything runs on real data and real measurements, kept small: a few thousand images, a network
of a few thousand parameters, a LUT measured with few repeats.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from netadapt_core.config import Params, load_params, with_overrides

DEBIAN_FMNIST = Path("/usr/share/datasets/fashion-mnist")


def tiny_overrides(root: Path, data_root: Path) -> list[str]:
    out = root / "out"
    return [
        f"data.root={data_root}",
        "data.holdout_size=500",
        "data.train_subset=3000",
        "data.test_subset=1000",
        "model.name=tiny_cnn",
        "pretrain.epochs=2",
        "pretrain.batch_size=64",
        f"pretrain.checkpoint={out}/pretrained.pt",
        "platform.batch_size=8",
        "platform.warmup=3",
        "platform.repeats=7",
        "platform.min_sample_ms=0.2",
        "platform.network_repeats=15",
        f"lut.path={out}/lut.json",
        f"lut.on_demand_path={out}/lut_on_demand.json",
        "lut.channel_step=4",
        "lut.min_channel_ratio=0.25",
        "lut.check_networks=[1.0, 0.5]",
        f"adapt.run_dir={out}/run",
        "adapt.short_term_steps=5",
        "adapt.budget_ratio=0.85",
        "adapt.initial_reduction_ratio=0.05",
        "adapt.reduction_decay=0.9",
        "finetune.epochs=0.5",
        f"finetune.out_dir={out}/finetuned",
        f"export.out_dir={out}/export",
        f"report.metrics={out}/metrics.json",
        f"report.tradeoff={out}/tradeoff.csv",
        f"report.lut_check={out}/lut_check.csv",
        f"report.layers={out}/layers.csv",
        f"report.data={out}/data.json",
        f"report.plots_dir={out}/plots",
        f"report.html={out}/report.html",
        f"tracking.uri=sqlite:///{out}/mlflow.db",
        "tracking.registered_model=netadapt-test",
    ]


@pytest.fixture(scope="session")
def data_root(tmp_path_factory) -> Path:
    if not DEBIAN_FMNIST.is_dir():
        pytest.fail("Debian's dataset-fashion-mnist is not installed: run scripts/setup.sh (apt-get)")
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="session")
def shared_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("shared")


@pytest.fixture(scope="session")
def tiny_params(shared_dir, data_root) -> Params:
    """Tiny settings whose pretrained checkpoint and LUT are built once per session."""
    return load_params(None, tiny_overrides(shared_dir, data_root))


@pytest.fixture(scope="session")
def tiny_data(tiny_params):
    from netadapt_core.data import load_data

    return load_data(tiny_params.data)


@pytest.fixture(scope="session")
def pretrained(tiny_params) -> Path:
    from netadapt_core.stages import run_pretrain

    run_pretrain(tiny_params, log=lambda _: None)
    return Path(tiny_params.pretrain.checkpoint)


@pytest.fixture(scope="session")
def tiny_lut(tiny_params, pretrained) -> Path:
    from netadapt_core.stages import run_lut

    run_lut(tiny_params, log=lambda _: None)
    return Path(tiny_params.lut.path)


@pytest.fixture
def run_params(tmp_path, tiny_params, pretrained, tiny_lut):
    """The shared pretrained network and LUT, with a fresh run directory per test."""
    def make(*extra: str) -> Params:
        overrides = [f"adapt.run_dir={tmp_path}/run", f"finetune.out_dir={tmp_path}/finetuned",
                     f"export.out_dir={tmp_path}/export",
                     f"report.metrics={tmp_path}/metrics.json", f"report.tradeoff={tmp_path}/tradeoff.csv",
                     f"report.lut_check={tmp_path}/lut_check.csv", f"report.layers={tmp_path}/layers.csv",
                     f"report.data={tmp_path}/data.json", f"report.plots_dir={tmp_path}/plots",
                     f"report.html={tmp_path}/report.html", *extra]
        return with_overrides(tiny_params, overrides)

    return make


def write_params(params: Params, path: Path) -> str:
    """Save settings as a params.yaml for flows and the CLI."""
    path.write_text(yaml.safe_dump(params.model_dump(mode="json"), sort_keys=False))
    return str(path)


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory):
    """One temporary Prefect server (SQLite) for the whole session."""
    os.environ["PREFECT_HOME"] = str(tmp_path_factory.mktemp("prefect_home"))
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def run_flow(prefect_server, tmp_path):
    """Run a flow from ``flows`` on settings given as a Params object."""
    def run(flow, params: Params, **kwargs):
        return flow(write_params(params, tmp_path / "params.yaml"), [], **kwargs)

    return run


os.environ.setdefault("NETADAPT_NO_REEXEC", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
