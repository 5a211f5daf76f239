"""Checkpoints as (architecture, per-layer channel spec, state dict): no pickled modules.

A pruned network is rebuilt by building the registered architecture, resizing each layer to the
spec and loading the weights, so checkpoints load with ``torch.load(weights_only=True)``. Writes are
atomic (write a temporary file, then rename), so an interrupted save never leaves half a file.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import faults
from .errors import NetAdaptError, OutputError
from .layers import apply_channel_spec, channel_spec
from .models import build_model

FORMAT = "netadapt-checkpoint/1"


class CheckpointError(NetAdaptError, RuntimeError):
    """A checkpoint is missing, corrupt, or not a netadapt checkpoint."""


class RunStateError(NetAdaptError, ValueError):
    """The ``state.json`` of an adaptation's run directory is damaged."""


RUN_STATE_KEYS = ("config_hash", "pretrained_sha256", "baseline", "iterations", "status")


def read_run_state(path: str | Path) -> dict[str, Any]:
    """The record in an adaptation's ``state.json`` at ``path`` (which must exist), checked for the
    keys every stage reads; a damaged file is a ``RunStateError`` naming it and the fix."""
    path = Path(path)
    try:
        state = json.loads(path.read_text())
        if not isinstance(state, dict):
            raise TypeError(f"it holds a {type(state).__name__}, not a record")
        missing = [k for k in RUN_STATE_KEYS if k not in state]
        if missing:
            raise ValueError(f"{', '.join(missing)} missing")
        if not isinstance(state["iterations"], list) or not isinstance(state["baseline"], dict):
            raise TypeError("iterations must be a list and baseline a record")
    except (OSError, UnicodeDecodeError, ValueError, TypeError) as exc:
        raise run_state_error(path, exc) from None
    return state


def run_state_error(path: str | Path, exc: Exception) -> RunStateError:
    """The ``RunStateError`` for the damaged ``state.json`` at ``path`` (``exc``: what is wrong)."""
    folder = Path(path).parent
    return RunStateError(
        f"{path} is damaged ({type(exc).__name__}: {exc}), so the adaptation in {folder} cannot be resumed or "
        f"read. Fix: restore it (e.g. `dvc checkout`), or move {folder} away (or set adapt.run_dir to another "
        "folder) and run `netadapt adapt` again"
    )


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


def check_writable(path: str | Path, key: str) -> None:
    """Refuse, before any work, an output path that cannot be written: a folder on its way that is a
    file, a folder without write permission, or the path itself a folder. ``key`` is the setting
    that names it (e.g. ``pretrain.checkpoint``)."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{key}={path} is a folder, but it names a file. Fix: set {key} to a file path")
    folder = path.parent
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir():
        raise OutputError(
            f"{key}={path} cannot be written: {folder} is a file, not a folder. Fix: set {key} to a path "
            f"under a folder, or move {folder} away"
        )
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"{key}={path} cannot be written: no write permission in {folder}. Fix: set {key} "
                          "to a path you can write")


def check_writable_dir(path: str | Path, key: str) -> None:
    """As ``check_writable`` for an output folder (e.g. ``adapt.run_dir``)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{key}={path} is a file, but it names a folder. Fix: set {key} to a folder path, "
                          f"or move {path} away")
    check_writable(path / "_", key)


def output_error(path: str | Path, exc: OSError) -> OutputError:
    """The ``OutputError`` for a write of ``path`` that failed with ``exc`` (disk full, a file where a
    folder should be, no permission)."""
    full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
    why = "the disk is full" if full else exc.strerror or str(exc)
    fix = "free disk space, or point the setting" if full else "point the setting"
    return OutputError(f"cannot write {path}: {why}. Fix: {fix} that names this file (see params.yaml) to a "
                       "writable place; the previous file, if any, is intact")


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        faults.point("checkpoint-write" if path.suffix == ".pt" else "file-write")
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise output_error(path, exc) from exc


def atomic_write_json(path: str | Path, payload: Any) -> None:
    atomic_write_bytes(path, (json.dumps(payload, indent=2, sort_keys=True) + "\n").encode())


def state_versions(state: dict) -> dict[str, dict]:
    """The per-module metadata PyTorch keeps beside a state dict (``_metadata``: versions)."""
    return {k: dict(v) for k, v in getattr(state, "_metadata", {}).items()}


def with_versions(state: dict, versions: dict[str, dict] | None) -> dict:
    """``state`` as an OrderedDict carrying ``versions`` as its ``_metadata``, as ``load_state_dict`` expects."""
    state = OrderedDict(state)
    if versions:
        state._metadata = OrderedDict(versions)  # type: ignore[attr-defined]
    return state


def save_checkpoint(path: str | Path, model: nn.Module, arch: Architecture, meta: dict | None = None) -> str:
    """Write ``model`` atomically; returns the file's sha256."""
    path = Path(path)
    payload = {
        "format": FORMAT,
        "arch": arch.to_dict(),
        "channels": channel_spec(model),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        # the modules' state-dict versions (e.g. torchvision's MNASNet refuses weights without them)
        "state_versions_json": json.dumps(state_versions(model.state_dict())),
        "meta_json": json.dumps(meta or {}, sort_keys=True),
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    atomic_write_bytes(path, buffer.getvalue())  # a failed write (disk full) is an OutputError naming the file
    return file_sha256(path)


def load_checkpoint(path: str | Path) -> tuple[nn.Module, Architecture, dict]:
    """Rebuild the network saved at ``path``; returns (model in eval mode, architecture, meta)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist (run the stage that writes it first)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for a damaged zip / pickle
        detail = (str(exc).splitlines() or [""])[0]
        detail = detail if len(detail) <= 80 else detail[:77] + "..."
        raise CheckpointError(
            f"checkpoint {path} is corrupt or not a netadapt checkpoint ({type(exc).__name__}: {detail}). "
            "Fix: re-run the stage that writes it, or restore it (e.g. `dvc checkout`)."
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a {FORMAT} file; re-create it with this version of netadapt")
    try:
        arch = Architecture(payload["arch"]["name"], dict(payload["arch"]["kwargs"]))
        meta = json.loads(payload["meta_json"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(
            f"checkpoint {path} is damaged ({type(exc).__name__}: {exc} in its header). Fix: re-run the stage "
            "that writes it, or restore it (e.g. `dvc checkout`)."
        ) from None
    try:
        model = apply_channel_spec(arch.build(), payload["channels"])
        versions = json.loads(payload.get("state_versions_json", "null"))  # older checkpoints: none
        if versions is None:
            versions = state_versions(model.state_dict())  # the same code's own versions
        model.load_state_dict(with_versions(payload["state_dict"], versions), strict=True)
    except (KeyError, RuntimeError, TypeError, ValueError) as exc:
        if isinstance(exc, NetAdaptError):  # e.g. the model's package is not installed here
            raise
        raise CheckpointError(f"checkpoint {path} does not fit architecture {arch.name!r}: {exc}") from None
    model.eval()
    return model, arch, meta
