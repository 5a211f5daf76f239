"""`netadapt export` on a real (tiny) trained network and real Fashion-MNIST test images: the files
are written, listed with their sha256, reproduce PyTorch's outputs when loaded back, and an export
that does not (another network, a changed file, an exporter that bakes in one branch) is caught."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from netadapt_core.checkpoint import file_sha256, load_checkpoint
from netadapt_core.config import ExportConfig
from netadapt_core.errors import StageOrderError
from netadapt_core.export import (
    CHANNELS,
    FILES,
    MANIFEST,
    ExportError,
    ExportMismatchError,
    check_export,
    export_network,
    reference_outputs,
    sample_images,
    verify_file,
)
from netadapt_core.layers import channel_spec
from netadapt_core.stages import run_export
from netadapt_core.surgery import prunable_groups, prune_group

ALL_FILES = {*FILES.values(), CHANNELS, MANIFEST}
DEFAULT_FILES = {*(FILES[f] for f in ExportConfig().formats), CHANNELS, MANIFEST}  # what `netadapt export` writes


@pytest.fixture(scope="module")
def samples(tiny_params):
    return sample_images(tiny_params, 8)


@pytest.fixture(scope="module")
def adapted(pretrained):
    """The trained tiny CNN with its first group pruned by half: a network of uneven widths."""
    model, arch, _ = load_checkpoint(pretrained)
    group = prunable_groups(model, (1, 28, 28))[0]
    prune_group(model, group.id, group.channels // 2, (1, 28, 28))
    return model.eval(), arch


@pytest.fixture(scope="module")
def exported(tmp_path_factory, adapted, samples):
    model, arch = adapted
    cfg = ExportConfig(out_dir=str(tmp_path_factory.mktemp("export")), formats=list(FILES))  # every format
    manifest = export_network(model, arch, samples, cfg, {"checkpoint": "test"}, log=lambda _: None)
    return Path(cfg.out_dir), manifest, cfg


def _outputs(fmt: str, path: Path, x: torch.Tensor) -> np.ndarray:
    """Load an exported file the way a deployment would, independently of netadapt's checks."""
    if fmt == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session.run(["output"], {"input": x.numpy()})[0]
    if fmt == "executorch":
        from executorch.runtime import Runtime

        return Runtime.get().load_program(path).load_method("forward").execute([x])[0].numpy()
    with torch.no_grad():
        if fmt == "torch_export":
            return torch.export.load(str(path)).module()(x).numpy()
        return torch.jit.load(str(path)).eval()(x).numpy()


def test_export_writes_every_file_with_its_sha256(exported, adapted, samples):
    out, manifest, _ = exported
    model, arch = adapted
    assert {p.name for p in out.iterdir()} == ALL_FILES  # no staging folder left behind
    on_disk = json.loads((out / MANIFEST).read_text())
    assert on_disk == json.loads(json.dumps(manifest))
    assert set(on_disk["files"]) == ALL_FILES - {MANIFEST}
    for name, entry in on_disk["files"].items():
        assert entry["sha256"] == file_sha256(out / name) and entry["bytes"] == (out / name).stat().st_size
    for fmt, name in FILES.items():
        entry = on_disk["files"][name]
        assert entry["format"] == fmt and entry["top1_agreement"] == 1.0
        assert 0 <= entry["max_abs_diff"] <= 1e-4 and set(entry["max_abs_diff_by_batch"]) == {"8", "1"}
    inputs = on_disk["inputs"]
    assert inputs["dataset"] == "fashion_mnist" and inputs["split"] == "test" and inputs["indices"] == list(range(8))
    assert inputs["shape"] == [8, 1, 28, 28] and len(inputs["labels"]) == 8
    assert inputs["preprocessing"]["mean"] == [0.2860] and inputs["preprocessing"]["std"] == [0.3530]
    assert on_disk["host"]["cpu"] and on_disk["host"]["torch"] == torch.__version__
    assert on_disk["tolerance"]["rtol"] == 1e-3 and on_disk["tolerance"]["atol"] == 1e-4
    assert 0 <= on_disk["pytorch_top1_accuracy_on_inputs"] <= 1
    channels = json.loads((out / CHANNELS).read_text())
    assert channels["architecture"] == arch.to_dict() and channels["channels"] == channel_spec(model)
    assert channels["input_shape"] == [1, 28, 28]


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
@pytest.mark.parametrize("fmt", list(FILES))
def test_loaded_files_reproduce_pytorch_on_real_images_at_any_batch(exported, adapted, samples, fmt):
    out, _, _ = exported
    model, _ = adapted
    images = samples.images
    for x in (images, images[:1], images[2:5]):  # batch 3 was never exported nor checked: dynamic batch
        with torch.no_grad():
            want = model(x).numpy()
        got = _outputs(fmt, out / FILES[fmt], x)
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4)
        assert (got.argmax(1) == want.argmax(1)).all()


def test_check_catches_another_network_and_a_changed_file(exported, adapted, pretrained, samples, tmp_path):
    out, _, cfg = exported
    assert set(check_export(out, adapted[0], samples, cfg.rtol, cfg.atol, log=lambda _: None)) == set(FILES.values())
    other, _, _ = load_checkpoint(pretrained)  # the network before pruning: same output shape
    expected = reference_outputs(other, samples.images)
    for fmt, name in FILES.items():
        with pytest.raises(ExportMismatchError) as err:
            verify_file(fmt, out / name, samples.images, expected, cfg.rtol, cfg.atol)
        assert name in str(err.value) and "max |difference|" in str(err.value) and "export.formats" in str(err.value)
    with pytest.raises(ExportMismatchError, match="model.onnx does not reproduce"):
        check_export(out, other, samples, cfg.rtol, cfg.atol, log=lambda _: None)
    # a copy whose torch.export file lost a byte: the sha256 no longer matches the manifest
    copied = tmp_path / "copy"
    copied.mkdir()
    for path in out.iterdir():
        (copied / path.name).write_bytes(path.read_bytes())
    data = bytearray((copied / "model.pt2").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (copied / "model.pt2").write_bytes(bytes(data))
    with pytest.raises(ExportMismatchError, match="model.pt2 changed since it was exported"):
        check_export(copied, adapted[0], samples, cfg.rtol, cfg.atol, log=lambda _: None)
    # a truncated file cannot be loaded: the error names it and the runtime
    (copied / "model.onnx").write_bytes((out / "model.onnx").read_bytes()[:200])
    with pytest.raises(ExportError, match="model.onnx: cannot be loaded back .*onnxruntime"):
        verify_file("onnx", copied / "model.onnx", samples.images, expected, cfg.rtol, cfg.atol)


class _BranchOnInput(nn.Module):
    """Data-dependent control flow: tracing bakes in one branch, torch.export refuses it."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.net(x)
        if x.min() < -0.5:  # real (normalised) images have a dark background; zeros do not
            return y
        return -y


def test_an_export_that_changes_the_network_or_fails_is_refused_and_nothing_replaced(
        exported, adapted, samples, tmp_path):
    out, _, cfg = exported
    model, arch = adapted
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    wrapped = _BranchOnInput(copy.deepcopy(model)).eval()
    # the ONNX exporter traces on zeros and keeps the `-y` branch: the check on real images fails
    with pytest.raises(ExportMismatchError) as err:
        export_network(wrapped, arch, samples, cfg.model_copy(update={"formats": ["onnx"]}), log=lambda _: None)
    message = str(err.value)
    assert "model.onnx does not reproduce the PyTorch network" in message and "drop onnx from export.formats" in message
    assert (out / ".staging" / "model.onnx").is_file()  # kept for inspection, outside the export
    with pytest.raises(ExportError) as err:
        export_network(wrapped, arch, samples, cfg.model_copy(update={"formats": ["torch_export"]}),
                       log=lambda _: None)
    assert not isinstance(err.value, ExportMismatchError)
    assert "cannot export this network" in str(err.value) and "to torch_export" in str(err.value)
    assert "export.formats=[onnx, torchscript, executorch]" in str(err.value)
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    # a good export afterwards replaces the staging folder; a dropped format's file goes
    export_network(model, arch, samples, cfg.model_copy(update={"formats": ["onnx"]}), log=lambda _: None)
    assert {p.name for p in out.iterdir()} == {"model.onnx", CHANNELS, MANIFEST}
    assert set(json.loads((out / MANIFEST).read_text())["files"]) == {"model.onnx", CHANNELS}
    export_network(model, arch, samples, cfg, log=lambda _: None)  # back to all three for other tests


def test_export_settings_are_validated():
    from netadapt_core.config import ConfigError, load_params

    assert load_params(None).export.formats == ["onnx", "torch_export", "torchscript"]
    with pytest.raises(ConfigError, match="export.formats"):
        load_params(None, ["export.formats=[onnx, tflite]"])
    with pytest.raises(ConfigError, match="twice"):
        load_params(None, ["export.formats=[onnx, onnx]"])


def _adapt_and_finetune(params, finetune: bool = True) -> None:
    from netadapt_core.adapt import NetAdapt, make_context, open_run
    from netadapt_core.stages import run_finetune

    ctx = make_context(params, log=lambda _: None)
    run_dir, state = open_run(ctx)
    NetAdapt(ctx, run_dir, state).run()
    assert state.iterations
    if finetune:
        run_finetune(params, log=lambda _: None)


def _stage_params(run_params, *extra):
    return run_params("adapt.latency_source=lut", "adapt.verify=none", "adapt.max_iterations=1",
                      "adapt.short_term_steps=2", "adapt.initial_reduction_ratio=0.1", "finetune.epochs=0.05",
                      "tracking.enabled=false", *extra)


def test_stage_exports_the_finetuned_final_network_and_refuses_without_one(run_params):
    params = _stage_params(run_params)
    with pytest.raises(StageOrderError, match="netadapt adapt"):
        run_export(params, log=lambda _: None)
    _adapt_and_finetune(params, finetune=False)
    with pytest.raises(StageOrderError, match="run `netadapt finetune`"):
        run_export(params, log=lambda _: None)
    from netadapt_core.stages import run_finetune

    [result] = run_finetune(params, log=lambda _: None)
    manifest = run_export(params, log=lambda _: None)
    out = Path(params.export.out_dir)
    assert {p.name for p in out.iterdir()} == DEFAULT_FILES
    source = manifest["source"]
    assert source["checkpoint"] == result["checkpoint"] and source["iteration"] == 1
    assert source["checkpoint_sha256"] == file_sha256(result["checkpoint"])
    assert source["test_accuracy"] == result["test_accuracy"]
    model, _, _ = load_checkpoint(result["checkpoint"])
    channels = json.loads((out / CHANNELS).read_text())
    assert channels["channels"] == channel_spec(model)
    checked = run_export(params, log=lambda _: None, check=True)  # re-check writes nothing
    assert set(checked) == DEFAULT_FILES - {CHANNELS, MANIFEST} and all(c["max_abs_diff"] <= 1e-4 for c in checked.values())


def _netadapt(cwd, *args, env=None):
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=cwd, env={**os.environ, **(env or {})},
                          capture_output=True, text=True, timeout=600, check=False)


def test_cli_refuses_export_before_finetune(tmp_path, tiny_params):
    from conftest import write_params

    path = write_params(tiny_params, tmp_path / "params.yaml")
    done = _netadapt(tmp_path, "export", "--params", path, "--set", f"adapt.run_dir={tmp_path}/none")
    assert done.returncode == 2, done.stdout + done.stderr
    assert "netadapt export: error: no adaptation" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.slow
def test_cli_export_logs_the_files_to_the_adaptations_mlflow_run(run_params, tmp_path):
    """`netadapt export` through its Prefect flow: files written, then logged under `export/` of the
    MLflow run that `netadapt adapt` opened; `--check` re-checks them."""
    from conftest import write_params
    from mlflow.tracking import MlflowClient

    from flows.tracking import RUN_FILE, AdaptTracker
    from netadapt_core.adapt import RunState

    params = _stage_params(run_params, "tracking.enabled=true", f"tracking.uri=sqlite:///{tmp_path}/mlflow.db")
    _adapt_and_finetune(params)
    run_dir = Path(params.adapt.run_dir)
    state = RunState.load(run_dir / "state.json")
    AdaptTracker.start(params, run_dir, state, "test")  # what adapt_flow does
    path = write_params(params, tmp_path / "params.yaml")
    env = {"PREFECT_HOME": str(tmp_path / "prefect")}
    done = _netadapt(tmp_path, "export", "--params", path, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "model.onnx checked" in done.stdout + done.stderr
    run_id = json.loads((run_dir / RUN_FILE).read_text())["run_id"]
    logged = {a.path for a in MlflowClient(tracking_uri=params.tracking.uri).list_artifacts(run_id, "export")}
    assert logged == {f"export/{name}" for name in DEFAULT_FILES}
    checked = _netadapt(tmp_path, "export", "--check", "--params", path, env=env)
    assert checked.returncode == 0 and "sha256 ok" in checked.stdout + checked.stderr
