"""Pretrained weights the user brings: a ``state_dict`` file checked against the network it is for.

``.safetensors`` files are read with ``safetensors`` (no code can run on load); ``.pt`` / ``.pth``
files with ``torch.load(weights_only=True)``, as a plain state dict or one wrapped under a
``state_dict`` or ``model`` key (the common training-script layouts). A file that does not fit the
network exactly is refused with the keys and shapes that differ.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
from torch import nn

from ..errors import NetAdaptError


class WeightsError(NetAdaptError, ValueError):
    """A weights file is missing, unreadable, or does not fit the configured network."""


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file {path} (model.weights) does not exist; fix the path")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        elif path.suffix in (".pt", ".pth", ".bin"):
            state = torch.load(path, map_location="cpu", weights_only=True)
        else:
            raise WeightsError(f"weights file {path}: unknown format {path.suffix!r}; use .safetensors, .pt or .pth")
    except WeightsError:
        raise
    except pickle.UnpicklingError:
        raise WeightsError(
            f"weights file {path} holds pickled Python objects (a whole module?), which netadapt does not load "
            "(weights_only=True: loading them could run code). Fix: save model.state_dict(), ideally as .safetensors"
        ) from None
    except Exception as exc:  # noqa: BLE001 - safetensors and torch raise many types for damaged or foreign files
        raise WeightsError(
            f"weights file {path} cannot be read ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); it is "
            "damaged, truncated, or not a state dict (save model.state_dict(), ideally as .safetensors)"
        ) from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"weights file {path} does not hold a state dict of tensors (save model.state_dict())")
    return {k.removeprefix("module."): v for k, v in state.items()}  # DataParallel / DDP prefixes


def load_weights(model: nn.Module, path: str | Path, label: str = "") -> None:
    """Load the state dict at ``path`` into ``model``, refusing any key or shape that differs."""
    state = read_state_dict(path)
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k}: file {tuple(state[k].shape)} vs network {tuple(v.shape)}"
             for k, v in own.items() if k in state and state[k].shape != v.shape]
    if missing or unexpected or wrong:
        parts = []
        if wrong:
            parts.append(f"{len(wrong)} shapes differ ({'; '.join(wrong[:3])})")
        if missing:
            parts.append(f"{len(missing)} tensors missing ({', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unknown tensors ({', '.join(unexpected[:3])})")
        raise WeightsError(
            f"weights file {path} does not fit model {label}: " + "; ".join(parts) + ". The file must be "
            "the state dict of this network as built for the data set (its classes and input channels); "
            "check model.name, model.kwargs and the data set, or pretrain instead (model.weights: null)"
        )
    for key, value in state.items():
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise WeightsError(f"weights file {path}: tensor {key} holds NaN or infinite values")
    from ..checkpoint import state_versions, with_versions  # late: checkpoint imports the models package

    # a state dict from a file has no module versions: take the network's own (same code)
    model.load_state_dict(with_versions({k: v.to(own[k].dtype) for k, v in state.items()}, state_versions(own)),
                          strict=True)
