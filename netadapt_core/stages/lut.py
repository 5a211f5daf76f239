"""The lut stage: measure every layer shape of the network and its pruned variants on the platform
into the lookup table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..adapt import (
    architecture,
)
from ..config import Params
from ..lut import (
    LatencyLUT,
    LutError,
    build_lut,
    network_fingerprint,
)
from ..platforms import make_platform
from .common import Log


def run_lut(params: Params, log: Log = print) -> dict[str, Any]:
    """Measure the latency LUT of the configured architecture on the configured platform.

    Entries of an existing compatible table are kept (an interrupted build resumes); an
    incompatible one is replaced.
    """
    arch, input_shape = architecture(params)
    platform = make_platform(params.platform)
    existing = None
    if Path(params.lut.path).is_file():
        try:
            existing = LatencyLUT.load(params.lut.path)
            existing.check_compatible(platform.metadata(), network_fingerprint(arch, input_shape))
        except LutError as exc:
            log(f"lut: not reusing {params.lut.path}: {exc}")
            existing = None
    log(f"lut: measuring {arch.name} {input_shape} on {platform.name} {platform.metadata()}")
    lut = build_lut(arch.build().eval(), arch, input_shape, platform, params.lut, existing, log)
    lut.save(params.lut.path)
    return lut.stats

