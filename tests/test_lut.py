import json
from pathlib import Path

import pytest
import torch
from torch import nn

from netadapt_core.adapt import architecture
from netadapt_core.checkpoint import Architecture
from netadapt_core.config import with_overrides
from netadapt_core.lut import (
    LatencyEstimator,
    LatencyLUT,
    GroupGrid,
    LutError,
    channel_grid,
    layer_uses,
    network_fingerprint,
    uniform_variant,
)
from netadapt_core.models import build_model
from netadapt_core.platforms import Measurement, make_platform, time_callable
from netadapt_core.stages import run_lut_check


def test_channel_grid():
    assert channel_grid(32, 8, 4) == [32, 24, 16, 8]
    assert channel_grid(30, 8, 8) == [30, 22, 14]
    assert channel_grid(8, 8, 8) == [8]
    g = GroupGrid.of(32, 8, 0.125)
    assert (g.min, g.widths()) == (4, [32, 24, 16, 8])
    assert GroupGrid.model_validate(g.model_dump()) == g


def test_identical_layers_share_entries():
    model = build_model("mobilenet_v1", num_classes=10, in_channels=1, width_mult=0.25, first_stride=1)
    uses = layer_uses(model, (1, 28, 28), batch_size=1)
    signatures = [u.signature for u in uses]
    # MobileNetV1 repeats five identical 512-channel blocks: 6 layers each, measured once
    assert len(set(signatures)) <= len(signatures) - 4 * 6
    blocks = [u.signature for u in uses if u.name.startswith(("features.7.", "features.8."))]
    assert blocks[:6] == blocks[6:]
    assert all(s.endswith(":float32") and "@1x" in s for s in signatures)


def test_signature_reflects_batch_and_channels():
    model = build_model("tiny_cnn", num_classes=10, in_channels=1)
    by_name = {u.name: u.signature for u in layer_uses(model, (1, 28, 28), batch_size=4)}
    assert by_name["head.0"].startswith("Conv2d(16, 32, kernel_size=(1, 1)") and "@4x16x14x14" in by_name["head.0"]


class CountingPlatform:
    """A platform whose 'latency' is a layer's MAC count: checks the LUT arithmetic exactly."""

    name = "counting"

    def __init__(self):
        self.cfg = type("Cfg", (), {"batch_size": 1})()
        self.dtype = torch.float32
        self.calls = 0

    def metadata(self):
        return {"platform": "counting"}

    def environment(self):
        return {}

    def measure_layer(self, module, input_shape):
        self.calls += 1
        weight = getattr(module, "weight", None)
        ms = 0.0 if weight is None else float(weight.numel() * input_shape[-1] * input_shape[-2]) / 1e6
        return Measurement(ms, 0.0, 1)

    def measure_network(self, model, input_shape):
        uses = layer_uses(model, tuple(input_shape), 1)
        return Measurement(sum(self.measure_layer(u.module, u.input_shape).median_ms for u in uses) + 1.0, 0, 1)

    def measure_networks(self, models, input_shape, repeats=None):
        return [self.measure_network(m, input_shape) for m in models]


def test_lut_build_lookup_and_rest_term(tiny_params):
    from netadapt_core.lut import build_lut

    arch, shape = architecture(tiny_params)
    model = arch.build().eval()
    platform = CountingPlatform()
    lut = build_lut(model, arch, shape, platform, tiny_params.lut, log=lambda _: None)
    # calibration fits network = scale * layers + rest: exactly 1 x layers + the extra millisecond,
    # on the start and random non-uniform networks (not the uniform ones lut --check tests on)
    assert lut.scale == pytest.approx(1.0) and lut.rest_ms == pytest.approx(1.0)
    fit = lut.stats["calibration"]
    assert [f["network"] for f in fit] == ["start"] + [f"random_{i}" for i in range(1, len(fit))]
    assert len({round(f["layer_sum_ms"], 9) for f in fit}) >= 3  # distinct networks
    assert lut.stats["entries"] == len(lut.entries)
    assert lut.stats["non_monotonic_first"] == 0  # MAC counts never fall as channels grow
    estimator = LatencyEstimator(lut, platform, shape, measure_missing=True)
    smaller = uniform_variant(model, shape, lut.grid, 0.5)  # a combination the star grid lacks
    assert estimator.estimate_ms(smaller) == pytest.approx(platform.measure_network(smaller, shape).median_ms)
    assert estimator.estimate_ms(smaller) < estimator.estimate_ms(model)


class SteepPlatform(CountingPlatform):
    """Networks take 2.5 x their layers: a slope no CPU shows, which the fit must not trust."""

    def measure_network(self, model, input_shape):
        return Measurement(2.5 * (super().measure_network(model, input_shape).median_ms - 1.0), 0, 1)


def test_an_implausible_calibration_falls_back_to_a_plain_ratio(tiny_params):
    """A slope outside [0.5, 2] (or a large negative fixed cost) is noise: the estimate becomes a plain
    ratio of the layer sum, so no network, however small, gets a zero or negative estimate."""
    from netadapt_core.lut import build_lut

    arch, shape = architecture(tiny_params)
    model = arch.build().eval()
    platform = SteepPlatform()
    logs = []
    lut = build_lut(model, arch, shape, platform, tiny_params.lut, log=logs.append)
    assert lut.rest_ms == 0.0 and lut.scale == pytest.approx(2.5)
    assert any("implausible" in line for line in logs)
    fit = lut.stats["calibration"]
    # the variants span small networks too (each cuts more layers than the last)
    assert min(f["layer_sum_ms"] for f in fit) < 0.7 * fit[0]["layer_sum_ms"]
    smallest = uniform_variant(model, shape, lut.grid, 0.0)
    assert 0 < LatencyEstimator(lut, platform, shape, measure_missing=True).estimate_ms(smallest)


def test_missing_entries_measured_on_demand_or_refused(tiny_params):
    arch, shape = architecture(tiny_params)
    model = arch.build()
    platform = CountingPlatform()
    lut = LatencyLUT(platform.metadata(), network_fingerprint(arch, shape), {}, rest_ms=0.0)
    with pytest.raises(LutError, match="lacks"):
        LatencyEstimator(lut, platform, shape, measure_missing=False).estimate_ms(model)
    estimator = LatencyEstimator(lut, platform, shape, measure_missing=True)
    estimator.estimate_ms(model)
    assert estimator.measured_on_demand == len(lut.entries) > 0
    calls = platform.calls
    estimator.estimate_ms(model)
    assert platform.calls == calls  # cached


def test_lut_from_other_platform_or_network_or_corrupt_is_refused(tiny_params, tiny_lut, tmp_path):
    lut = LatencyLUT.load(tiny_lut)
    arch, shape = architecture(tiny_params)
    platform = make_platform(tiny_params.platform)
    lut.check_compatible(platform.metadata(), network_fingerprint(arch, shape))
    other_platform = make_platform(with_overrides(tiny_params, ["platform.threads=2"]).platform)
    with pytest.raises(LutError, match="another platform.*threads"):
        lut.check_compatible(other_platform.metadata(), network_fingerprint(arch, shape))
    other_arch = Architecture("mobilenet_v1", arch.kwargs)
    with pytest.raises(LutError, match="built for network"):
        lut.check_compatible(platform.metadata(), network_fingerprint(other_arch, shape))
    corrupt = tmp_path / "lut.json"
    corrupt.write_text(tiny_lut.read_text()[:100])
    with pytest.raises(LutError, match="corrupt"):
        LatencyLUT.load(corrupt)
    raw = json.loads(tiny_lut.read_text())
    next(iter(raw["entries"].values()))["ms"] = "fast"
    corrupt.write_text(json.dumps(raw))
    with pytest.raises(LutError, match="corrupt"):
        LatencyLUT.load(corrupt)
    raw = json.loads(tiny_lut.read_text())
    next(iter(raw["grid"].values()))["step"] = 0  # a grid entry is a GroupGrid: checked on load
    corrupt.write_text(json.dumps(raw))
    with pytest.raises(LutError, match="corrupt.*step"):
        LatencyLUT.load(corrupt)


def test_real_lut_is_measured_and_checked(tiny_params, tiny_lut):
    lut = LatencyLUT.load(tiny_lut)
    assert lut.platform["platform"] == "torch-cpu" and lut.platform["batch_size"] == 8
    assert 20 < lut.stats["entries"] <= len(lut.entries)  # adaptations add entries on demand
    assert all(entry["ms"] > 0 for entry in lut.entries.values())
    assert set(lut.grid) == {"stem.0", "down.0", "head.0"}
    summary = run_lut_check(tiny_params, log=lambda _: None)
    assert summary["networks"] >= 2
    rows = open(tiny_params.report.lut_check).read().splitlines()
    assert rows[0] == "network,lut_ms,measured_ms,rel_error,measured_raw_ms,start_raw_ms"
    assert len(rows) == summary["networks"] + 1
    # measured = raw ratio to the start network (timed alongside) x the start's latency at build time
    first = dict(zip(rows[0].split(","), rows[1].split(",")))
    ratio = float(first["measured_raw_ms"]) / float(first["start_raw_ms"])
    assert float(first["measured_ms"]) == pytest.approx(ratio * lut.stats["network_ms"], rel=1e-3, abs=1e-4)
    assert summary["start_ms_at_build"] == lut.stats["network_ms"] and summary["start_ms_now"] > 0
    assert Path(summary["plot"]).is_file() and Path(summary["plot"]).name == "lut_check.png"


def test_timer_takes_the_median():
    durations = iter([0.0] * 100)
    measurement = time_callable(lambda: next(durations, None), warmup=2, repeats=5, min_sample_ms=0.01)
    assert measurement.samples == 5 and measurement.median_ms >= 0


def test_rank_correlation():
    from netadapt_core.stages import rank_correlation

    assert rank_correlation([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert rank_correlation([1, 2, 3, 4], [40, 30, 20, 10]) == pytest.approx(-1.0)
    assert rank_correlation([1, 2, 3, 4], [10, 30, 20, 40]) == pytest.approx(0.8)


@pytest.mark.parametrize("name, kwargs, shape", [
    ("mobilenet_v1", {"width_mult": 0.5}, (1, 28, 28)),
    ("mobilenet_v2", {"width_mult": 0.5}, (1, 28, 28)),
    ("torchvision:resnet18", {}, (1, 32, 32)),
    ("tiny_cnn", {}, (1, 28, 28)),
])
def test_width_template_gives_the_signatures_of_the_built_network(name, kwargs, shape):
    """Planning reads a group's latency at any width from a template made of two networks (the
    parent and one probe width); for every group and several widths the template's signatures are
    exactly those of the network pruned to that width, so the LUT sums agree."""
    import copy

    from netadapt_core.lut import WidthTemplate, layer_uses
    from netadapt_core.surgery import prunable_groups, prune_group

    torch.manual_seed(0)
    model = build_model(name, num_classes=10, in_channels=1, **kwargs).eval()

    def signatures(net):
        return [u.signature for u in layer_uses(net, shape, 1)]

    def pruned(group, width):
        net = copy.deepcopy(model)
        prune_group(net, group.id, group.channels - width, shape)
        return net

    parent = signatures(model)
    groups = prunable_groups(model, shape)
    assert groups
    for group in groups:
        widths = sorted({max(1, group.channels * k // 8) for k in (1, 3, 5, 7)} - {group.channels})
        template = WidthTemplate.make(parent, signatures(pruned(group, widths[0])), group.channels, widths[0])
        assert template is not None, group.id
        for width in widths[1:]:
            assert template.signatures(width) == signatures(pruned(group, width)), (group.id, width)


def test_width_template_refuses_what_it_cannot_read():
    """A number that changes but is no multiple of the width, or a layer list that changes length,
    makes no template (the planner then builds each network)."""
    from netadapt_core.lut import WidthTemplate

    parent = ["Conv2d(1, 64, kernel_size=(3, 3))@1x1x28x28", "Linear(in_features=64, out_features=10)@1x64"]
    probe = ["Conv2d(1, 56, kernel_size=(3, 3))@1x1x28x28", "Linear(in_features=56, out_features=10)@1x56"]
    template = WidthTemplate.make(parent, probe, 64, 56)
    assert template.signatures(32) == ["Conv2d(1, 32, kernel_size=(3, 3))@1x1x28x28",
                                       "Linear(in_features=32, out_features=10)@1x32"]
    assert WidthTemplate.make(parent, probe[:1], 64, 56) is None
    odd = ["Conv2d(1, 56, kernel_size=(3, 3))@1x1x28x28", "Linear(in_features=17, out_features=10)@1x56"]
    assert WidthTemplate.make(parent, odd, 64, 56) is None


def test_lut_check_times_again_a_session_whose_start_was_disturbed(tiny_params, tiny_lut, monkeypatch, tmp_path):
    """One check session reads the start 50% slow (a busy moment): its networks are timed again in a
    fresh session, and the CSV holds the second reading, not a 33% 'LUT error'."""
    import csv
    from dataclasses import replace

    from netadapt_core.config import with_overrides
    from netadapt_core.stages import lut_check

    real = lut_check.measure_relative
    calls = []

    def disturbed(platform, models, reference, shape, *args, **kwargs):
        pairs = real(platform, models, reference, shape, *args, **kwargs)
        calls.append(len(models))
        if len(calls) == 1:  # the first session: the last network's reference ran slow
            own, ref = pairs[-1]
            pairs[-1] = (own, replace(ref, median_ms=ref.median_ms * 1.5))
        return pairs

    monkeypatch.setattr(lut_check, "measure_relative", disturbed)
    params = with_overrides(tiny_params, [f"report.lut_check={tmp_path}/check.csv", f"report.plots_dir={tmp_path}/plots"])
    lines = []
    summary = run_lut_check(params, log=lines.append)
    assert calls == [summary["networks"], 1]
    assert any("timing them again" in line for line in lines)
    rows = list(csv.DictReader(open(tmp_path / "check.csv")))
    starts = [float(r["start_raw_ms"]) for r in rows]
    assert max(starts) < 1.3 * min(starts)


def test_two_writers_of_one_overlay_keep_each_others_entries(tiny_lut, tmp_path):
    """Two adaptations (or an adaptation and `lut --check`) share lut.on_demand_path: the second to
    save must not drop what the first measured."""
    overlay = tmp_path / "on_demand.json"
    platform = CountingPlatform()
    a, b = (LatencyEstimator(LatencyLUT.load(tiny_lut), platform, (1, 8, 8), True) for _ in range(2))
    a.attach(overlay)
    b.attach(overlay)  # both attached before either saved
    a.fill(layer_uses(nn.Sequential(nn.Conv2d(1, 5, 3)), (1, 8, 8), 1))
    b.fill(layer_uses(nn.Sequential(nn.Conv2d(1, 7, 3)), (1, 8, 8), 1))
    a.save()
    b.save()
    reader = LatencyEstimator(LatencyLUT.load(tiny_lut), platform, (1, 8, 8), False)
    reader.attach(overlay)
    assert set(reader.added) == set(a.added) | set(b.added) and len(reader.added) == 2
    overlay.write_text("{broken")  # damaged meanwhile: a writer still saves what it measured
    a.save()
    reader = LatencyEstimator(LatencyLUT.load(tiny_lut), platform, (1, 8, 8), False)
    reader.attach(overlay)
    assert set(reader.added) == set(a.added)
