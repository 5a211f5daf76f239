"""Target platforms, measured for real on the tiny CNN: torch-cpu, onnxruntime-cpu, the command
platform through the stand-in device script, and torch-cuda where a GPU is present."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from torch import nn

from netadapt_core.checkpoint import Architecture
from netadapt_core.config import (
    MOVED_PLATFORM_KEYS,
    ConfigError,
    PlatformConfig,
    PlatformSettings,
    load_params,
    with_overrides,
)
from netadapt_core.lut import LatencyEstimator, LatencyLUT, build_lut, network_fingerprint, uniform_variant
from netadapt_core.models import build_model
from netadapt_core.platforms import (
    PLATFORMS,
    OnnxRuntimeSettings,
    Platform,
    PlatformError,
    make_platform,
    parse_latency,
)

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "command_platform.yaml"
SHAPE = (1, 28, 28)
FAST = ["platform.warmup=2", "platform.repeats=3", "platform.min_sample_ms=0.2", "platform.network_repeats=5"]


def platform_cfg(*overrides: str) -> PlatformConfig:
    return load_params(None, [*FAST, *overrides]).platform


def stand_in_cfg(*overrides: str) -> PlatformConfig:
    """The example file's stand-in command, with the script's absolute path (tests run anywhere)."""
    example = load_params(EXAMPLE).platform
    argv = [str(ROOT / a) if a.endswith("stand_in_device.py") else a for a in example.options.argv]
    return platform_cfg("platform.name=command", f"platform.command.argv={argv}",
                        f"platform.command.device_name={example.options.device_name}", *overrides)


@pytest.fixture(scope="module")
def tiny() -> nn.Module:
    """The tiny CNN at 4x width (32-64-128 channels, ~0.1-1 ms on a CPU): small enough to build a LUT in
    seconds, large enough that a loaded CI machine's noise does not swamp a layer or reorder widths."""
    return build_model("tiny_cnn", num_classes=10, in_channels=1, width_mult=4.0).eval()


@pytest.mark.parametrize("name", ["torch-cpu", "onnxruntime-cpu", "executorch", "command", "command-pte"])
def test_platform_measures_a_layer_and_a_network(name, tiny):
    """(command-pte: the stand-in device gets ExecuTorch programs, as a phone would over adb.)"""
    if name.startswith("command"):
        cfg = stand_in_cfg(*(["platform.command.format=pte"] if name == "command-pte" else []))
    else:
        cfg = platform_cfg(f"platform.name={name}")
    platform = make_platform(cfg)
    layer = platform.measure_layer(tiny.down[0], (1, 32, 28, 28))
    network = platform.measure_network(tiny, SHAPE)
    assert layer.median_ms > 0 and network.median_ms > 0
    assert network.median_ms > layer.median_ms
    meta = platform.metadata()
    assert meta["platform"] == name.removesuffix("-pte") and meta["batch_size"] == cfg.batch_size
    if name == "command-pte":  # a table of ExecuTorch programs is not one of ONNX models
        assert meta["format"] == "pte" and meta["backend"] == "xnnpack" and "onnx_opset" not in meta
        assert meta != make_platform(stand_in_cfg()).metadata()
    assert set(platform.environment()) >= {"hostname", "method"}


def test_onnxruntime_times_a_bigger_layer_longer():
    platform = make_platform(platform_cfg("platform.name=onnxruntime-cpu", "platform.repeats=5"))
    small = platform.measure_layer(nn.Conv2d(4, 4, 1, bias=False), (1, 4, 8, 8))
    big = platform.measure_layer(nn.Conv2d(64, 128, 3, padding=1, bias=False), (1, 64, 28, 28))
    assert big.median_ms > 10 * small.median_ms


def test_fused_layers_cost_little_on_onnxruntime():
    """BatchNorm folds into the conv before it: timed alone it would cost a whole graph run."""
    platform = make_platform(platform_cfg("platform.name=onnxruntime-cpu", "platform.repeats=5"))
    shape = (1, 32, 28, 28)
    conv = platform.measure_layer(nn.Conv2d(32, 32, 3, padding=1, bias=False), shape)
    bn = platform.measure_layer(nn.BatchNorm2d(32), shape)
    assert 0 <= bn.median_ms < 0.2 * conv.median_ms


def test_command_platform_end_to_end_through_the_stand_in(tiny):
    cfg = stand_in_cfg()
    platform = make_platform(cfg)
    meta = platform.metadata()
    assert meta["command"] == cfg.options.argv and meta["device_name"].startswith("stand-in")
    assert platform.measure_network(tiny, SHAPE).samples == cfg.network_repeats  # the script's own count
    argv = platform.argv(Path("/tmp/m.onnx"), (8, 1, 28, 28), 7)
    assert argv[2:6] == ["/tmp/m.onnx", "--warmup", "2", "--repeats"] and argv[6] == "7"


def test_example_file_is_valid_and_runnable_from_the_repository(monkeypatch):
    monkeypatch.chdir(ROOT)
    cfg = load_params(EXAMPLE, FAST).platform
    assert cfg.name == "command" and "{model}" in cfg.options.argv
    platform = make_platform(cfg)
    # a layer large enough that its cost clearly exceeds the graph boundary subtracted from it (a
    # 1->8 conv came out at the 0 floor once, when the boundary's separate runs were noisy)
    assert platform.measure_layer(nn.Conv2d(32, 64, 3, padding=1), (1, 32, 28, 28)).median_ms > 0


@pytest.mark.parametrize(
    ("code", "timeout", "message"),
    [
        ("import sys; print('boom', file=sys.stderr); sys.exit(3)", 60, "exit status 3.*boom"),
        ("print('device busy')", 60, "printed no latency.*device busy"),
        ("print('latency_ms: -1')", 60, "printed no latency"),
        ("import time; time.sleep(60)", 0.5, "timed out after 0.5 s.*platform.command.timeout_s"),
    ],
    ids=["fails", "no-latency", "bad-latency", "timeout"],
)
def test_command_platform_errors(code, timeout, message):
    cfg = platform_cfg("platform.name=command", f'platform.command.argv=["{{python}}", "-c", "{code}"]',
                       f"platform.command.timeout_s={timeout}")
    with pytest.raises(PlatformError, match=message):
        make_platform(cfg).measure_layer(nn.Conv2d(1, 4, 3), (1, 1, 8, 8))


def test_command_that_cannot_start_names_it(tmp_path):
    """Refused when the platform is made, before any export or measurement."""
    cfg = platform_cfg("platform.name=command", "platform.command.argv=[/nonexistent/bench, '{onnx}']")
    with pytest.raises(PlatformError, match="'/nonexistent/bench' does not exist"):
        make_platform(cfg)
    script = tmp_path / "bench.py"
    script.write_text("print('latency_ms: 1')\n")  # not executable
    cfg = platform_cfg("platform.name=command", f"platform.command.argv=[{script}, '{{onnx}}']")
    with pytest.raises(PlatformError, match="not executable.*chmod"):
        make_platform(cfg)


def test_latency_line_format():
    assert parse_latency("warming up\nlatency_ms: 1.5 iqr_ms: 0.25 samples: 9\n").median_ms == 1.5
    assert parse_latency("latency_ms: 2\nlatency_ms: 3e-1\n").median_ms == pytest.approx(0.3)
    assert parse_latency("latency: 2 ms") is None
    assert parse_latency("latency_ms: nan") is None


def test_platform_settings_are_validated():
    with pytest.raises(ConfigError) as err:
        load_params(None, ["platform.name=tpu"])
    for known in ("command", "executorch", "onnxruntime-cpu", "torch-cpu", "torch-cuda"):
        assert known in str(err.value)
    with pytest.raises(KeyError, match="known: command, executorch, onnxruntime-cpu, torch-cpu, torch-cuda"):
        PLATFORMS.get("tpu")
    with pytest.raises(ConfigError, match="needs platform.command.argv"):
        load_params(None, ["platform.name=command"])
    with pytest.raises(ConfigError, match=r"unknown placeholder.*'file'.*known: \{model\}, \{onnx\}, \{pte\}"):
        load_params(None, ["platform.command.argv=[bench, '{file}']"])
    with pytest.raises(ConfigError, match=r"uses \{onnx\} but platform.command.format is 'pte'.*Fix"):
        load_params(None, ["platform.command.argv=[bench, '{onnx}']", "platform.command.format=pte"])
    with pytest.raises(ConfigError, match=r"platform.torch-cuda.device: String should match"):
        load_params(None, ["platform.torch-cuda.device=gpu0"])


@pytest.mark.parametrize(("old", "new"), sorted(MOVED_PLATFORM_KEYS.items()))
def test_a_flat_platform_key_of_earlier_versions_names_its_new_place(old, new):
    with pytest.raises(ConfigError, match=re.escape(f"platform.{old} is now {new}")):
        load_params(None, [f"platform.{old}=[x]"])


def test_each_platform_validates_its_own_section_and_only_the_one_in_use_is_kept():
    params = load_params(None, ["platform.name=onnxruntime-cpu", "platform.onnxruntime-cpu.graph_optimization=basic",
                                "platform.torch-cuda.device=cuda:1"])
    assert isinstance(params.platform.options, OnnxRuntimeSettings)
    assert params.platform.options.graph_optimization == "basic"
    dumped = params.platform.model_dump()
    assert dumped["onnxruntime-cpu"] == {"graph_optimization": "basic", "onnx_opset": 17} and "torch-cuda" not in dumped
    # another platform's settings change neither the dump nor a hash of it
    assert params.section_hash("platform") == with_overrides(
        params, ["platform.torch-cuda.device=cuda:2"]).section_hash("platform")
    with pytest.raises(ConfigError, match="platform.onnxruntime-cpu.threads: unknown key"):
        load_params(None, ["platform.onnxruntime-cpu.threads=2"])
    with pytest.raises(ConfigError, match=r"platform.tpu: unknown key.*\(command, executorch, onnxruntime-cpu"):
        load_params(None, ["platform.tpu.device=x"])
    with pytest.raises(ConfigError, match="platform.torch-cuda must be a mapping"):
        load_params(None, ["platform.torch-cuda=7"])


def test_every_builtin_platform_satisfies_the_protocol():
    for name in PLATFORMS.names():
        cls = PLATFORMS.get(name)
        assert issubclass(cls.Settings, PlatformSettings), name
        for method in ("metadata", "environment", "measure_layer", "measure_networks"):
            assert callable(getattr(cls, method)), (name, method)
    assert isinstance(make_platform(PlatformConfig()), Platform)


def test_torch_cpu_metadata_ignores_other_platforms_settings():
    """A torch-cpu LUT is keyed by what torch-cpu timing depends on, not by ONNX/CUDA/command keys."""
    assert set(make_platform(PlatformConfig()).metadata()) == {
        "platform", "threads", "batch_size", "dtype", "cpu", "machine", "torch",
    }
    other = load_params(None, ["platform.onnxruntime-cpu.graph_optimization=basic",
                               "platform.command.device_name=x"]).platform
    assert make_platform(other).metadata() == make_platform(PlatformConfig()).metadata()


@pytest.mark.parametrize(("name", "step"), [("onnxruntime-cpu", 8), ("executorch", 32)])
def test_a_compiled_graph_platform_lut_works_with_the_estimator(name, step, tiny, tmp_path):
    """(ExecuTorch lowers each layer shape to a program, ~1 s each: a coarser grid keeps this short.)"""
    params = load_params(None, [
        *FAST, f"platform.name={name}", f"lut.channel_step={step}", "lut.min_channel_ratio=0.5",
        "lut.remeasure_rounds=0",
    ])
    platform = make_platform(params.platform)
    arch = Architecture("tiny_cnn", {"num_classes": 10, "in_channels": 1, "width_mult": 4.0})
    lut = build_lut(tiny, arch, SHAPE, platform, params.lut, log=lambda _: None)
    lut.save(tmp_path / "lut.json")
    lut.check_compatible(platform.metadata(), network_fingerprint(arch, SHAPE))
    assert lut.platform["platform"] == name and lut.entries
    estimator = LatencyEstimator(lut, platform, SHAPE, measure_missing=True)
    smaller = uniform_variant(tiny, SHAPE, lut.grid, 0.5)
    full_ms, small_ms = estimator.estimate_ms(tiny), estimator.estimate_ms(smaller)
    assert len(lut.stats["calibration"]) == 6  # the fit of scale and rest: the start and 5 random variants
    assert 0 < small_ms < full_ms
    measured = platform.measure_network(smaller, SHAPE).median_ms
    assert 0.5 < small_ms / measured < 2  # loose: a short network on a shared machine


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised where no GPU is present")
def test_torch_cuda_without_a_gpu_names_the_fix():
    with pytest.raises(PlatformError, match="needs a CUDA GPU.*Fix: .*torch-cpu"):
        make_platform(platform_cfg("platform.name=torch-cuda"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_torch_cuda_measures_a_layer_and_a_network(tiny):
    platform = make_platform(platform_cfg("platform.name=torch-cuda"))
    assert platform.measure_layer(tiny.down[0], (1, 32, 28, 28)).median_ms > 0
    assert platform.measure_network(tiny, SHAPE).median_ms > 0
    assert next(tiny.parameters()).device.type == "cpu"  # the caller's model stays where it was
    assert platform.metadata()["gpu"]


@pytest.mark.slow
def test_adaptation_on_onnxruntime_reaches_its_budget_as_measured_by_onnxruntime(tmp_path, data_root, run_flow):
    """Pretrain, ONNX Runtime LUT, adaptation stopped by ONNX Runtime's measurement; then an
    independent interleaved ORT measurement of the final network against the start agrees."""
    from conftest import tiny_overrides

    from flows.adapt import adapt_flow
    from netadapt_core.adapt import RunState
    from netadapt_core.checkpoint import load_checkpoint
    from netadapt_core.stages import run_lut, run_pretrain

    params = load_params(None, [
        *tiny_overrides(tmp_path, data_root), "model.kwargs.width_mult=4", "platform.name=onnxruntime-cpu",
        "platform.batch_size=1", "pretrain.epochs=1", "lut.channel_step=16", "lut.check_networks=[1.0]",
        "adapt.budget_ratio=0.7", "adapt.initial_reduction_ratio=0.1", "tracking.enabled=false",
    ])
    run_pretrain(params, log=lambda _: None)
    run_lut(params, log=lambda _: None)
    assert LatencyLUT.load(params.lut.path).platform["platform"] == "onnxruntime-cpu"
    summary = run_flow(adapt_flow, params)
    state = RunState.load(Path(params.adapt.run_dir) / "state.json")
    limit = 0.7 * state.baseline.measured_ms
    assert summary["status"] == "done" and state.iterations
    assert state.iterations[-1].measured_ms <= limit < state.baseline.measured_ms
    final, _, _ = load_checkpoint(state.iterations[-1].checkpoint)
    start, _, _ = load_checkpoint(state.baseline.checkpoint)
    platform = make_platform(params.platform)
    again = [platform.measure_networks([final.eval(), start.eval()], SHAPE) for _ in range(3)]
    ratio = sorted(f.median_ms / s.median_ms for f, s in again)[1]
    assert ratio <= 0.7 * 1.1, f"ONNX Runtime re-measured the adapted network at {ratio:.2f}x the start"


class _Recorder:
    """A platform that records each interleaved session and times a network by its parameter count."""

    def __init__(self) -> None:
        self.sessions: list[list[nn.Module]] = []

    def measure_networks(self, models, input_shape, repeats=None):
        from netadapt_core.platforms import Measurement

        self.sessions.append(list(models))
        return [Measurement(float(sum(p.numel() for p in m.parameters())), 0.0, repeats or 3) for m in models]


def test_measure_relative_times_batches_of_networks_with_one_reference_each():
    """Candidates are timed several at a time interleaved with one reference: 10 networks in
    batches of 4 are 3 sessions (4 + 4 + 2, each ending with the reference), results in order."""
    from netadapt_core.platforms import measure_relative

    platform = _Recorder()
    reference = nn.Linear(10, 10)
    models = [nn.Linear(10, k) for k in range(1, 11)]
    pairs = measure_relative(platform, models, reference, SHAPE, repeats=5, batch=4)
    assert [len(s) for s in platform.sessions] == [5, 5, 3]
    assert all(s[-1] is reference for s in platform.sessions)
    assert [own.median_ms for own, _ in pairs] == [11.0 * k for k in range(1, 11)]
    assert all(ref.median_ms == 110.0 and own.samples == 5 for own, ref in pairs)


def test_interleaved_batch_on_the_cpu_orders_networks_by_size(tiny):
    """On the real CPU: the tiny CNN at full, half and quarter width timed in one session with the
    full network as reference; each ratio is the one measured alone within noise, and ordered."""
    from netadapt_core.platforms import measure_relative

    platform = make_platform(platform_cfg())
    narrow = [uniform_variant(tiny, SHAPE, _grid(tiny, 0.125), r) for r in (0.5, 0.25)]
    pairs = measure_relative(platform, [tiny, *narrow], tiny, SHAPE, repeats=9)
    ratios = [own.median_ms / ref.median_ms for own, ref in pairs]
    assert ratios[0] == pytest.approx(1.0, rel=0.25)
    assert ratios[0] > ratios[1] > ratios[2]


def _grid(model, ratio):
    from netadapt_core.lut import GroupGrid
    from netadapt_core.surgery import prunable_groups

    return {g.id: GroupGrid.of(g.channels, 8, ratio) for g in prunable_groups(model, SHAPE)}


def test_executorch_lowers_a_network_once_however_often_it_is_timed(tiny, monkeypatch):
    """Lowering a network takes seconds; the reference network is timed in every session."""
    import copy

    import netadapt_core.platforms.executorch_cpu as et

    lowered = []
    real = et.lower_to_executorch
    monkeypatch.setattr(et, "lower_to_executorch", lambda *a, **k: lowered.append(1) or real(*a, **k))
    platform = make_platform(platform_cfg("platform.name=executorch"))
    platform.measure_networks([tiny, copy.deepcopy(tiny)], SHAPE, repeats=3)  # equal content: one program
    platform.measure_network(tiny, SHAPE)
    assert len(lowered) == 1
    changed = copy.deepcopy(tiny)
    with torch.no_grad():
        next(changed.parameters()).add_(1.0)
    platform.measure_network(changed, SHAPE)  # other weights: another program
    assert len(lowered) == 2
