"""Training and evaluation: SGD with Nesterov momentum, fixed steps or epochs, holdout/test accuracy."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from .config import TrainConfig
from .data import iterate_batches
from .errors import NetAdaptError

EVAL_BATCH = 100  # 500-image batches ran 2x slower on the CPU (activations beyond the caches)
DEVICE_SETTINGS = "the training device (pretrain.device, adapt.train_device, finetune.device)"


class TrainingError(NetAdaptError, RuntimeError):
    """Training cannot run (no such device) or diverged; the message says what to change."""


def resolve_device(name: str, setting: str = "device") -> torch.device:
    """``name`` (cpu, cuda, cuda:N) as a torch device, refusing a GPU this machine does not have."""
    device = torch.device(name)
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = device.index or 0
        if index >= count:
            raise TrainingError(
                f"{setting} is {name}, but this machine has {count or 'no'} CUDA GPU{'s' if count != 1 else ''} "
                f"(torch {torch.__version__}, torch.cuda.is_available() = {torch.cuda.is_available()}). Fix: set "
                f"{setting}=cpu, or run this on a machine (or Dask workers) with a GPU"
            )
    return device


@dataclass(frozen=True)
class TrainStats:
    steps: int
    final_loss: float
    seconds: float


def steps_for_epochs(dataset: Dataset, batch_size: int, epochs: float) -> int:
    return max(1, math.ceil(len(dataset) / batch_size * epochs))


def train(
    model: nn.Module,
    dataset: Dataset,
    cfg: TrainConfig,
    steps: int,
    *,
    seed: int,
    cosine: bool = False,
    log: Callable[[str], None] | None = None,
    log_every_s: float = 20.0,
) -> TrainStats:
    """Train ``model`` in place for ``steps`` SGD steps on shuffled batches of ``dataset``.

    ``cosine`` anneals the learning rate from ``cfg.lr`` to 0; otherwise it stays constant.
    ``log`` receives a progress line (step, loss, time left) every ``log_every_s`` seconds.
    """
    started = time.perf_counter()
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(seed)
    if steps == 0:
        return TrainStats(0, float("nan"), 0.0)
    device = resolve_device(cfg.training_device, DEVICE_SETTINGS)
    layout = memory_format(cfg.channels_last)
    model.to(device, memory_format=layout)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
        nesterov=cfg.momentum > 0,
    )
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps) if cosine else None
    model.train()
    batches = iterate_batches(dataset, cfg.batch_size, shuffle=True, seed=seed, epochs=None)
    loss_value = float("nan")
    last_log = started
    for step in range(steps):
        images, labels = next(batches)
        images, labels = _to(images, device, layout), labels.to(device, non_blocking=True)
        optimizer.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        loss_value = loss.item()
        now = time.perf_counter()
        if log is not None and now - last_log >= log_every_s:
            last_log = now
            left = (now - started) / (step + 1) * (steps - step - 1)
            log(f"  step {step + 1}/{steps}, loss {loss_value:.3f}, {now - started:.0f}s so far, about {left:.0f}s left")
    model.eval().to("cpu", memory_format=torch.contiguous_format)  # checkpoints, surgery and latency
    # work on a contiguous CPU copy
    if not math.isfinite(loss_value):
        raise TrainingError(f"training diverged (loss {loss_value}); lower the learning rate (lr) of this stage")
    return TrainStats(steps, loss_value, time.perf_counter() - started)


def memory_format(channels_last: bool) -> torch.memory_format:
    return torch.channels_last if channels_last else torch.contiguous_format


def _to(images: Tensor, device: torch.device, layout: torch.memory_format) -> Tensor:
    """A batch on ``device``, image batches (N, C, H, W) in ``layout``."""
    images = images.to(device, non_blocking=True)
    return images.contiguous(memory_format=layout) if images.dim() == 4 else images


def evaluate(model: nn.Module, dataset: Dataset, batch_size: int = EVAL_BATCH, threads: int | None = None,
             device: str = "cpu", channels_last: bool = True) -> float:
    """Top-1 accuracy of ``model`` on ``dataset``, in [0, 1] (on ``device``; the model is left on the
    CPU, contiguous)."""
    if threads is not None:
        torch.set_num_threads(threads)
    target = resolve_device(device, DEVICE_SETTINGS)
    layout = memory_format(channels_last)
    model.eval().to(target, memory_format=layout)
    correct = 0
    total = 0
    try:
        with torch.inference_mode():
            for images, labels in iterate_batches(dataset, batch_size, shuffle=False):
                correct += (model(_to(images, target, layout)).argmax(1).cpu() == labels).sum().item()
                total += len(labels)
    finally:
        model.to("cpu", memory_format=torch.contiguous_format)
    if total == 0:
        raise ValueError("cannot evaluate on an empty data set")
    return correct / total
