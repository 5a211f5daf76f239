"""The table and its use: ``LatencyLUT`` (entries, grid, calibration; load, save, compatibility
with a platform and network) and ``LatencyEstimator`` (a network's estimate; entries measured on
demand into an overlay file)."""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from typing import Any

from torch import nn

from ..checkpoint import atomic_write_json
from ..errors import NetAdaptError
from .signatures import ChannelGrid, GroupGrid, LayerUse, layer_uses

LOG = logging.getLogger("netadapt")
LUT_FORMAT = "netadapt-lut/1"


OVERLAY_FORMAT = "netadapt-lut-on-demand/1"


class LutError(NetAdaptError, RuntimeError):
    """The LUT is corrupt, from another platform or network, or lacks entries."""


class LatencyLUT:
    """The table itself: platform metadata, network fingerprint, grid, entries, rest term."""

    def __init__(
        self,
        platform: dict[str, Any],
        network: dict[str, Any],
        grid: dict[str, GroupGrid] | dict[str, dict[str, int]],
        entries: dict[str, dict[str, Any]] | None = None,
        rest_ms: float | None = None,
        scale: float = 1.0,
        environment: dict[str, Any] | None = None,
        stats: dict[str, Any] | None = None,
    ) -> None:
        self.platform = platform
        self.network = network
        self.grid: ChannelGrid = {gid: GroupGrid.model_validate(g) for gid, g in grid.items()}
        self.entries = entries or {}
        self.rest_ms = rest_ms
        self.scale = scale
        self.environment = environment or {}
        self.stats = stats or {}

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": LUT_FORMAT,
            "platform": self.platform,
            "network": self.network,
            "grid": {gid: g.model_dump() for gid, g in self.grid.items()},
            "rest_ms": self.rest_ms,
            "scale": self.scale,
            "environment": self.environment,
            "stats": self.stats,
            "entries": self.entries,
        }

    def save(self, path: str | Path) -> None:
        atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> LatencyLUT:
        path = Path(path)
        if not path.is_file():
            raise LutError(f"LUT {path} does not exist; build it with `netadapt lut`")
        try:
            raw = json.loads(path.read_text())
            if raw.get("format") != LUT_FORMAT:
                raise ValueError(f"format is {raw.get('format')!r}, expected {LUT_FORMAT!r}")
            for entry in raw["entries"].values():
                if not (isinstance(entry["ms"], (int, float)) and entry["ms"] >= 0):
                    raise ValueError(f"bad entry {entry!r}")
            return cls(
                raw["platform"], raw["network"], raw["grid"], raw["entries"], raw["rest_ms"],
                raw.get("scale", 1.0), raw.get("environment"), raw.get("stats"),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise LutError(
                f"LUT {path} is corrupt ({type(exc).__name__}: {exc}). Fix: delete it and rebuild with "
                "`netadapt lut`, or restore it with `dvc checkout`."
            ) from None

    def check_compatible(self, platform_meta: dict[str, Any], network: dict[str, Any], where: str = "") -> None:
        """Refuse a table measured on another platform or for another network."""
        if self.platform != platform_meta:
            diff = {
                k: (self.platform.get(k), platform_meta.get(k))
                for k in sorted(set(self.platform) | set(platform_meta))
                if self.platform.get(k) != platform_meta.get(k)
            }
            raise LutError(
                f"LUT {where} was measured on another platform (key: LUT value, this run): {diff}. "
                "Fix: rebuild it with `netadapt lut`, or set lut.path to a table for this platform."
            )
        if self.network != network:
            raise LutError(
                f"LUT {where} was built for network {self.network}, but this run adapts {network}. "
                "Fix: rebuild it with `netadapt lut` for this model, or set lut.path accordingly."
            )

    def record(self, sig: str, measurement) -> None:
        """Store a measurement; repeated rounds keep the lowest median (CPU noise only adds time)."""
        new = measurement.to_dict()
        old = self.entries.get(sig)
        if old is not None and old["ms"] <= new["ms"]:
            old["rounds"] = old.get("rounds", 1) + 1
            return
        new["rounds"] = (old or {}).get("rounds", 0) + 1
        self.entries[sig] = new

    def layer_sum_ms(self, uses: list[LayerUse]) -> float:
        missing = [u.signature for u in uses if u.signature not in self.entries]
        if missing:
            raise LutError(
                f"LUT lacks {len(missing)} layer signature(s), e.g. {missing[0]}. Fix: enable "
                "lut.measure_missing, or rebuild the LUT with `netadapt lut` for this network."
            )
        return sum(self.entries[u.signature]["ms"] for u in uses)


class LatencyEstimator:
    """Estimates a network's latency from the LUT, measuring missing signatures when allowed.

    Entries measured on demand go to an *overlay* file (``attach``), never into the LUT file itself,
    so the LUT stays the LUT stage's output (DVC) while an adaptation keeps what it measured.
    """

    def __init__(self, lut: LatencyLUT, platform, input_shape: tuple[int, ...], measure_missing: bool) -> None:
        self.lut = lut
        self.platform = platform
        self.input_shape = tuple(input_shape)
        self.measure_missing = measure_missing
        self.overlay: Path | None = None
        self.added: dict[str, dict[str, Any]] = {}

    @property
    def measured_on_demand(self) -> int:
        return len(self.added)

    def attach(self, overlay: str | Path) -> None:
        """Read entries measured on demand earlier from ``overlay``; ``save`` writes there.

        An overlay for another platform or network (the LUT was rebuilt) is ignored and replaced.
        """
        self.overlay = Path(overlay)
        for sig, entry in self._overlay_entries().items():
            self.lut.entries.setdefault(sig, entry)
            self.added.setdefault(sig, entry)

    def _overlay_entries(self) -> dict[str, dict[str, Any]]:
        """The overlay file's entries for this LUT's platform and network ({} when it has none)."""
        assert self.overlay is not None
        if not self.overlay.is_file():
            return {}
        try:
            raw = json.loads(self.overlay.read_text())
            if raw.get("format") != OVERLAY_FORMAT:
                raise ValueError(f"format is {raw.get('format')!r}")
            entries = raw["entries"]
            if not isinstance(entries, dict):
                raise TypeError("entries must be a mapping")
        except (ValueError, KeyError, TypeError) as exc:
            raise LutError(f"{self.overlay} is corrupt ({exc}); delete it (its entries are re-measured)") from None
        if raw.get("platform") != self.lut.platform or raw.get("network") != self.lut.network:
            return {}
        return entries

    def uses(self, model: nn.Module) -> list[LayerUse]:
        return layer_uses(model, self.input_shape, self.platform.cfg.batch_size, self.platform.dtype)

    def fill(self, uses: list[LayerUse]) -> int:
        """Measure the signatures of ``uses`` the table lacks; returns how many were measured."""
        todo = {u.signature: u for u in uses if u.signature not in self.lut.entries}
        if todo and not self.measure_missing:
            return 0
        for sig, use in todo.items():
            self.lut.record(sig, self.platform.measure_layer(copy.deepcopy(use.module), use.input_shape))
            self.added[sig] = self.lut.entries[sig]
        return len(todo)

    def layer_sum_ms(self, model: nn.Module) -> float:
        """The layers' share of the estimate: ``scale`` times the sum of their entries."""
        uses = self.uses(model)
        self.fill(uses)
        return self.lut.scale * self.lut.layer_sum_ms(uses)

    def signature_sum_ms(self, signatures: list[str]) -> float | None:
        """``layer_sum_ms`` of a network given by its layer signatures; None when the table lacks
        one (measuring it needs the layer: build the network instead)."""
        entries = self.lut.entries
        if any(sig not in entries for sig in signatures):
            return None
        return self.lut.scale * sum(entries[sig]["ms"] for sig in signatures)

    def estimate_ms(self, model: nn.Module) -> float:
        if self.lut.rest_ms is None:
            raise LutError("LUT has no rest term; rebuild it with `netadapt lut`")
        return self.layer_sum_ms(model) + self.lut.rest_ms

    def save(self) -> None:
        """Write the on-demand entries to the attached overlay (nothing when none is attached).

        Another process may share the overlay (two adaptations, or ``lut --check`` beside one): under
        a lock on ``<overlay>.lock`` the file is read again and its entries kept beside ours, so no
        writer drops what another measured."""
        if self.overlay is None:
            return
        import fcntl

        self.overlay.parent.mkdir(parents=True, exist_ok=True)
        with open(self.overlay.with_name(self.overlay.name + ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                entries = {**self._overlay_entries(), **self.added}
            except LutError as exc:  # damaged since it was attached: ours replace it
                LOG.warning("%s; writing this run's %d entries over it", exc, len(self.added))
                entries = dict(self.added)
            atomic_write_json(self.overlay, {"format": OVERLAY_FORMAT, "platform": self.lut.platform,
                                             "network": self.lut.network, "entries": entries})

