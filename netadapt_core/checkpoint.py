"""Checkpoints as (architecture, per-layer channel spec, state dict): no pickled modules.

A pruned network is rebuilt by building the registered architecture, resizing each layer to the
spec and loading the weights, so checkpoints load with ``torch.load(weights_only=True)``. Writes are
atomic (write a temporary file, then rename), so an interrupted save never leaves half a file.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import NetAdaptError
from .layers import apply_channel_spec, channel_spec
from .models import build_model

FORMAT = "netadapt-checkpoint/1"


class CheckpointError(NetAdaptError, RuntimeError):
    """A checkpoint is missing, corrupt, or not a netadapt checkpoint."""


@dataclass
class Architecture:
    """A model name (any source: built-in, ``torchvision:``, ``timm:``, an entry point) plus every
    keyword argument it was built with, ``num_classes`` and ``in_channels`` included: enough for any
    worker with the same packages to rebuild the network."""

    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    def build(self) -> nn.Module:
        return build_model(self.name, **self.kwargs)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kwargs": dict(self.kwargs)}


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def atomic_write_json(path: str | Path, payload: Any) -> None:
    atomic_write_bytes(path, (json.dumps(payload, indent=2, sort_keys=True) + "\n").encode())


def save_checkpoint(path: str | Path, model: nn.Module, arch: Architecture, meta: dict | None = None) -> str:
    """Write ``model`` atomically; returns the file's sha256."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT,
        "arch": arch.to_dict(),
        "channels": channel_spec(model),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "meta_json": json.dumps(meta or {}, sort_keys=True),
    }
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return file_sha256(path)


def load_checkpoint(path: str | Path) -> tuple[nn.Module, Architecture, dict]:
    """Rebuild the network saved at ``path``; returns (model in eval mode, architecture, meta)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist (run the stage that writes it first)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged zip / pickle
        raise CheckpointError(
            f"checkpoint {path} is corrupt or not a netadapt checkpoint ({type(exc).__name__}: {exc}). "
            "Fix: re-run the stage that writes it, or restore it (e.g. `dvc checkout`)."
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a {FORMAT} file; re-create it with this version of netadapt")
    arch = Architecture(payload["arch"]["name"], payload["arch"]["kwargs"])
    try:
        model = apply_channel_spec(arch.build(), payload["channels"])
        model.load_state_dict(payload["state_dict"], strict=True)
    except (KeyError, RuntimeError) as exc:
        raise CheckpointError(f"checkpoint {path} does not fit architecture {arch.name!r}: {exc}") from None
    model.eval()
    return model, arch, json.loads(payload["meta_json"])
