"""Every error a user can fix is a NetAdaptError (the CLI prints those on one line) and still the
built-in exception it refines, so callers catching the built-in keep working."""

import pytest

from flows.tracking import TrackingUnavailableError
from netadapt_core.adapt import BudgetUnreachableError
from netadapt_core.checkpoint import CheckpointError, load_checkpoint
from netadapt_core.config import ConfigError, load_params
from netadapt_core.data import DataMissingError
from netadapt_core.errors import NetAdaptError, ProposalsFailedError, StageOrderError
from netadapt_core.export import ExportError
from netadapt_core.layers import UnsupportedLayerError
from netadapt_core.lut import LatencyLUT, LutError
from netadapt_core.models import ModelError
from netadapt_core.models.weights import WeightsError
from netadapt_core.platforms import PlatformError
from netadapt_core.surgery import SurgeryError


@pytest.mark.parametrize("error, builtin", [
    (ConfigError, ValueError), (DataMissingError, FileNotFoundError), (CheckpointError, RuntimeError),
    (LutError, RuntimeError), (BudgetUnreachableError, RuntimeError), (UnsupportedLayerError, TypeError),
    (PlatformError, RuntimeError), (TrackingUnavailableError, RuntimeError), (StageOrderError, FileNotFoundError),
    (ProposalsFailedError, RuntimeError), (ModelError, ValueError), (WeightsError, ValueError),
    (SurgeryError, RuntimeError), (ExportError, RuntimeError),
])
def test_one_family(error, builtin):
    assert issubclass(error, NetAdaptError) and issubclass(error, builtin)


def test_real_failures_raise_the_family(tmp_path):
    with pytest.raises(NetAdaptError, match="adapt.budget_ratio"):
        load_params(None, ["adapt.budget_ratio=2"])
    with pytest.raises(NetAdaptError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "lut.json").write_text("{not json")
    with pytest.raises(NetAdaptError, match="corrupt"):
        LatencyLUT.load(tmp_path / "lut.json")
