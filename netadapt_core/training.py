"""Training and evaluation: SGD with Nesterov momentum, fixed steps or epochs, holdout/test accuracy."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import Dataset

from .config import TrainConfig
from .data import iterate_batches


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
    model.eval()
    if not math.isfinite(loss_value):
        raise FloatingPointError(f"training diverged (loss {loss_value}); lower the learning rate")
    return TrainStats(steps, loss_value, time.perf_counter() - started)


def evaluate(model: nn.Module, dataset: Dataset, batch_size: int = 500, threads: int | None = None) -> float:
    """Top-1 accuracy of ``model`` on ``dataset``, in [0, 1]."""
    if threads is not None:
        torch.set_num_threads(threads)
    model.eval()
    correct = 0
    total = 0
    with torch.inference_mode():
        for images, labels in iterate_batches(dataset, batch_size, shuffle=False):
            correct += (model(images).argmax(1) == labels).sum().item()
            total += len(labels)
    if total == 0:
        raise ValueError("cannot evaluate on an empty data set")
    return correct / total
