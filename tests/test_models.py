"""Networks from every source (built in, torchvision, timm, a plug-in package), fitted to the data
set, their weights files, and the surgery check that proves each group prunes correctly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from netadapt_core.checkpoint import Architecture, load_checkpoint, save_checkpoint
from netadapt_core.config import ConfigError, load_params
from netadapt_core.layers import UnsupportedLayerError
from netadapt_core.models import ModelError, build_model, check_network
from netadapt_core.models.weights import WeightsError, load_weights
from netadapt_core.surgery import SurgeryError, check_surgery

ROOT = Path(__file__).resolve().parents[1]
SHAPE = (1, 32, 32)


def test_torchvision_builder_is_fitted_to_grey_images_and_prunes_exactly():
    model = build_model("torchvision:resnet18", num_classes=10, in_channels=1, image_size=32)
    assert model.conv1.in_channels == 1 and model.fc.out_features == 10
    check_network(model, SHAPE, 10, "torchvision:resnet18")
    report = check_surgery(model, SHAPE, exclude=["layer4.*"])
    # every group keeps the network's function when its silenced channels are removed
    assert [k for k, v in report.items() if v == "function"] and all(
        v in ("function", "skipped: adapt.exclude") for v in report.values())
    assert {k for k, v in report.items() if v.startswith("skipped")} == {
        "layer4.0.conv1", "layer4.0.conv2", "layer4.1.conv1"}  # layer4.0.conv2: the residual group of layer4


def test_timm_model_with_squeeze_excite_and_hardswish():
    model = build_model("timm:mobilenetv3_small_050", num_classes=10, in_channels=1, image_size=32)
    check_network(model, SHAPE, 10)
    report = check_surgery(model, SHAPE)
    assert sum(v == "function" for v in report.values()) >= 10


def test_builder_arguments_pass_through_and_bad_ones_are_named():
    model = build_model("torchvision:resnet18", num_classes=10, in_channels=3, image_size=32, zero_init_residual=True)
    assert torch.count_nonzero(model.layer1[0].bn2.weight) == 0
    with pytest.raises(ModelError, match="refused the arguments.*no_such_arg"):
        build_model("torchvision:resnet18", num_classes=10, in_channels=3, no_such_arg=1)
    aux = build_model("torchvision:googlenet", num_classes=10, in_channels=1, image_size=64, aux_logits=True)
    with pytest.raises(ModelError, match="training mode.*aux_logits"):
        check_network(aux, (1, 64, 64), 10)


def test_model_settings_are_validated_with_the_fix():
    for name, expected in [("torchvision:resnet_nope", "no classification builder"),
                           ("timm:resnet_nope", "timm has no model"), ("nope", "built in: mobilenet_v1"),
                           ("keras:resnet", "prefix must be torchvision: or timm:")]:
        with pytest.raises(ConfigError, match=expected):
            load_params(None, [f"model.name={name}"])
    with pytest.raises(ConfigError, match="model.width_mult is now model.kwargs.width_mult"):
        load_params(None, ["model.width_mult=0.5"])
    with pytest.raises(ConfigError, match="may not set.*num_classes"):
        load_params(None, ["model.kwargs={num_classes: 5}"])
    params = load_params(None, ["model.name=torchvision:resnet18", "model.kwargs.zero_init_residual=true"])
    assert params.model.kwargs == {"zero_init_residual": True}


def test_old_builtin_checkpoints_and_new_sources_round_trip(tmp_path):
    old = Architecture("mobilenet_v1", {"num_classes": 10, "in_channels": 1, "width_mult": 0.25,
                                        "first_stride": 1, "dropout": 0.0})  # the record before model sources
    model = old.build()
    save_checkpoint(tmp_path / "old.pt", model, old)
    assert load_checkpoint(tmp_path / "old.pt")[1] == old
    arch = Architecture("torchvision:resnet18", {"num_classes": 10, "in_channels": 1, "image_size": 32})
    net = arch.build().eval()
    save_checkpoint(tmp_path / "tv.pt", net, arch)
    loaded, loaded_arch, _ = load_checkpoint(tmp_path / "tv.pt")
    x = torch.randn(2, *SHAPE)
    assert loaded_arch == arch and torch.allclose(loaded(x), net(x))


def test_weights_files_load_and_mismatches_are_refused(tmp_path):
    from safetensors.torch import save_file

    source = build_model("tiny_cnn", num_classes=10, in_channels=1).eval()
    state = source.state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "w.safetensors")
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "w.pt")
    x = torch.randn(2, 1, 28, 28)
    for name in ("w.safetensors", "w.pt"):  # a DataParallel-prefixed, wrapped .pt loads too
        target = build_model("tiny_cnn", num_classes=10, in_channels=1).eval()
        load_weights(target, tmp_path / name, "tiny_cnn")
        assert torch.equal(target(x), source(x))
    other = build_model("tiny_cnn", num_classes=5, in_channels=1)
    with pytest.raises(WeightsError, match=r"shapes differ \(classifier.weight: file \(10, 32\) vs network \(5, 32\)"):
        load_weights(other, tmp_path / "w.safetensors", "tiny_cnn")
    wider = build_model("tiny_cnn", num_classes=10, in_channels=1, width_mult=2.0)
    with pytest.raises(WeightsError, match="does not fit model"):
        load_weights(wider, tmp_path / "w.pt")
    truncated = tmp_path / "cut.safetensors"
    truncated.write_bytes((tmp_path / "w.safetensors").read_bytes()[:300])
    with pytest.raises(WeightsError, match="cannot be read"):
        load_weights(source, truncated)
    torch.save(source, tmp_path / "module.pt")  # a pickled module, not a state dict: refused unread
    with pytest.raises(WeightsError, match="pickled Python objects.*save model.state_dict"):
        load_weights(source, tmp_path / "module.pt")
    with pytest.raises(WeightsError, match="does not exist"):
        load_weights(source, tmp_path / "missing.pt")
    (tmp_path / "w.onnx").write_bytes(b"x")
    with pytest.raises(WeightsError, match="unknown format"):
        load_weights(source, tmp_path / "w.onnx")


class _HardCodedSplit(nn.Module):
    """Splits its channels at a fixed index: pruning the conv before the split breaks the network."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.head = nn.Linear(4, 10)

    def forward(self, x):
        a = self.bn(self.conv(x))[:, :4]  # a slice Torch-Pruning cannot follow
        return self.head(a.mean((2, 3)))


def test_surgery_check_names_a_group_that_breaks_the_network():
    with pytest.raises(SurgeryError, match="group conv .*breaks the network.*adapt.exclude"):
        check_surgery(_HardCodedSplit().eval(), SHAPE)
    assert check_surgery(_HardCodedSplit().eval(), SHAPE, exclude=["conv"]) == {"conv": "skipped: adapt.exclude"}


def test_unsupported_networks_are_refused_by_layer_name():
    from torchvision.models import VisionTransformer

    vit = VisionTransformer(32, 8, num_layers=1, num_heads=2, hidden_dim=32, mlp_dim=64, num_classes=10)
    with pytest.raises(UnsupportedLayerError, match="the network itself, of type VisionTransformer"):
        check_surgery(vit, (3, 32, 32))
    shuffle = build_model("torchvision:shufflenet_v2_x0_5", num_classes=10, in_channels=1, image_size=32)
    with pytest.raises(UnsupportedLayerError, match="cannot trace.*channel shuffles"):
        check_surgery(shuffle, SHAPE)


def _pip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", *args],
                          capture_output=True, text=True, timeout=600, check=False)


@pytest.mark.slow
def test_plugin_package_network_adapts_end_to_end_through_the_cli(tmp_path, data_root):
    """A user's package, really pip-installed, offers its network by entry point; the CLI adapts it,
    and its exported weights then replace pretraining."""
    from conftest import tiny_overrides

    installed = _pip("install", "--no-deps", str(ROOT / "examples" / "netadapt_example_models"))
    assert installed.returncode == 0, installed.stderr
    try:
        overrides = [o for o in tiny_overrides(tmp_path, data_root) if not o.startswith("model.")]
        overrides += ["model.name=example_senet", "model.kwargs={width: 8, blocks: 1}", "adapt.budget_ratio=0.9",
                      "lut.channel_step=8"]
        sets = [arg for o in overrides for arg in ("--set", o)]
        env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect")}
        done = subprocess.run([sys.executable, "-m", "flows.cli", "all", *sets], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=900, check=False)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
        assert metrics["status"] == "done" and metrics["budget_met_measured"], (metrics, done.stdout[-3000:])
        assert "surgery checked on" in done.stdout + done.stderr, done.stdout[-3000:]

        # the pretrained network's weights, as the user's own .safetensors file, replace pretraining
        from safetensors.torch import save_file

        model, arch, meta = load_checkpoint(tmp_path / "out" / "pretrained.pt")
        assert arch.name == "example_senet" and arch.kwargs["width"] == 8
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "mine.safetensors")
        imported = tmp_path / "imported.pt"
        again = subprocess.run([sys.executable, "-m", "flows.cli", "pretrain", *sets,
                                "--set", f"model.weights={tmp_path / 'mine.safetensors'}",
                                "--set", f"pretrain.checkpoint={imported}"],
                               cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600, check=False)
        assert again.returncode == 0, again.stderr[-3000:]
        _, _, imported_meta = load_checkpoint(imported)
        assert imported_meta["steps"] == 0 and len(imported_meta["weights_sha256"]) == 64
        assert imported_meta["test_accuracy"] == pytest.approx(meta["test_accuracy"])
    finally:
        _pip("uninstall", "-y", "netadapt-example-models")


def test_a_checkpoint_made_for_other_settings_is_refused(tiny_params, pretrained):
    """The settings say width 2.0, the pretrained file holds width 1.0: adapting would silently
    adapt another network, so every stage that reads it refuses, naming the difference and the fix."""
    from netadapt_core.adapt import check_pretrained, make_context
    from netadapt_core.config import with_overrides

    _, arch, meta = load_checkpoint(pretrained)
    check_pretrained(tiny_params, arch, meta)  # the settings it was made with pass
    wider = with_overrides(tiny_params, ["model.kwargs.width_mult=2.0"])
    with pytest.raises(ConfigError, match=r"other settings.*width_mult 1.0 vs 2.0.*run `netadapt pretrain`"):
        make_context(wider)
    resized = with_overrides(tiny_params, ["data.image_size=32"])
    with pytest.raises(ConfigError, match=r"input shape \[1, 28, 28\] vs \[1, 32, 32\]"):
        check_pretrained(resized, arch, meta)
