"""Deployable files of a network, each one checked (the ``export`` stage, ``netadapt_core.stages.export``,
runs it on the final fine-tuned network).

``export.out_dir`` (default ``artifacts/export``) receives, for the formats in ``export.formats``:

- ``model.onnx``: ONNX (``torch.onnx``, TorchScript exporter, opset ``export.onnx_opset``), input
  ``input`` (N, C, H, W) float32, output ``output`` (N, classes), the batch dimension dynamic;
- ``model.pt2``: ``torch.export`` program (``torch.export.load(path).module()``), batch dynamic;
- ``model.torchscript.pt``: ``torch.jit.trace`` (``torch.jit.load(path)``);
- ``model.pte``: an ExecuTorch program lowered to XNNPACK (PyTorch's on-device runtime, for Android
  and iOS apps; ``executorch.runtime.Runtime.get().load_program(...)``), batch dynamic up to 256;
- ``channels.json``: the architecture record and per-layer channel spec of the checkpoint, which
  rebuild the network in netadapt (``Architecture.build`` + ``apply_channel_spec``);
- ``export.json``: the manifest: every file with its sha256 and size, each model file's largest
  absolute difference from PyTorch's outputs, the test images used, tolerances, CPU and versions.

Every model file is loaded back from disk (ONNX Runtime, ``torch.export.load``, ``torch.jit.load``)
and run on real test-set images (``export.samples`` of them as one batch, then the first alone, so
the dynamic batch is exercised too); each output must lie within ``atol + rtol * |PyTorch's|``.
Files are exported and checked in ``out_dir/.staging`` first and only then moved into place, the
manifest last: a failed export leaves the previous one whole (and the rejected file for inspection).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import platform as pyplatform
import shutil
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .checkpoint import (
    Architecture,
    atomic_write_bytes,
    atomic_write_json,
    file_sha256,
)
from .config import DataConfig, ExportConfig, Params
from .data import _STATS, load_data
from .errors import NetAdaptError, StageOrderError
from .layers import channel_spec
from .platforms import LoadedProgram, cpu_model, export_onnx, lower_to_executorch

Log = Callable[[str], None]

MANIFEST = "export.json"
CHANNELS = "channels.json"
MANIFEST_FORMAT = "netadapt-export/1"
FILES = {"onnx": "model.onnx", "torch_export": "model.pt2", "torchscript": "model.torchscript.pt",
         "executorch": "model.pte"}
STAGING = ".staging"


class ExportError(NetAdaptError, RuntimeError):
    """A format cannot be exported for this network, or an exported file cannot be loaded back."""


class ExportMismatchError(ExportError):
    """An exported file does not reproduce the PyTorch network's outputs (or changed since export)."""


@dataclass
class Samples:
    """The real images every exported file is checked on."""

    images: torch.Tensor  # (N, C, H, W) float32, normalised as in training
    labels: torch.Tensor
    indices: list[int]  # positions in the configured test split
    dataset: str
    preprocessing: dict[str, Any] | None = None  # how a deployment turns an image into ``input``

    def describe(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset, "split": "test", "indices": self.indices, "preprocessing": self.preprocessing,
            "labels": self.labels.tolist(), "shape": list(self.images.shape), "dtype": "float32",
            "sha256": hashlib.sha256(self.images.contiguous().numpy().tobytes()).hexdigest(),
            "batches_checked": sorted({len(self.indices), 1}, reverse=True),
            "input_name": "input", "output_name": "output",
        }


def sample_images(params: Params, n: int) -> Samples:
    """The first ``n`` images of the configured test split (``data`` settings: same subset, same order)."""
    test = load_data(params.data).test
    count = min(n, len(test))
    if count == 0:
        raise ExportError("the configured test split is empty: nothing to check the export on (see data.test_subset)")
    items = [test[i] for i in range(count)]
    images = torch.stack([image for image, _ in items]).float()
    labels = torch.tensor([int(label) for _, label in items])
    return Samples(images, labels, list(range(count)), params.data.dataset, preprocessing(params.data))


def preprocessing(cfg: DataConfig) -> dict[str, Any]:
    """The input's preprocessing in training (``netadapt_core.data``): what a deployment must repeat."""
    if cfg.dataset == "imagefolder":
        size = cfg.image_size or 32
        return {"steps": [f"RGB, resize the shorter side to {size}", f"center crop {size}x{size}",
                          "scale pixels to [0, 1]", "subtract mean, divide by std per channel"],
                "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "layout": "NCHW float32"}
    mean, std = _STATS[cfg.dataset]
    steps = ["scale pixels to [0, 1]", "subtract mean, divide by std per channel"]
    if cfg.image_size is not None:
        steps.insert(1, f"bilinear resize to {cfg.image_size}x{cfg.image_size}")
    return {"steps": steps, "mean": list(mean), "std": list(std), "layout": "NCHW float32"}


# -- exporters: (model, example batch, cfg) -> file bytes ------------------------------------------

def _export_onnx(model: nn.Module, example: torch.Tensor, cfg: ExportConfig) -> bytes:
    return export_onnx(model, tuple(example.shape), cfg.onnx_opset, dynamic_batch=True)


def _export_program(model: nn.Module, example: torch.Tensor, cfg: ExportConfig) -> bytes:
    batch = torch.export.Dim("batch", min=1, max=65536)
    with torch.no_grad():
        program = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    return buffer.getvalue()


def _export_torchscript(model: nn.Module, example: torch.Tensor, cfg: ExportConfig) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated, still widely deployed
        traced = torch.jit.trace(model, example, check_trace=False)  # checked below, on real images
        torch.jit.save(traced, buffer)
    return buffer.getvalue()


def _export_executorch(model: nn.Module, example: torch.Tensor, cfg: ExportConfig) -> bytes:
    return lower_to_executorch(model, tuple(example.shape), "xnnpack", dynamic_batch=True)


EXPORTERS: dict[str, Callable[[nn.Module, torch.Tensor, ExportConfig], bytes]] = {
    "onnx": _export_onnx, "torch_export": _export_program, "torchscript": _export_torchscript,
    "executorch": _export_executorch,
}


# -- loaders: path -> a function from a batch (numpy/torch) to outputs as a numpy array --------------

def _load_onnx(path: Path) -> Callable[[torch.Tensor], np.ndarray]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x.numpy()})[0]


def _load_program(path: Path) -> Callable[[torch.Tensor], np.ndarray]:
    module = torch.export.load(str(path)).module()

    def run(x: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            return module(x).numpy()

    return run


def _load_torchscript(path: Path) -> Callable[[torch.Tensor], np.ndarray]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        module = torch.jit.load(str(path), map_location="cpu")
    module.eval()

    def run(x: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            return module(x).numpy()

    return run


def _load_executorch(path: Path) -> Callable[[torch.Tensor], np.ndarray]:
    method = LoadedProgram(path.read_bytes())
    return lambda x: method.execute([x.contiguous()])[0].numpy()


LOADERS: dict[str, tuple[str, Callable[[Path], Callable[[torch.Tensor], np.ndarray]]]] = {
    "onnx": ("onnxruntime.InferenceSession", _load_onnx),
    "torch_export": ("torch.export.load", _load_program),
    "torchscript": ("torch.jit.load", _load_torchscript),
    "executorch": ("executorch.runtime (XNNPACK)", _load_executorch),
}


def reference_outputs(model: nn.Module, images: torch.Tensor) -> dict[int, np.ndarray]:
    """PyTorch's outputs for the check's batches (all images; the first alone), keyed by batch size."""
    model.eval()
    with torch.no_grad():
        return {len(images): model(images).numpy(), 1: model(images[:1]).numpy()}


def _batches(images: torch.Tensor) -> dict[int, torch.Tensor]:
    return {len(images): images, 1: images[:1]}


def verify_file(fmt: str, path: str | Path, images: torch.Tensor, expected: dict[int, np.ndarray],
                rtol: float, atol: float, formats: list[str] | None = None) -> dict[str, Any]:
    """Load ``path`` back as format ``fmt``, run it on ``images`` and compare with ``expected``.

    Returns the comparison (max absolute difference, per batch size, top-1 agreement). Raises
    ``ExportError`` when the file cannot be loaded or run, ``ExportMismatchError`` when an output is
    off by more than ``atol + rtol * |expected|``.
    """
    path = Path(path)
    loader_name, loader = LOADERS[fmt]
    try:
        run = loader(path)
        got = {batch: np.asarray(run(x)) for batch, x in _batches(images).items()}
    except Exception as exc:  # each runtime raises its own types
        raise ExportError(
            f"{path.name}: cannot be loaded back and run with {loader_name} ({type(exc).__name__}: "
            f"{_first_line(exc)}); the file is at {path}. Fix: drop {fmt} from export.formats "
            f"(--set export.formats=[{_others(fmt, formats)}]) or update the runtime that reads it."
        ) from exc
    by_batch, agreement = {}, []
    for batch, want in expected.items():
        have = got[batch]
        if have.shape != want.shape:
            raise ExportMismatchError(
                f"{path.name} gives outputs of shape {list(have.shape)} for a batch of {batch} test images, "
                f"PyTorch {list(want.shape)}; the file is at {path}. Fix: drop {fmt} from export.formats "
                f"(--set export.formats=[{_others(fmt, formats)}]) and report this network's export as a bug."
            )
        diff = np.abs(have.astype(np.float64) - want.astype(np.float64))
        by_batch[str(batch)] = float(diff.max()) if diff.size else 0.0
        agreement.append(float((have.argmax(-1) == want.argmax(-1)).mean()))
        allowed = atol + rtol * np.abs(want.astype(np.float64))
        if not np.all(diff <= allowed) or not np.all(np.isfinite(have)):
            worst = float(np.nanmax(diff)) if np.isfinite(have).all() else float("inf")
            raise ExportMismatchError(
                f"{path.name} does not reproduce the PyTorch network: max |difference| {worst:.3g} on a batch "
                f"of {batch} test images, over the tolerance atol {atol:g} + rtol {rtol:g} * |output|; "
                f"the file is at {path}. Fix: if this is the runtime's rounding (a difference near the "
                f"tolerance), raise export.atol / export.rtol; if it is larger, the exporter changed the "
                f"network: drop {fmt} from export.formats (--set export.formats=[{_others(fmt, formats)}])."
            )
    return {"max_abs_diff": max(by_batch.values()), "max_abs_diff_by_batch": by_batch,
            "top1_agreement": min(agreement), "loaded_with": loader_name}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:500] if text else type(exc).__name__


def _others(fmt: str, formats: list[str] | None = None) -> str:
    """The formats to keep when dropping ``fmt``: the configured others (else every other one)."""
    return ", ".join([f for f in formats or FILES if f != fmt] or [f for f in FILES if f != fmt])


def _versions() -> dict[str, str]:
    found = {"python": pyplatform.python_version(), "torch": torch.__version__}
    for package in ("onnx", "onnxruntime"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = "not installed"
    return found


def export_network(model: nn.Module, arch: Architecture, samples: Samples, cfg: ExportConfig,
                   source: dict[str, Any] | None = None, log: Log = print) -> dict[str, Any]:
    """Export ``model`` to ``cfg.out_dir`` in ``cfg.formats``, check every file, write the manifests.

    ``source`` describes where the network came from (checkpoint, iteration...); it is recorded in
    both JSON files. Returns the manifest (``export.json``).
    """
    model.eval()
    out = Path(cfg.out_dir)
    staging = out / STAGING
    shutil.rmtree(staging, ignore_errors=True)
    images = samples.images
    shape = tuple(images.shape[1:])
    try:
        expected = reference_outputs(model, images)
    except RuntimeError as exc:
        raise ExportError(
            f"the network ({arch.name}) does not run on the configured test images of shape {list(shape)} "
            f"({_first_line(exc)}): export with the data settings (data.dataset, data.image_size) it was "
            "trained with"
        ) from exc
    # torch.export specialises a batch of 1; a batch of at least 2 keeps the batch dimension free
    example = images if len(images) > 1 else images.repeat(2, 1, 1, 1)
    entries: dict[str, dict[str, Any]] = {}
    for fmt in cfg.formats:
        started = time.perf_counter()
        try:
            data = EXPORTERS[fmt](model, example, cfg)
        except Exception as exc:  # exporters raise many types for an unsupported network
            raise ExportError(
                f"cannot export this network ({arch.name}) to {fmt} ({type(exc).__name__}: "
                f"{_first_line(exc)}). Fix: drop {fmt} from export.formats "
                f"(--set export.formats=[{_others(fmt, cfg.formats)}]); the other formats do not depend on it."
            ) from exc
        staged = staging / FILES[fmt]
        atomic_write_bytes(staged, data)
        check = verify_file(fmt, staged, images, expected, cfg.rtol, cfg.atol, cfg.formats)
        entries[FILES[fmt]] = {"format": fmt, "sha256": file_sha256(staged), "bytes": staged.stat().st_size,
                               **check, "seconds": round(time.perf_counter() - started, 2)}
        if fmt == "onnx":
            entries[FILES[fmt]] |= {"opset": cfg.onnx_opset, "dynamic_batch": True}
        elif fmt == "torch_export":
            entries[FILES[fmt]]["dynamic_batch"] = True
        log(f"export: {FILES[fmt]} checked: max |difference| {check['max_abs_diff']:.2g} from PyTorch on "
            f"{len(images)} test images (tolerance atol {cfg.atol:g} + rtol {cfg.rtol:g} * |output|)")
    channels = {"architecture": arch.to_dict(), "channels": channel_spec(model), "input_shape": list(shape),
                "preprocessing": samples.preprocessing, "source": source or {}}
    atomic_write_json(staging / CHANNELS, channels)
    entries[CHANNELS] = {"sha256": file_sha256(staging / CHANNELS), "bytes": (staging / CHANNELS).stat().st_size}
    manifest = {
        "format": MANIFEST_FORMAT,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "source": source or {},
        "architecture": arch.to_dict(),
        "files": entries,
        "inputs": samples.describe(),
        "pytorch_top1_accuracy_on_inputs": float((expected[len(images)].argmax(-1) == samples.labels.numpy()).mean()),
        "tolerance": {"rtol": cfg.rtol, "atol": cfg.atol, "rule": "|exported - pytorch| <= atol + rtol * |pytorch|"},
        "host": {"cpu": cpu_model(), "machine": pyplatform.machine(), "system": pyplatform.system(), **_versions()},
    }
    # every file checked: swap them in, the manifest last (present = a whole export)
    (out / MANIFEST).unlink(missing_ok=True)
    for fmt, name in FILES.items():
        if fmt not in cfg.formats:
            (out / name).unlink(missing_ok=True)  # a format dropped since the last export
    for name in entries:
        os.replace(staging / name, out / name)
    atomic_write_json(out / MANIFEST, manifest)
    shutil.rmtree(staging, ignore_errors=True)
    log(f"export: {', '.join(entries)} and {MANIFEST} in {out}")
    return manifest


def check_export(out_dir: str | Path, model: nn.Module, samples: Samples, rtol: float, atol: float,
                 log: Log = print) -> dict[str, dict[str, Any]]:
    """Check an existing export against ``model``: every file's sha256 against ``export.json``, then
    each model file's outputs on ``samples``. Returns the comparisons; raises as ``verify_file``."""
    out = Path(out_dir)
    manifest_path = out / MANIFEST
    if not manifest_path.is_file():
        raise StageOrderError(f"no export in {out} ({MANIFEST} is missing); run `netadapt export` first")
    manifest = json.loads(manifest_path.read_text())
    for name, entry in manifest["files"].items():  # every file intact first: cheap, and names the file
        path = out / name
        if not path.is_file():
            raise ExportMismatchError(f"{path} is listed in {manifest_path} but missing. Fix: run `netadapt export`")
        digest = file_sha256(path)
        if digest != entry["sha256"]:
            raise ExportMismatchError(
                f"{name} changed since it was exported: sha256 {digest[:16]}..., {MANIFEST} says "
                f"{entry['sha256'][:16]}.... Fix: run `netadapt export` again (or restore the file)"
            )
    expected = reference_outputs(model, samples.images)
    results = {}
    for name, entry in manifest["files"].items():
        if "format" in entry:
            results[name] = verify_file(entry["format"], out / name, samples.images, expected, rtol, atol)
            log(f"export check: {name}: sha256 ok, max |difference| {results[name]['max_abs_diff']:.2g} from PyTorch")
    return results
