"""The run's context (settings, data, the LUT-backed estimator and its platform) and measuring one
network: direct latency (alone, or interleaved with the start), LUT latency, MACs, parameters."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from torch import nn

from ..checkpoint import (
    Architecture,
    load_checkpoint,
)
from ..config import ConfigError, Params
from ..data import DataBundle, describe_data, load_data
from ..lut import LatencyEstimator, LatencyLUT, network_fingerprint
from ..models.sources import factory_defaults, split_name
from ..platforms import make_platform
from ..resources import count_macs_params

if TYPE_CHECKING:
    from .records import NetworkPoint


@dataclass
class Context:
    """What every step needs: settings, data, platform, LUT-backed estimator."""

    params: Params
    data: DataBundle
    estimator: LatencyEstimator
    log: Callable[[str], None] = print

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.data.input_shape

    @property
    def platform(self):
        return self.estimator.platform


def open_estimator(params: Params, arch: Architecture, input_shape: tuple[int, ...]) -> LatencyEstimator:
    """Load the LUT, check it was measured on this platform for this network, and attach the
    overlay of entries measured on demand (``lut.on_demand_path``)."""
    platform = make_platform(params.platform)
    lut = LatencyLUT.load(params.lut.path)
    lut.check_compatible(platform.metadata(), network_fingerprint(arch, input_shape), params.lut.path)
    estimator = LatencyEstimator(lut, platform, input_shape, params.lut.measure_missing)
    estimator.attach(params.lut.on_demand_path)
    return estimator


def architecture(params: Params) -> tuple[Architecture, tuple[int, int, int]]:
    """The starting network's architecture and input shape (C, H, W), from the settings alone."""
    in_channels, size, num_classes = describe_data(params.data)
    m = params.model
    kwargs: dict[str, Any] = {"num_classes": num_classes, "in_channels": in_channels}
    if split_name(m.name)[0] == "builtin":
        kwargs.update(factory_defaults(m.name))  # the record names every argument
    else:
        kwargs["image_size"] = size
    kwargs.update(m.kwargs)
    return Architecture(m.name, kwargs), (in_channels, size, size)


def check_pretrained(params: Params, arch: Architecture, meta: dict[str, Any]) -> None:
    """Refuse a pretrained checkpoint made for other settings (model, its arguments, the data's
    classes, channels or size): adapting it would silently adapt another network."""
    expected, shape = architecture(params)
    differ = {k for k in set(arch.kwargs) | set(expected.kwargs) if arch.kwargs.get(k) != expected.kwargs.get(k)}
    problems = ([f"model {arch.name!r} vs {expected.name!r}"] if arch.name != expected.name else []) + [
        f"{k} {arch.kwargs.get(k)!r} vs {expected.kwargs.get(k)!r}" for k in sorted(differ)]
    if list(meta.get("input_shape", shape)) != list(shape):
        problems.append(f"input shape {meta['input_shape']} vs {list(shape)}")
    if problems:
        raise ConfigError(
            f"{params.pretrain.checkpoint} was made for other settings than these ({'; '.join(problems)}; "
            "checkpoint vs settings). Fix: run `netadapt pretrain` (or `dvc repro`) to make it for these "
            "settings, or restore the settings it was made with"
        )


def make_context(params: Params, log: Callable[[str], None] = print) -> Context:
    data = load_data(params.data)
    _, arch, meta = load_checkpoint(params.pretrain.checkpoint)
    check_pretrained(params, arch, meta)
    return Context(params, data, open_estimator(params, arch, data.input_shape), log)


def measure_point(ctx: Context, model: nn.Module, reference: NetworkPoint | None = None,
                  passes: int = 1) -> dict[str, float]:
    """Direct and LUT latency, MACs and parameters of one network (alone: the fastest of ``passes``
    measurements, as noise only adds time; against ``reference``: the median of ``passes`` sessions).

    With ``reference`` (a baseline record), the network is timed interleaved with the baseline
    network and ``measured_ms`` is the measured ratio times the baseline's recorded latency: drift
    in machine speed between the two measurements cancels, so a budget set as a share of the start
    is checked reliably.
    """
    if reference is None:
        measured = {"measured_ms": min(ctx.platform.measure_network(model, ctx.input_shape).median_ms
                                       for _ in range(passes))}
    else:
        baseline, _, _ = load_checkpoint(reference.checkpoint)
        sessions = sorted((own.median_ms / ref.median_ms, own.median_ms, ref.median_ms) for own, ref in
                          (ctx.platform.measure_networks([model, baseline], ctx.input_shape) for _ in range(passes)))
        ratio, own_ms, ref_ms = sessions[len(sessions) // 2]  # the median session: one disturbed is outvoted
        measured = {
            "measured_ms": ratio * reference.measured_ms,
            "measured_raw_ms": own_ms,
            "reference_raw_ms": ref_ms,
        }
    return {**measured, "lut_ms": ctx.estimator.estimate_ms(model), **count_macs_params(model, ctx.input_shape)}

