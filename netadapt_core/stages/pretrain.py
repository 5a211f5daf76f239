"""The pretrain stage: the starting network, imported from ``model.weights`` or trained from
scratch; skipped when the checkpoint was made from the same settings and weights file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..adapt import (
    architecture,
)
from ..checkpoint import (
    CheckpointError,
    file_sha256,
    load_checkpoint,
    save_checkpoint,
)
from ..config import Params
from ..data import load_data
from ..models import check_network
from ..models.weights import WeightsError, load_weights
from ..resources import count_macs_params
from ..training import evaluate, steps_for_epochs, train
from .common import Log


def pretrain_hash(params: Params) -> tuple[str, str | None]:
    """What the pretrained checkpoint depends on (settings, and the weights file's sha256), and that sha256."""
    weights = params.model.weights
    weights_sha256 = file_sha256(weights) if weights and Path(weights).is_file() else None
    if weights and weights_sha256 is None:
        raise WeightsError(f"weights file {weights} (model.weights) does not exist; fix the path")
    return params.section_hash("data", "model", "pretrain") + (f"-{weights_sha256[:16]}" if weights else ""), weights_sha256


def pretrained_up_to_date(params: Params, config_hash: str, log: Log = print) -> dict[str, Any] | None:
    """The meta of ``pretrain.checkpoint`` if it was made from these settings, else None (a damaged
    file is simply made again)."""
    path = Path(params.pretrain.checkpoint)
    if not path.is_file():
        return None
    try:
        _, _, meta = load_checkpoint(path)
    except CheckpointError as exc:
        log(f"pretrain: {path} cannot be read ({exc}); making it again")
        return None
    return meta if meta.get("config_hash") == config_hash else None


def run_pretrain(params: Params, log: Log = print) -> dict[str, Any]:
    """Make the starting network: import ``model.weights``, or train from scratch. Skipped when the
    checkpoint was made from the same settings (and the same weights file)."""
    cfg = params.pretrain
    weights = params.model.weights
    config_hash, weights_sha256 = pretrain_hash(params)
    path = Path(cfg.checkpoint)
    meta = pretrained_up_to_date(params, config_hash, log)
    if meta is not None:
        log(f"pretrain: {path} is up to date (test accuracy {meta['test_accuracy']:.4f})")
        return meta
    arch, input_shape = architecture(params)
    model = arch.build()
    check_network(model, input_shape, arch.kwargs["num_classes"], arch.name)
    data = load_data(params.data)
    if weights:
        load_weights(model, weights, arch.name)
        source = {"weights": str(weights), "weights_sha256": weights_sha256, "steps": 0, "seconds": 0.0}
        log(f"pretrain: {arch.name} weights imported from {weights} (sha256 {weights_sha256[:12]})")
    else:
        steps = steps_for_epochs(data.train, cfg.batch_size, cfg.epochs)
        log(f"pretrain: {arch.name} on {params.data.dataset}, {len(data.train)} images, {steps} steps")
        stats = train(model, data.train, cfg, steps, seed=cfg.seed, cosine=True, log=log)
        source = {"steps": steps, "seconds": round(stats.seconds, 1)}
    meta = {
        "config_hash": config_hash,
        "input_shape": list(input_shape),
        "test_accuracy": evaluate(model, data.test, threads=cfg.threads, device=cfg.device, channels_last=cfg.channels_last),
        "holdout_accuracy": evaluate(model, data.holdout, threads=cfg.threads, device=cfg.device, channels_last=cfg.channels_last),
        **source,
        **count_macs_params(model, input_shape),
    }
    save_checkpoint(path, model, arch, meta)
    log(f"pretrain: test accuracy {meta['test_accuracy']:.4f} -> {path}")
    return meta

